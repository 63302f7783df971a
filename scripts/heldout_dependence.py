"""Which held-out samples depend on memorized training samples: neighbour proxy, FZ influence."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import logging  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from memplast import dependence, io  # noqa: E402
from memplast.augment import normalize  # noqa: E402
from memplast.checkpoints import load_checkpoint  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402
from memplast.data import load_prepared  # noqa: E402
from memplast.device import resolve_device  # noqa: E402
from memplast.feldman_zhang import load_mapping  # noqa: E402
from memplast.runtime import resolve as runtime_of  # noqa: E402

log = logging.getLogger("memplast.dependence")


def _mapping(path) -> pd.Series | None:
    """TFDS position -> sample id of a mapping file (memplast.feldman_zhang.load_mapping)."""
    return None if path is None else load_mapping(path).set_index("tfds_id")["sample_id"]


def main(
    prepared: str,
    checkpoint: str,
    scores: str,
    dependence_table: str,
    score_col: str,
    cfg: dict,
    runtime: dict | None = None,
    fz_npz: str | None = None,
    fz_mapping: str | None = None,
    fz_test_mapping: str | None = None,
):
    """Write DEPENDENCE_TABLE: per held-out sample, its nearest same-class training samples in the
    scorer's features at CHECKPOINT and their memo percentiles; with FZ_NPZ, its top influence pair."""
    hcfg = cfg["heldout"]
    rt = runtime_of(cfg, runtime)
    device = resolve_device(rt["device"])
    data = load_prepared(prepared)
    model, meta = load_checkpoint(checkpoint, device)
    pct = f"{score_col}_pct_class"
    train = io.read_parquet(scores).query("split == 'train'")[["sample_id", "label", pct]]
    train = train.rename(columns={pct: "memo_pct_class"}).sort_values("sample_id", ignore_index=True)

    def features(rows):
        x = normalize(torch.as_tensor(data.images[rows]), data.mean, data.std)
        return dependence.penultimate_features(model, x, rt["probe_batch_size"], device)

    held_rows = np.flatnonzero(np.isin(data.split, ["val", "test"]))
    held = pd.DataFrame(
        {
            "split": data.split[held_rows].astype(str),
            "sample_id": data.sample_id[held_rows],
            "label": data.labels[held_rows],
        }
    )
    log.info("neighbours of %d held-out samples among %d training samples (scorer epoch %d, k=%d)",
             len(held), len(train), meta["epoch"], hcfg["neighbours"])  # fmt: skip
    table = dependence.neighbour_dependence(
        features(data.rows_of(train["sample_id"], "train")), train, features(held_rows), held,
        hcfg["neighbours"], hcfg["memo_quantile"],
    )  # fmt: skip
    if fz_npz is not None:
        pairs = dependence.load_fz_influence(fz_npz, _mapping(fz_mapping), _mapping(fz_test_mapping))
        table = dependence.influence_dependence(table, pairs, train, hcfg["memo_quantile"], hcfg["influence_min"])
    table["duplicate_of"] = data.duplicate_of[held_rows]
    log.info(
        "memo-dependent by the neighbour proxy: %s", table.groupby("split")["dependent_proxy"].mean().round(3).to_dict()
    )
    io.write_parquet(table, dependence_table, io.provenance(cfg, checkpoint=checkpoint, score_col=score_col))


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
