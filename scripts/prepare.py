"""Prepare a dataset: split, planted label noise, normalization statistics, one compact file."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import logging  # noqa: E402

from memplast import data, io  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402

log = logging.getLogger("memplast.prepare")


def main(dataset_cfg: dict, prepared: str, samples: str, archive: str | None = None):
    """Prepare DATASET_CFG['name'] into PREPARED (.npz) and SAMPLES (.parquet)."""
    p = data.prepare(dataset_cfg, archive=archive)
    table = p.table()
    counts = table.groupby("split").size().to_dict()
    log.info(
        "%s: %d samples %s, %d classes, %d planted noisy labels, mean %s std %s",
        p.name,
        len(table),
        counts,
        p.n_classes,
        int(p.noisy.sum()),
        [round(m, 4) for m in p.mean],
        [round(s, 4) for s in p.std],
    )
    prov = io.provenance({"dataset": dataset_cfg}, split_counts=counts)
    io.write_parquet(table, samples, prov)
    data.save_prepared(p, prepared, prov)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
