"""Paired accuracy gap to the retrained reference: against scipy, and its coverage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from memplast import plasticity

PRIMARY = {"filter": "none", "ordering": "random", "weighting": "none", "algorithm": "base"}


def _summary(rng, n_orders, n_tasks, slope, sd=0.01, order_sd=0.05):
    """Long run summaries: retrained acc per (order, task) with an order effect; base lower by
    slope * task plus independent noise; one extra data condition that must be ignored."""
    rows = []
    for k in range(n_orders):
        shift = rng.normal(0, order_sd)
        for t in range(n_tasks):
            ref = 0.9 + shift + rng.normal(0, sd)
            for algorithm, acc in (("retrained", ref), ("base", ref - slope * t + rng.normal(0, sd))):
                rows.append({"order_seed": k, "task": t, "algorithm": algorithm, "test_acc": acc, **{
                    f: PRIMARY[f] for f in plasticity.PRIMARY_KEYS}})
            rows.append({"order_seed": k, "task": t, "algorithm": "base", "test_acc": 0.0, "filter": "per_class-q0.9",
                         "ordering": "random", "weighting": "none"})
    return pd.DataFrame(rows)


def test_gap_matches_scipy_paired_t_interval():
    table = _summary(np.random.default_rng(0), 6, 4, slope=0.01)
    gaps = plasticity.gap_table(table, PRIMARY)
    assert gaps["task"].tolist() == [0, 1, 2, 3] and set(gaps["algorithm"]) == {"base"}
    prim = plasticity.primary_rows(table, PRIMARY)
    for _, g in gaps.iterrows():
        sub = prim[prim.task == g["task"]].pivot(index="order_seed", columns="algorithm", values="test_acc")
        d = sub["base"] - sub["retrained"]
        lo, hi = stats.ttest_rel(sub["base"], sub["retrained"]).confidence_interval(0.95)
        assert g["mean"] == pytest.approx(d.mean()) and g["n"] == 6
        assert (g["lo"], g["hi"]) == pytest.approx((lo, hi))
        assert g["n_negative"] == int((d < 0).sum())


def test_interval_covers_the_true_gap_at_its_level():
    """Over replicates, the 95% interval of the last task covers the planted gap ~95% of the time
    and excludes zero when the gap is large; without a planted gap it rarely excludes zero."""
    rng = np.random.default_rng(1)
    slope, n_tasks, reps = 0.004, 5, 400
    cover = excl_planted = excl_null = 0
    for _ in range(reps):
        last = plasticity.gap_table(_summary(rng, 5, n_tasks, slope), PRIMARY).iloc[-1]
        cover += last["lo"] <= -slope * (n_tasks - 1) <= last["hi"]
        excl_planted += last["hi"] < 0
        null = plasticity.gap_table(_summary(rng, 5, n_tasks, 0.0), PRIMARY).iloc[-1]
        excl_null += not (null["lo"] <= 0 <= null["hi"])
    se = np.sqrt(0.95 * 0.05 / reps)
    assert abs(cover / reps - 0.95) < 3 * se
    assert excl_null / reps < 0.05 + 3 * se
    assert excl_planted / reps > 0.5


def test_caption_states_final_gap_and_figure_is_written(tmp_path):
    table = _summary(np.random.default_rng(2), 5, 3, slope=0.02)
    gaps = plasticity.gap_table(table, PRIMARY)
    last = gaps.iloc[-1]
    text = plasticity.figure(table, gaps, PRIMARY, str(tmp_path / "f.pdf"), str(tmp_path / "f.png"))
    assert f"{100 * last['mean']:+.2f} points" in text and f"[{100 * last['lo']:+.2f}, {100 * last['hi']:+.2f}]" in text
    assert (tmp_path / "f.pdf").stat().st_size > 0


def test_missing_reference_names_the_fix():
    table = _summary(np.random.default_rng(3), 3, 2, 0.0)
    with pytest.raises(ValueError, match="conditions.algorithms"):
        plasticity.paired_gap(table[table.algorithm == "base"], "base")
