"""Positive control: the workflow, on a reduced config/lop-small.yaml, measures loss of plasticity.

Runs Snakemake up to the accuracy-relative-to-retrained tables (2 class orders, base and retrained;
tests/data/lop_reduced.yaml) and asserts, from the workflow's own tables, that base ends below
retrained at the last task (mean over class orders), that the gap is larger at the last task than
at task 0 (where common random numbers make both runs identical), that the figure states the gap,
and that the signature and trend tables come from the same run summaries. See
docs/positive_control.md for the full setting (20 orders, with mitigations) and its numbers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
CONFIGS = [
    str(ROOT / p) for p in ("config.yaml", "config/demo.yaml", "config/lop-small.yaml", "tests/data/lop_reduced.yaml")
]


@pytest.mark.slow
def test_base_ends_below_retrained(tmp_path):
    cmd = [
        SNAKEMAKE,
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "-c2",
        "--configfile",
        *CONFIGS,
        "--",
        "results/stats/plasticity_gap.csv",
        "results/figures/plasticity_gap.pdf",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-4000:]
    summary = pd.read_parquet(tmp_path / "results/stats/run_summaries.parquet")
    acc = summary.pivot_table(index=["order_seed", "task"], columns="algorithm", values="test_acc")
    last = acc.xs(acc.index.get_level_values("task").max(), level="task")
    first = acc.xs(0, level="task")
    assert (first["base"] == first["retrained"]).all()  # common random numbers: task 0 is one computation
    assert last["base"].mean() < last["retrained"].mean()
    gaps = pd.read_csv(tmp_path / "results/stats/plasticity_gap.csv", comment="#")
    base = gaps[gaps.algorithm == "base"].set_index("task")
    assert base["mean"].iloc[-1] == pytest.approx((last["base"] - last["retrained"]).mean())
    assert base["mean"].iloc[-1] < base["mean"].iloc[0] == 0
    assert (tmp_path / "results/figures/plasticity_gap.pdf").stat().st_size > 1000
    # the model-level signature and the trend come from the same run summaries
    sig = pd.read_csv(tmp_path / "results/stats/plasticity_signature.csv", comment="#")
    assert set(sig["measure"]) == {"effective_rank", "rank99", "dormant_units"}
    eff = sig[(sig.measure == "effective_rank") & (sig.algorithm == "base")].set_index("task")
    assert eff["mean"].iloc[0] == 0 and eff["mean"].iloc[-1] == pytest.approx(
        summary.pivot_table(index=["order_seed", "task"], columns="algorithm", values="effective_rank")
        .xs(acc.index.get_level_values("task").max(), level="task")
        .eval("base - retrained")
        .mean()
    )
    trend = pd.read_csv(tmp_path / "results/stats/plasticity_trend.csv", comment="#").set_index("algorithm")
    assert trend.loc["base", "n"] == len(last)
