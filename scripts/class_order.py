"""Write the class order of one class-order seed."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import numpy as np  # noqa: E402

from memplast import data, grid, io  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402


def main(samples: str, order: str, seed: int, cfg: dict):
    """Class permutation for SEED; checks that every class has training samples."""
    n_classes = grid.n_classes(cfg["dataset"])
    perm = data.class_order(seed, n_classes, cfg["class_orders"]["lop_compatible"])
    table = io.read_parquet(samples, columns=["split", "label"])
    present = set(np.unique(table.loc[table["split"] == "train", "label"]))
    missing = sorted(set(range(n_classes)) - present)
    if missing:
        raise data.DataError(f"classes {missing} have no training samples in {samples}; re-run prepare")
    out = data.class_order_table(perm, cfg["protocol"]["classes_per_task"])
    io.write_csv(out, order, io.provenance(cfg, seed=seed))


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
