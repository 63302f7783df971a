"""Statistics of the primary condition over class orders (design §6): every results/stats table."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import pandas as pd  # noqa: E402
import pyarrow  # noqa: E402

from memplast import io, stats  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402


def main(deltas: list, tables: list, pooled: str, names: list, cfg: dict, threads: int = 1):
    """Pool the DELTAS of the primary runs, run every analysis (cells on THREADS threads), write one CSV per table."""
    table = pd.concat([io.read_parquet(p) for p in deltas], ignore_index=True)
    pyarrow.default_memory_pool().release_unused()  # the reads' buffers (~1x the table) back to the OS
    results = stats.run_all(table, {**cfg, "threads": threads})
    prov = io.provenance({"stats": cfg}, runs=list(map(str, deltas)))
    for name, path in zip(names, tables):
        io.write_csv(results[name], path, prov)
    io.write_parquet(table, pooled, prov)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
