"""Compare the training conditions with the primary one, paired over class orders."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1]))  # noqa: F821

import pandas as pd  # noqa: E402

from memplast import io, stats  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402


def main(summaries: list, conditions: str, summary: str, cfg: dict):
    """Write CONDITIONS (final/area/relative accuracy, dormant units vs primary) and the pooled SUMMARY."""
    table = pd.concat([io.read_parquet(p) for p in summaries], ignore_index=True)
    result = stats.compare_conditions(table, cfg["primary"])
    result = stats.add_bh(result, ["metric"])
    prov = io.provenance({"stats": cfg}, runs=list(map(str, summaries)))
    io.write_csv(result, conditions, prov)
    io.write_parquet(table, summary, prov)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
