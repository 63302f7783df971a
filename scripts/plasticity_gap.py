"""Accuracy relative to the retrained reference, per task, paired over class orders."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

from memplast import io, plasticity  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402


def main(summary: str, gaps: str, signature: str, trends: str, pdf: str, png: str, cfg: dict):
    """Write GAPS (per algorithm and task: mean paired accuracy gap to retrained with its
    t-interval), SIGNATURE (the same for effective rank, rank99 and dormant fraction), TRENDS
    (per algorithm: the gap's slope over tasks, a mitigation's recovery of base's final gap) and the figure."""
    table = io.read_parquet(summary)
    level = cfg["ci_level"]
    prov = io.provenance({"stats": cfg}, summary=summary)
    result = plasticity.gap_table(table, cfg["primary"], level=level)
    sig = plasticity.signature_table(table, cfg["primary"], level=level)
    trend = plasticity.trend_table(table, cfg["primary"], level=level)
    io.write_csv(result, gaps, prov)
    io.write_csv(sig, signature, prov)
    io.write_csv(trend, trends, prov)
    text = plasticity.figure(table, result, cfg["primary"], pdf, png, level, trend, sig)
    print(text)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
