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
                rows.append(
                    {
                        "order_seed": k,
                        "task": t,
                        "algorithm": algorithm,
                        "test_acc": acc,
                        **{f: PRIMARY[f] for f in plasticity.PRIMARY_KEYS},
                    }
                )
            rows.append(
                {
                    "order_seed": k,
                    "task": t,
                    "algorithm": "base",
                    "test_acc": 0.0,
                    "filter": "per_class-q0.9",
                    "ordering": "random",
                    "weighting": "none",
                }
            )
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


def test_trend_is_the_mean_per_order_slope_with_scipy_interval():
    """gap_trend: per order, the least-squares slope of the gap on the task index (scipy linregress),
    then a one-sample t-interval over orders (scipy ttest_1samp)."""
    table = plasticity.primary_rows(_summary(np.random.default_rng(4), 7, 5, slope=0.01), PRIMARY)
    r = plasticity.gap_trend(table, "base")
    wide = table.pivot_table(index=["order_seed", "task"], columns="algorithm", values="test_acc")
    d = (wide["base"] - wide["retrained"]).unstack("task")
    slopes = [stats.linregress(d.columns, row).slope for _, row in d.iterrows()]
    ci = stats.ttest_1samp(slopes, 0.0).confidence_interval(0.95)
    assert r["n"] == 7 and r["slope"] == pytest.approx(np.mean(slopes))
    assert (r["lo"], r["hi"]) == pytest.approx((ci.low, ci.high))
    assert r["hi"] < 0  # the planted growth (-1 point per task) is resolved


def test_trend_rejects_at_its_level_under_the_null_and_recovery_is_recovered():
    """Without a planted trend, the slope interval excludes zero ~5% of the time; a mitigation
    planted to lose half of base's per-task gap recovers ~50% of base's final gap."""
    rng = np.random.default_rng(5)
    reps, excl = 300, 0
    for _ in range(reps):
        excl += not (lambda r: r["lo"] <= 0 <= r["hi"])(plasticity.gap_trend(_summary(rng, 5, 5, 0.0), "base"))
    assert excl / reps < 0.05 + 3 * np.sqrt(0.05 * 0.95 / reps)
    table = _summary(rng, 20, 5, slope=0.02, sd=0.002)
    base = table[(table.algorithm == "base") & (table["filter"] == "none")]
    ref = table[table.algorithm == "retrained"].set_index(["order_seed", "task"])["test_acc"]
    half = base.assign(
        algorithm="shrink_perturb",
        test_acc=(
            base.set_index(["order_seed", "task"])["test_acc"].to_numpy()
            + ref.loc[list(zip(base.order_seed, base.task))].to_numpy()
        )
        / 2,
    )
    trends = plasticity.trend_table(pd.concat([table, half]), PRIMARY).set_index("algorithm")
    assert trends.loc["shrink_perturb", "recovery"] == pytest.approx(0.5, abs=1e-9)
    assert trends.loc["shrink_perturb", "minus_base_lo"] > 0  # paired interval of sp - base at the last task
    assert trends.loc["base", "hi"] < 0 and np.isnan(trends.loc["base", "recovery"])
    text = plasticity.caption(plasticity.gap_table(pd.concat([table, half]), PRIMARY), trends=trends.reset_index())
    assert "recovers 50% of base's final gap" in text and "points/task" in text


def test_recovery_interval_is_the_set_the_paired_t_test_does_not_reject():
    """Fieller's interval for mean(x) / mean(y) equals the R whose paired differences x - R y the
    one-sample t-test (scipy) does not reject at 5%: its ends have p = 0.05, points inside p > 0.05,
    outside p < 0.05; unbounded (NaN) when mean(y) is not resolved from zero."""
    rng = np.random.default_rng(11)
    y = rng.normal(0.03, 0.02, 12)  # base's gap to retrained per order
    x = 0.6 * y + rng.normal(0, 0.01, 12)  # a mitigation's gain over base
    ratio, lo, hi = plasticity.ratio_interval(x, y)
    assert ratio == pytest.approx(x.mean() / y.mean()) and lo < ratio < hi

    def p(r):
        return stats.ttest_1samp(x - r * y, 0.0).pvalue

    assert p(lo) == pytest.approx(0.05, abs=1e-9) and p(hi) == pytest.approx(0.05, abs=1e-9)
    grid = np.linspace(lo - 1, hi + 1, 2001)
    inside = (grid > lo) & (grid < hi)
    pvals = np.array([p(r) for r in grid])
    assert (pvals[inside] > 0.05).all() and (
        pvals[~inside & ~np.isclose(grid, lo) & ~np.isclose(grid, hi)] < 0.05
    ).all()
    _, lo0, hi0 = plasticity.ratio_interval(x, rng.normal(0, 0.02, 12))  # base's gap not resolved
    assert np.isnan(lo0) and np.isnan(hi0)


