"""Apply one memorization filter: the kept training sample ids and a class-balance report."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import logging  # noqa: E402

import pandas as pd  # noqa: E402

from memplast import io  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402
from memplast.grid import parse_filter  # noqa: E402
from memplast.subsets import apply_filter, balance_report  # noqa: E402

log = logging.getLogger("memplast.subset")


def main(samples: str, kept: str, balance: str, name: str, score_col: str, cfg: dict, scores: str | None = None):
    """Write the ids kept by filter NAME (none | MODE-qQ) and the class-balance report."""
    spec = parse_filter(name)
    train = io.read_parquet(samples).query("split == 'train'")[["sample_id", "label"]]
    if spec.mode == "none":
        train = train.assign(memo=0.0)
    else:
        memo = io.read_parquet(scores).query("split == 'train'").set_index("sample_id")[score_col]
        train = train.assign(memo=train["sample_id"].map(memo))
    ids = apply_filter(train, spec, cfg["subset"]["min_per_class"], cfg["subset"]["balance_seed"])
    per_class, summary = balance_report(train, ids)
    log.info(
        "filter %s keeps %d of %d training samples; class counts min %d max %d (ratio %.3f, CV %.3f)",
        name,
        summary["n_kept"],
        summary["n_before"],
        summary["min"],
        summary["max"],
        summary["min_max_ratio"],
        summary["cv"],
    )
    prov = io.provenance(cfg, filter=name, score_col=score_col, balance=summary)
    io.write_csv(per_class.assign(filter=name, **{f"summary_{k}": v for k, v in summary.items()}), balance, prov)
    io.write_parquet(pd.DataFrame({"sample_id": ids}), kept, prov)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
