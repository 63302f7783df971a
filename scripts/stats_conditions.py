"""Compare every condition with the primary one: accuracy per task (paired over class orders) and the
pooled memo-outcome association (paired over samples, one shared sample bootstrap)."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import pandas as pd  # noqa: E402

from memplast import io, stats  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402


def main(summaries: list, deltas: list, conditions: str, summary: str, cfg: dict, threads: int = 1):
    """Write CONDITIONS (see memplast.stats.tables.compare_conditions) and the pooled SUMMARY."""
    table = pd.concat([io.read_parquet(p) for p in summaries], ignore_index=True)
    pooled = pd.concat([io.read_parquet(p) for p in deltas], ignore_index=True) if deltas else None
    result = stats.compare_conditions(pooled, table, {**cfg, "threads": threads})
    prov = io.provenance({"stats": cfg}, runs=list(map(str, summaries)))
    io.write_csv(result, conditions, prov)
    io.write_parquet(table, summary, prov)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
