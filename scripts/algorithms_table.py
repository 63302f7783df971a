"""The algorithm comparison table and figure (memplast/plasticity.py: algorithm_table)."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

from memplast import io, plasticity, tuning  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402
from memplast.config import read_yaml  # noqa: E402


def main(summary: str, table: str, pdf: str, png: str, cfg: dict, protocol: dict, tunings: list = ()):
    """Write TABLE (per algorithm and task of the primary data condition: test accuracy, paired gaps
    to retrained and base with t-intervals over orders, model-level measures, the hyper-parameters
    used and whether they were tuned; TUNINGS: the results/tuning files the runs used) and the figure."""
    selections = {s["algorithm"]: s for s in map(read_yaml, tunings)}
    runs = io.read_parquet(summary)
    hyper = {a: tuning.hyper_parameters(protocol, a, selections.get(a)) for a in runs["algorithm"].unique()}
    result = plasticity.algorithm_table(runs, cfg["primary"], hyper, level=cfg["ci_level"])
    prov = io.provenance({"stats": cfg, "protocol": protocol}, summary=summary, tunings=list(tunings))
    io.write_csv(result, table, prov)
    print(plasticity.algorithm_figure(result, pdf, png, cfg["ci_level"]))


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