def test_recovery_interval_covers_the_planted_recovery():
    """Over replicates of 10 class orders with a mitigation planted to recover 40% of base's gap,
    the interval of trend_table's recovery covers 0.4 in ~95% of replicates (unbounded ones count as
    covering: they are reported as unbounded, not as a number)."""
    rng = np.random.default_rng(12)
    reps, covered, bounded = 400, 0, 0
    for _ in range(reps):
        table = _summary(rng, 10, 3, slope=0.01, sd=0.01)
        base = table[(table.algorithm == "base") & (table["filter"] == "none")].set_index(["order_seed", "task"])
        ref = table[table.algorithm == "retrained"].set_index(["order_seed", "task"])["test_acc"]
        noise = rng.normal(0, 0.01, len(base))
        mitigation = base.assign(
            algorithm="shrink_perturb", test_acc=base["test_acc"] + 0.4 * (ref - base["test_acc"]) + noise
        )
        r = (
            plasticity.trend_table(pd.concat([table, mitigation.reset_index()]), PRIMARY)
            .set_index("algorithm")
            .loc["shrink_perturb"]
        )
        if np.isnan(r["recovery_lo"]):
            covered += 1
            continue
        bounded += 1
        covered += r["recovery_lo"] <= 0.4 <= r["recovery_hi"]
    assert bounded > 0.8 * reps  # base's gap (2 points, sd 1.4) is resolved in most replicates
    assert abs(covered / reps - 0.95) < 3 * np.sqrt(0.05 * 0.95 / reps)


def test_signature_is_the_paired_gap_of_each_model_measure(tmp_path):
    rng = np.random.default_rng(6)
    table = _summary(rng, 5, 4, slope=0.01)
    for m in plasticity.SIGNATURE:
        table[m] = rng.normal(10, 1, len(table))
    sig = plasticity.signature_table(table, PRIMARY)
    assert set(sig["measure"]) == set(plasticity.SIGNATURE) and len(sig) == 3 * 4
    prim = plasticity.primary_rows(table, PRIMARY)
    for m in plasticity.SIGNATURE:
        expect = plasticity.paired_gap(prim, "base", value=m)
        got = sig[sig.measure == m].reset_index(drop=True)
        assert np.allclose(got[["mean", "lo", "hi"]], expect[["mean", "lo", "hi"]])
        assert np.allclose(got["algorithm_mean"], expect[f"{m}_algorithm"])
    gaps = plasticity.gap_table(table, PRIMARY)
    plasticity.figure(
        table,
        gaps,
        PRIMARY,
        str(tmp_path / "f.pdf"),
        None,
        signature=sig,
        trends=plasticity.trend_table(table, PRIMARY),
    )
    assert (tmp_path / "f.pdf").stat().st_size > 0


def test_algorithm_table_pairs_every_algorithm_with_retrained_and_base(tmp_path):
    """Against scipy's paired t-interval, for a third algorithm (cbp) planted half-way between base
    and retrained: its gaps to both references, the measures' means and the hyper-parameters."""
    rng = np.random.default_rng(3)
    table = _summary(rng, 6, 3, slope=0.02)
    prim = table[table["filter"] == "none"]
    cbp = prim[prim.algorithm == "retrained"].assign(algorithm="cbp")
    cbp["test_acc"] -= 0.01 * cbp["task"] + rng.normal(0, 0.005, len(cbp))
    table = pd.concat([table, cbp], ignore_index=True)
    for m in plasticity.COMPARISON:
        table[m] = rng.normal(10, 1, len(table))
    hyper = {"cbp": {"values": {"cbp.replacement_rate": 0.01}, "tuned": True}, "base": {"values": {"lr": 0.1}}}
    out = plasticity.algorithm_table(table, PRIMARY, hyper)
    assert sorted(out["algorithm"].unique()) == ["base", "cbp", "retrained"] and len(out) == 9
    prim = plasticity.primary_rows(table, PRIMARY)
    wide = prim.pivot_table(index=["order_seed", "task"], columns="algorithm", values="test_acc")
    for ref, tag in (("retrained", "retrained"), ("base", "base")):
        for t in range(3):
            sub = wide.xs(t, level="task")
            lo, hi = stats.ttest_rel(sub["cbp"], sub[ref]).confidence_interval(0.95)
            row = out[(out.algorithm == "cbp") & (out.task == t)].iloc[0]
            assert row[f"gap_{tag}"] == pytest.approx((sub["cbp"] - sub[ref]).mean())
            assert (row[f"gap_{tag}_lo"], row[f"gap_{tag}_hi"]) == pytest.approx((lo, hi))
    last = out[(out.algorithm == "cbp") & (out.task == 2)].iloc[0]
    assert last["gap_base"] > 0 > last["gap_retrained"]  # recovers part of base's gap, as planted
    assert out[out.algorithm == "retrained"]["gap_retrained"].isna().all()
    assert out[out.algorithm == "base"]["gap_base"].isna().all()
    means = prim.groupby(["algorithm", "task"])["dormant_units"].mean()
    assert np.allclose(
        out.set_index(["algorithm", "task"])["dormant_units"], means.loc[out.set_index(["algorithm", "task"]).index]
    )
    assert out[out.algorithm == "cbp"]["tuned"].all() and not out[out.algorithm == "base"]["tuned"].any()
    assert out[out.algorithm == "cbp"]["hyper_parameters"].iloc[0] == '{"cbp.replacement_rate": 0.01}'
    text = plasticity.algorithm_figure(out, str(tmp_path / "a.pdf"))
    assert "cbp - retrained at the last task" in text and (tmp_path / "a.pdf").stat().st_size > 0
