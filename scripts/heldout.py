"""Every validation and test sample of the seen classes at every checkpoint of one run (design §6)."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import logging  # noqa: E402

from memplast import io  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402
from memplast.data import load_prepared  # noqa: E402
from memplast.device import resolve_device  # noqa: E402
from memplast.heldout import heldout_table, sample_summary  # noqa: E402
from memplast.runtime import resolve as runtime_of  # noqa: E402

log = logging.getLogger("memplast.heldout")


def main(
    prepared: str,
    checkpoints: list,
    heldout: str,
    samples: str,
    run: dict,
    cfg: dict,
    runtime: dict | None = None,
):
    """Write HELDOUT (one row per held-out sample and checkpoint) and SAMPLES (one row per held-out
    sample: first task learned, forgetting events, end of run) of the run whose CHECKPOINTS are given."""
    proto = cfg["protocol"]
    rt = runtime_of(cfg, runtime)
    data = load_prepared(prepared)
    aug_cfg = cfg["dataset"]["augmentation"]
    test_aug = aug_cfg if proto["test_augmentation"] == "reference" else None
    log.info("run %s: held-out samples at %d checkpoints", run, len(checkpoints))
    table = heldout_table(
        checkpoints, data, int(run["seed"]), proto["epochs_per_task"], rt["eval_batch_size"], test_aug,
        resolve_device(rt["device"]),
    )  # fmt: skip
    summary = sample_summary(table)
    keys = {"order_seed": int(run["seed"]), **{f: run[f] for f in ("filter", "ordering", "weighting", "algorithm")}}
    prov = io.provenance(cfg, run=run, checkpoints=list(map(str, checkpoints)))
    io.write_parquet(table.assign(**keys), heldout, prov)
    io.write_parquet(summary.assign(**keys), samples, prov)
    end = summary.groupby("split")["end_correct"].mean()
    log.info("run %s: end-of-run accuracy from the per-sample rows: %s", run, end.round(4).to_dict())


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
