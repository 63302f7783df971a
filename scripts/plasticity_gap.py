"""Accuracy relative to the retrained reference, per task, paired over class orders."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1]))  # noqa: F821

from memplast import io, plasticity  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402


def main(summary: str, gaps: str, pdf: str, png: str, cfg: dict):
    """Write GAPS (per algorithm and task: mean paired gap to retrained with its t-interval) and the figure."""
    table = io.read_parquet(summary)
    level = cfg["ci_level"]
    result = plasticity.gap_table(table, cfg["primary"], level=level)
    io.write_csv(result, gaps, io.provenance({"stats": cfg}, summary=summary))
    text = plasticity.figure(table, result, cfg["primary"], pdf, png, level)
    print(text)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
