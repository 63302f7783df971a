"""Tests for memplast.stats: the sample bootstrap against explicit resampling, scipy/statsmodels
called directly, planted effects recovered, documented table schemas, clear errors on bad input.
(Coverage and rejection rates of the pooled quantities: tests/test_calibration.py.)"""

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.multitest import multipletests

from memplast import stats as S
from memplast.stats import correlation, pooling, resampling


def bivariate(n, rho, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=n)
    return x, y


def spearman_population(rho):
    """Population Spearman correlation of a bivariate normal with Pearson correlation rho."""
    return 6 / math.pi * math.asin(rho / 2)


def confounded_table(n_classes=8, n_per_class=150, within=0.0, seed=0):
    """Per-sample table where class drives both memo and outcome; ``within`` is a true effect."""
    rng = np.random.default_rng(seed)
    label = np.repeat(np.arange(n_classes), n_per_class)
    u = rng.normal(size=n_classes)[label] * 2
    memo = np.exp(u + rng.normal(size=len(label)))
    loss_t = rng.gamma(2.0, size=len(label))
    z = np.log(memo) - u  # within-class memo variation
    outcome = u + within * z + 0.5 * loss_t + rng.normal(size=len(label))
    return pd.DataFrame({"label": label, "memo": memo, "loss_t": loss_t, "outcome": outcome})


def test_correlations_point_estimates_match_scipy_and_drop_nans():
    x, y = bivariate(300, 0.4, seed=0)
    x[[3, 10]] = np.nan
    y[50] = np.inf
    out = S.correlations(x, y, n_boot=100, seed=0)
    keep = np.isfinite(x) & np.isfinite(y)
    assert out["n"] == 297
    assert out["pearson_r"] == pytest.approx(stats.pearsonr(x[keep], y[keep]).statistic)
    assert out["pearson_p"] == pytest.approx(stats.pearsonr(x[keep], y[keep]).pvalue)
    assert out["spearman_r"] == pytest.approx(stats.spearmanr(x[keep], y[keep]).statistic)
    assert out["spearman_p"] == pytest.approx(stats.spearmanr(x[keep], y[keep]).pvalue)
    assert out["kendall_tau"] == pytest.approx(stats.kendalltau(x[keep], y[keep]).statistic)
    assert out["kendall_p"] == pytest.approx(stats.kendalltau(x[keep], y[keep]).pvalue)
    assert out["spearman_ci_low"] < out["spearman_r"] < out["spearman_ci_high"]


def test_bootstrap_ci_equals_scipy_bootstrap_with_spearmanr_on_tied_data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=80)
    y = np.round(0.5 * x + rng.normal(size=80), 1)  # many ties, like d_dormant
    out = S.correlations(x, y, n_boot=300, seed=11)
    direct = stats.bootstrap(
        (x, y),
        lambda a, b: stats.spearmanr(a, b).statistic,
        paired=True,
        vectorized=False,
        n_resamples=300,
        method="BCa",
        rng=np.random.default_rng(11),
    ).confidence_interval
    assert out["ci_method"] == "BCa"
    assert out["spearman_ci_low"] == pytest.approx(direct.low, abs=1e-12)
    assert out["spearman_ci_high"] == pytest.approx(direct.high, abs=1e-12)


def test_fast_average_ranks_equal_rankdata():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 7, size=(50, 40)).astype(float)
    codes = np.unique(values, return_inverse=True)[1].reshape(values.shape)
    np.testing.assert_allclose(correlation._average_ranks(codes), stats.rankdata(values, axis=-1))


def test_planted_correlation_recovered_within_ci():
    x, y = bivariate(2000, 0.6, seed=5)
    out = S.correlations(np.exp(x), y, n_boot=500, seed=1)  # heavy-tailed memo, same ranks
    assert out["spearman_ci_low"] < spearman_population(0.6) < out["spearman_ci_high"]
    out = S.correlations(x, y, n_boot=500, seed=1)
    assert out["pearson_ci_low"] < 0.6 < out["pearson_ci_high"]
    assert out["pearson_ci_high"] - out["pearson_ci_low"] < 0.1


def test_bootstrap_ci_coverage_is_nominal():
    """400 replicates: if true coverage is 0.95, the observed rate lies in [0.92, 0.98] with
    probability > 0.99 (binomial sd 0.011), so a rate outside it means miscalibrated CIs."""
    reps, rho = 400, 0.5
    hits = {"pearson": 0, "spearman": 0}
    truth = {"pearson": rho, "spearman": spearman_population(rho)}
    for rep in range(reps):
        x, y = bivariate(60, rho, seed=1000 + rep)
        out = S.correlations(x, y, n_boot=300, seed=rep)
        for name in hits:
            hits[name] += out[f"{name}_ci_low"] <= truth[name] <= out[f"{name}_ci_high"]
    for name, count in hits.items():
        assert 0.92 <= count / reps <= 0.98, (name, count / reps)


def test_correlations_constant_input_gives_nan_and_too_few_pairs_raise():
    out = S.correlations([1.0, 2, 3, 4, 5], [2.0, 2, 2, 2, 2], n_boot=50)
    assert out["n"] == 5 and np.isnan(out["spearman_r"]) and np.isnan(out["spearman_ci_low"])
    with pytest.raises(ValueError, match="need at least 3"):
        S.correlations([1.0, np.nan, 3], [1.0, 2, np.nan], n_boot=10)


def test_partial_spearman_matches_first_order_formula_on_ranks():
    rng = np.random.default_rng(2)
    c = rng.normal(size=400)
    df = pd.DataFrame({"x": c + rng.normal(size=400), "y": c + 0.3 * rng.normal(size=400), "c": c})
    df["y"] += 0.2 * df["x"]
    out = S.partial_spearman(df, "x", "y", covariates=["c"], categorical=[])
    r = lambda a, b: stats.spearmanr(df[a], df[b]).statistic  # noqa: E731
    expected = (r("x", "y") - r("x", "c") * r("y", "c")) / math.sqrt((1 - r("x", "c") ** 2) * (1 - r("y", "c") ** 2))
    assert out["r"] == pytest.approx(expected, abs=1e-10)
    assert out["df"] == 400 - 3
    t = expected * math.sqrt(out["df"] / (1 - expected**2))
    assert out["p"] == pytest.approx(2 * stats.t.sf(abs(t), out["df"]))


def test_partial_spearman_removes_class_confounder_and_keeps_real_effect():
    df = confounded_table(within=0.0)
    raw = stats.spearmanr(df["memo"], df["outcome"]).statistic
    part = S.partial_spearman(df, "memo", "outcome", ["loss_t"], ["label"])
    assert raw > 0.4
    assert abs(part["r"]) < 0.06 and part["p"] > 0.01
    assert part["df"] == len(df) - 2 - (1 + 7)  # loss_t + 7 class dummies
    real = S.partial_spearman(confounded_table(within=0.5, seed=1), "memo", "outcome", ["loss_t"], ["label"])
    assert real["r"] > 0.25 and real["p"] < 1e-10


def test_bh_matches_multipletests_and_keeps_nans():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.2, 0.001])
    out = S.bh(p)
    keep = ~np.isnan(p)
    np.testing.assert_allclose(out[keep], multipletests(p[keep], method="fdr_bh")[1])
    assert np.isnan(out[2])
    table = pd.DataFrame({"fam": ["a", "a", "b", "b", "b", "a"], "p": p})
    adjusted = S.add_bh(table, ["fam"])
    for _fam, g in table.groupby("fam"):
        np.testing.assert_allclose(adjusted.loc[g.index, "p_bh"], S.bh(g["p"]))
    assert not np.allclose(adjusted["p_bh"].to_numpy()[keep], out[keep])  # families matter


def planted_shift_table(seed, shift=2.0, n=3000):
    rng = np.random.default_rng(seed)
    memo = rng.lognormal(size=n)
    top = memo >= np.quantile(memo, 0.9)
    return pd.DataFrame({"memo": memo, "y": rng.normal(size=n) + shift * top})


def test_decile_difference_recovers_planted_shift():
    out = S.decile_effects(planted_shift_table(0), "memo", "y", n_deciles=10, n_boot=500, seed=1)
    assert list(out.columns) == S.DECILE_COLUMNS and len(out) == 11
    diff = out[out.term == "top_minus_bottom"].iloc[0]
    assert diff["median"] == pytest.approx(2.0, abs=0.3) and diff["ci_low"] > 1.5 and diff["p"] < 1e-20
    deciles = out[out.term == "decile"]
    assert (deciles["n"] == 300).all()
    assert deciles.iloc[:9]["median"].abs().max() < 0.3
    assert ((deciles["ci_low"] <= deciles["median"]) & (deciles["median"] <= deciles["ci_high"])).all()
    # the 95% CI of the difference covers the planted shift in most datasets
    # (P(fewer than 17 of 20) = 0.016 at nominal coverage)
    covered = 0
    for seed in range(20):
        d = S.decile_effects(planted_shift_table(100 + seed), "memo", "y", 10, 300, seed).iloc[-1]
        covered += d["ci_low"] < 2.0 < d["ci_high"]
    assert covered >= 17


def test_tails_exact_top_k_enrichment_fisher_and_jaccard():
    # boundary 0: 8 samples; boundary 1: 10 samples. q = 0.25 -> k = 2 and 3.
    b0 = pd.DataFrame(
        {"sample_id": range(8), "boundary": 0, "score": [5, 9, 9, 1, 0, 2, 3, 4], "memo": [1, 8, 7, 2, 3, 4, 5, 6]}
    )
    b1 = pd.DataFrame(
        {
            "sample_id": range(10),
            "boundary": 1,
            "score": [9, 1, 8, 1, 0, 2, 3, 7, 0, 0],
            "memo": [8, 1, 2, 3, 4, 5, 6, 9, 7, 10],
        }
    )
    out = S.tails(pd.concat([b0, b1]), q=0.25, score_col="score", memo="memo", threshold_quantile=0.75)
    r0, r1 = out.iloc[0], out.iloc[1]
    assert (r0["k"], r1["k"]) == (2, 3)
    # tie at score 9 between ids 1 and 2: both enter; tails: {1, 2} and {0, 2, 7}
    m0 = np.quantile([1, 8, 7, 2, 3, 4, 5, 6], 0.75)  # 6.25 -> high = {1, 2}
    assert r0["memo_threshold"] == pytest.approx(m0)
    assert r0["n_tail_high"] == 2 and r0["p_high_tail"] == 1.0 and r0["p_high_all"] == 0.25
    assert r0["enrichment"] == pytest.approx(4.0)
    assert r0["p"] == pytest.approx(stats.fisher_exact([[2, 0], [0, 6]]).pvalue)
    # boundary 1: m = 7.75 -> high = {0, 7, 9}; tail {0, 2, 7} has 2 high
    assert r1["n_tail_high"] == 2 and r1["p_high_all"] == pytest.approx(0.3)
    assert r1["p"] == pytest.approx(stats.fisher_exact([[2, 1], [1, 6]]).pvalue)
    assert np.isnan(r0["jaccard_prev"])
    assert r1["jaccard_prev"] == pytest.approx(1 / 4)  # {1,2} vs {0,2,7}
    low = S.tails(b0, q=0.25, score_col="score", memo="memo", largest=False)
    assert low.iloc[0]["n_tail_high"] == 0  # bottom 2: ids 4 (0), 3 (1)
    assert list(out.columns) == S.TAIL_COLUMNS
    tie = pd.DataFrame({"sample_id": [5, 3, 9, 1], "boundary": 0, "score": [1.0, 1, 1, 1], "memo": [1.0, 2, 3, 4]})
    assert S.tails(tie, 0.5, "score", threshold_quantile=0.5).iloc[0]["n_tail_high"] == 1  # ids 1, 3 -> memo 4, 2


def test_mediation_recovers_planted_indirect_and_direct_effects():
    rng = np.random.default_rng(4)
    n = 3000
    x = rng.random(n)
    cov = rng.normal(size=n)
    m = 0.5 * x + 0.3 * cov + 0.3 * rng.normal(size=n)
    y = 0.3 * x + 0.8 * m + 0.2 * cov + 0.3 * rng.normal(size=n)
    df = pd.DataFrame({"x": x, "m": m, "y": y, "c": cov})
    out = S.mediation(df, "x", "m", "y", sims=200, seed=0, covariates=["c"])
    assert out["n"] == n
    assert out["acme_ci_low"] < 0.4 < out["acme_ci_high"]
    assert out["ade_ci_low"] < 0.3 < out["ade_ci_high"]
    assert out["total_ci_low"] < 0.7 < out["total_ci_high"]
    assert out["prop_mediated_ci_low"] < 0.4 / 0.7 < out["prop_mediated_ci_high"]
    assert out["acme_p"] < 0.01
    assert set(S.MEDIATION_COLUMNS) == set(out)
    none = S.mediation(df.assign(m=rng.normal(size=n)), "x", "m", "y", sims=100, seed=0)
    assert none["acme_ci_low"] < 0 < none["acme_ci_high"]


def test_cross_sample_means_and_spearman():
    rows = []
    for b, (new_memo, old_loss) in enumerate([(1.0, 0.1), (3.0, 0.4), (2.0, 0.2), (4.0, 0.9)]):
        rows += [{"boundary": b, "is_old": False, "memo": new_memo + d, "d_loss": -5.0} for d in (-0.5, 0.5)]
        rows += [{"boundary": b, "is_old": True, "memo": 1.0, "d_loss": old_loss + d} for d in (-0.1, 0.1, np.nan)]
    df = pd.DataFrame(rows).assign(
        order_seed=0, filter="none", ordering="random", weighting="none", algorithm="base", kind="windowed"
    )
    out = S.cross_sample(df, kinds=["windowed"])
    assert list(out.columns) == S.CROSS_SAMPLE_COLUMNS
    np.testing.assert_allclose(out["new_memo_mean"], [1, 3, 2, 4])
    np.testing.assert_allclose(out["old_d_loss_mean"], [0.1, 0.4, 0.2, 0.9])
    assert (out["n_old"] == 2).all() and (out["n_new"] == 2).all()
    assert out["spearman_r"].iloc[0] == pytest.approx(1.0) and out["n_boundaries"].iloc[0] == 4
    with pytest.raises(ValueError, match="no new-class rows"):
        S.cross_sample(df[df.is_old])


def test_windowed_correlation_results_legacy_schema_and_signs():
    deltas = S.synthetic_deltas(n_orders=1, n_classes=6, n_per_class=30, seed=3)
    out = S.windowed_correlation_results(deltas, tau=0.01)
    assert list(out.columns) == S.windowed_correlation_columns()
    assert list(out.columns)[:3] == ["boundary", "memo_delta_loss_pearson_r", "memo_delta_loss_pearson_p"]
    assert out.columns[-1] == "n_samples" and len(out) == deltas["boundary"].nunique()
    sub = deltas[(deltas.kind == "windowed") & deltas.is_old & (deltas.boundary == 1)].dropna(
        subset=["memo", "d_loss", "grad_drop", "d_dormant_t0.01"]
    )
    row = out[out.boundary == 1].iloc[0]
    assert row["n_samples"] == len(sub)
    assert row["memo_delta_grad_norm_spearman_r"] == pytest.approx(
        -stats.spearmanr(sub["memo"], sub["grad_drop"]).statistic
    )
    assert row["memo_delta_dormant_kendall_r"] == pytest.approx(
        stats.kendalltau(sub["memo"], sub["d_dormant_t0.01"]).statistic
    )
    two = S.windowed_correlation_results(S.synthetic_deltas(n_orders=2, n_classes=4, n_per_class=20), tau=0)
    assert list(two.columns) == ["order_seed"] + S.windowed_correlation_columns()


def test_synthetic_deltas_schema():
    d = S.synthetic_deltas(n_orders=2, n_classes=6, n_per_class=10)
    required = S.RUN_KEYS + [
        "sample_id",
        "label",
        "boundary",
        "is_old",
        "noisy",
        "kind",
        "memo",
        "memo_pct",
        "loss_t",
        "d_loss",
        "d_log_grad",
        "grad_drop",
        "d_input_grad",
        "d_margin",
        "d_dormant_t0",
        "d_dormant_t0.001",
        "d_dormant_t0.01",
        "drift_after",
        "d_drift",
        "align_dot",
        "align_cos",
        "pred_forget",
    ]
    assert set(required) <= set(d.columns)
    assert set(d["kind"]) == set(S.KINDS) and d["is_old"].any() and (~d["is_old"]).any()
    wide = d.pivot_table(index=["order_seed", "sample_id", "boundary"], columns="kind", values="align_cos")
    np.testing.assert_allclose(wide["immediate"], wide["windowed"])
    assert d["d_log_grad"].isna().any()
    assert (d["memo"] > 0).all() and d["memo"].mean() > d["memo"].median() and d["memo"].skew() > 1  # heavy tail


# --------------------------------------------------------------------------- the sample bootstrap


def cell_table(n_classes=5, n_per_class=40, seed=0, ties=True):
    """One cell (one order, kind, boundary) with class structure, ties and a baseline loss."""
    rng = np.random.default_rng(seed)
    label = np.repeat(np.arange(n_classes), n_per_class)
    memo = rng.normal(size=len(label)) + 0.4 * label
    y = 0.3 * memo + rng.normal(size=len(label)) + 0.3 * label
    if ties:
        memo, y = np.round(memo, 1), np.round(y, 1)
    return pd.DataFrame(
        {
            "sample_id": rng.permutation(len(label)) + 100,
            "label": label,
            "memo": memo,
            "y": y,
            "loss_t": rng.gamma(2.0, size=len(label)) + 0.2 * memo,
            "order_seed": 0,
            "kind": "windowed",
            "boundary": 0,
        }
    )


KEYS = ["order_seed", "kind", "boundary"]


def test_cell_statistics_equal_scipy_and_statsmodels_on_the_explicit_resample():
    df = cell_table()
    universe = resampling.Universe.of(df)
    cell = resampling.build_cells(df, universe, KEYS, ["y"])[0]
    est = resampling._cell_batch(cell, np.ones((len(cell.idx), 1)))[0, 0]
    assert est[0] == pytest.approx(stats.spearmanr(df["memo"], df["y"]).statistic, abs=1e-12)
    assert est[1] == pytest.approx(S.partial_spearman(df, "memo", "y", ["loss_t"], ["label"])["r"], abs=1e-10)
    counts = resampling.stratified_counts(universe, 3, np.random.default_rng(1))
    for w in counts:
        by_id = dict(zip(universe.sample_id, w))
        rows = df.loc[df.index.repeat([int(by_id[s]) for s in df["sample_id"]])]
        got = resampling._cell_batch(cell, w[cell.idx, None])[0, 0]
        assert got[0] == pytest.approx(stats.spearmanr(rows["memo"], rows["y"]).statistic, abs=1e-12)
        assert got[1] == pytest.approx(S.partial_spearman(rows, "memo", "y", ["loss_t"], ["label"])["r"], abs=1e-10)


def test_every_replicate_equals_a_fresh_rank_of_the_explicit_resample_or_permutation():
    """resample's bootstrap and null replicates (ranks from cumulative sums of the draw's weights, no
    sort per draw) equal scipy's rankdata-based Spearman / partial Spearman recomputed from scratch on
    the weighted-expanded rows (bootstrap) and the permuted memo (null), for the same seed; cells with
    ties, several boundaries, and a NaN outcome row (a cell that is not closed under permutation)."""
    base = cell_table(n_classes=4, n_per_class=12, seed=8)
    rng = np.random.default_rng(9)
    cells = [base.assign(boundary=k, y=np.round(base["y"] + rng.normal(size=len(base)), 1)) for k in range(2)]
    df = pd.concat(cells, ignore_index=True)
    df.loc[3, "y"] = np.nan  # boundary 0: one class incomplete -> the sort-free general null path
    n_boot, n_null = 6, 5
    res = resampling.resample(df, KEYS, ["y"], n_boot, n_null, np.random.default_rng(4))
    universe = resampling.Universe.of(df)
    draw = np.random.default_rng(4)
    counts = resampling.stratified_counts(universe, n_boot, draw)
    perms = resampling.within_class_permutations(universe, n_null, draw)
    memo_u = df.drop_duplicates("sample_id").set_index("sample_id").loc[universe.sample_id, "memo"].to_numpy()

    def both(rows):
        return (
            stats.spearmanr(rows["memo"], rows["y"]).statistic,
            S.partial_spearman(rows, "memo", "y", ["loss_t"], ["label"])["r"],
        )

    for r, (boundary,) in enumerate(res.rows[["boundary"]].itertuples(index=False)):
        cell = df[(df["boundary"] == boundary) & df["y"].notna()]
        at = universe.index(cell["sample_id"])
        assert res.estimate[r] == pytest.approx(both(cell), abs=1e-12)
        for b in range(n_boot):
            expanded = cell.loc[cell.index.repeat(counts[b, at])]
            np.testing.assert_allclose(res.boot[b, r], both(expanded), atol=1e-12)
        for p in range(n_null):
            permuted = cell.assign(memo=memo_u[perms[p, at]])
            np.testing.assert_allclose(res.null[p, r], both(permuted), atol=1e-12)


def test_bootstrap_is_class_stratified_and_one_draw_serves_every_cell():
    df = cell_table(seed=2)
    universe = resampling.Universe.of(df)
    counts = resampling.stratified_counts(universe, 50, np.random.default_rng(0))
    for idx in universe.strata:
        assert (counts[:, idx].sum(axis=1) == len(idx)).all()  # every class keeps its size
    assert counts.std() > 0.5
    # two cells holding the same samples (two boundaries) get identical replicates: one draw per replicate
    two = pd.concat([df, df.assign(boundary=1)], ignore_index=True)
    res = resampling.resample(two, KEYS, ["y"], 40, 0, np.random.default_rng(3))
    np.testing.assert_array_equal(res.boot[:, 0], res.boot[:, 1])


def test_within_class_permutation_stays_in_class_and_closed_cells_match_rankdata():
    df = cell_table(seed=4, ties=False)
    universe = resampling.Universe.of(df)
    perm = resampling.within_class_permutations(universe, 20, np.random.default_rng(0))
    np.testing.assert_array_equal(universe.label[perm], np.broadcast_to(universe.label, perm.shape))
    assert all(sorted(p) == list(range(len(universe.sample_id))) for p in perm)
    res = resampling.resample(df, KEYS, ["y"], 0, 20, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    perm = resampling.within_class_permutations(universe, 20, rng)
    memo_u = df.set_index("sample_id").loc[universe.sample_id, "memo"].to_numpy()
    y_u = df.set_index("sample_id").loc[universe.sample_id, "y"].to_numpy()
    expected = [stats.spearmanr(memo_u[p], y_u).statistic for p in perm]
    np.testing.assert_allclose(res.null[:, 0, 0], expected, atol=1e-12)


def test_bc_interval_corrects_median_bias_and_its_p_inverts_it():
    rng = np.random.default_rng(0)
    draws = rng.normal(0.1, 1.0, size=(40000, 1))  # replicates centred 0.1 above the estimate 0
    lo, hi, p = S.common.bc_interval(draws, np.zeros(1), 0.9)
    plain = np.quantile(draws[:, 0], [0.05, 0.95])
    assert lo[0] < plain[0] - 0.1 and hi[0] < plain[1] - 0.1  # shifted back by ~2 x 0.1
    assert (lo[0] + hi[0]) / 2 == pytest.approx(-0.1, abs=0.04)
    # p < alpha exactly when 0 is outside the interval at 1 - alpha
    for est in (0.0, 1.2, 1.8, 2.5):
        lo, hi, p = S.common.bc_interval(draws + est, np.array([est]), 0.9)
        assert (p[0] < 0.1) == (not lo[0] <= 0 <= hi[0])
        assert p[0] > 0
    assert S.common.bc_interval(np.full((99, 1), 3.0), np.array([3.0]), 0.95)[2][0] > 0


def test_bootstrap_p_is_never_zero_and_inverts_the_percentile_interval():
    draws = np.r_[np.full(999, 0.3)]
    assert S.bootstrap_p(draws) == pytest.approx(2 / 1000)
    draws = np.r_[np.full(30, -0.1), np.full(70, 0.2)]
    assert S.bootstrap_p(draws) == pytest.approx(2 * 31 / 101)
    assert S.bootstrap_p(-draws) == pytest.approx(2 * 31 / 101)
    assert S.bootstrap_p(np.zeros(10)) == 1.0


def two_order_table(seed=0):
    a = cell_table(seed=seed)
    b = a.assign(order_seed=1, y=a["y"] + np.random.default_rng(seed + 1).normal(size=len(a)))
    c = a.assign(boundary=1, y=a["y"] * 0.5 + np.random.default_rng(seed + 2).normal(size=len(a)))
    d = b.assign(boundary=1, y=b["y"] * 0.5 + np.random.default_rng(seed + 3).normal(size=len(a)))
    return pd.concat([a, b, c, d], ignore_index=True).assign(**S.PRIMARY, outcome_name="y")


def test_pooled_and_trend_rows_are_the_same_contrasts_of_every_replicate():
    df = two_order_table()
    res = resampling.resample(df, S.CONDITION_KEYS + KEYS, ["y"], 60, 30, np.random.default_rng(0))
    group = S.CONDITION_KEYS + ["kind", "outcome"]
    pooled = pooling.pooled_rows(res, group, 0.9)
    meta = res.rows
    fixed_all = pooled[
        (pooled.boundary.astype(str) == "all") & (pooled.pooling == "fixed") & (pooled.estimator == "partial")
    ].iloc[0]
    assert fixed_all["estimate"] == pytest.approx(res.estimate[:, 1].mean())
    lo, hi, p = S.common.bc_interval(res.boot[:, :, 1].mean(axis=1)[:, None], np.array([fixed_all["estimate"]]), 0.9)
    assert (fixed_all["ci_low"], fixed_all["ci_high"], fixed_all["p"]) == pytest.approx((lo[0], hi[0], p[0]))
    assert fixed_all["n_samples"] == df["sample_id"].nunique() and fixed_all["n_orders"] == 2
    b1 = pooled[(pooled.boundary.astype(str) == "1") & (pooled.pooling == "fixed") & (pooled.estimator == "raw")].iloc[
        0
    ]
    assert b1["estimate"] == pytest.approx(res.estimate[(meta.boundary == 1).to_numpy(), 0].mean())
    trend = pooling.trend_rows(res, group, 0.9, {"windowed": 1})
    t = trend[trend.estimator == "raw"].iloc[0]
    per_b = [res.estimate[(meta.boundary == b).to_numpy(), 0].mean() for b in (0, 1)]
    assert t["estimate"] == pytest.approx(per_b[1] - per_b[0])  # slope over boundaries 0, 1
    boot_slope = res.boot[:, (meta.boundary == 1).to_numpy(), 0].mean(1) - res.boot[
        :, (meta.boundary == 0).to_numpy(), 0
    ].mean(1)
    assert t["p"] == pytest.approx(S.common.bc_interval(boot_slope[:, None], np.array([t["estimate"]]), 0.9)[2][0])


def test_random_effects_reduce_to_hksj_for_independent_orders_and_to_the_sample_variance_without_heterogeneity():
    rng = np.random.default_rng(0)
    y = np.array([0.1, 0.4, 0.25, 0.6])
    v = np.array([0.002, 0.003, 0.0025, 0.002])
    boot = y + rng.normal(size=(200_000, 4)) * np.sqrt(v)  # independent orders
    out = S.random_effects(y, boot, 0.95)
    k = 4
    var_hk = np.sum((y - y.mean()) ** 2) / (k * (k - 1))  # equal-weight HKSJ
    sigma = np.cov(boot, rowvar=False)
    tau2 = (np.sum((y - y.mean()) ** 2) - np.trace(sigma) + sigma.sum() / k) / (k - 1)
    assert out["tau2"] == pytest.approx(tau2)
    assert out["estimate"] == pytest.approx(y.mean())
    se = (out["ci_high"] - out["ci_low"]) / (2 * stats.t.ppf(0.975, out["df"]))
    assert se**2 == pytest.approx(var_hk, rel=0.02)
    assert out["df"] == pytest.approx(k - 1, rel=0.05)  # no shared-sample variance: HKSJ's t
    # orders sharing samples and differing: the bootstrap part of the variance adds degrees of freedom
    common = rng.normal(size=(200_000, 1)) * 0.05
    boot3 = y + common + rng.normal(size=(200_000, 4)) * np.sqrt(v)
    out3 = S.random_effects(y, boot3, 0.95)
    sigma3 = np.cov(boot3, rowvar=False)
    v_o = np.sum((y - y.mean()) ** 2) / (k * (k - 1))
    v_b = (sigma3.sum() - np.trace(sigma3)) / (k * (k - 1))
    assert out3["tau2"] > 0 and v_b > 0.1 * v_o
    assert out3["df"] == pytest.approx((v_o + v_b) ** 2 / (v_o**2 / (k - 1) + v_b**2 / (200_000 - 1)))
    se3 = (out3["ci_high"] - out3["ci_low"]) / (2 * stats.t.ppf(0.975, out3["df"]))
    assert se3**2 == pytest.approx(v_o + v_b)
    assert k - 1 < out3["df"] and out3["ci_high"] - out3["ci_low"] < 2 * stats.t.ppf(0.975, k - 1) * se3
    # orders that agree (shared samples, no heterogeneity): the sample-level variance, normal reference
    shared = rng.normal(size=(5000, 1)) * 0.05
    boot2 = 0.3 + shared + rng.normal(size=(5000, 3)) * 0.001
    out2 = S.random_effects(np.array([0.3, 0.3005, 0.2995]), boot2, 0.95)
    assert out2["tau2"] == 0 and np.isinf(out2["df"])
    assert (out2["ci_high"] - out2["ci_low"]) / 2 == pytest.approx(1.96 * boot2.mean(axis=1).std(), rel=0.05)


def test_ols_rank_fe_equals_the_dummy_regression_clustered_by_sample():
    df = pd.concat(
        [cell_table(seed=5).assign(order_seed=o, boundary=b) for o in (0, 1) for b in (0, 1)], ignore_index=True
    )
    df["y"] += np.random.default_rng(9).normal(size=len(df))
    out = S.ols_rank_fe(df, "y", 0.9)
    d = df.copy()
    d["q"] = d.groupby(["order_seed", "boundary"])["memo"].rank(pct=True)
    d["ql"] = d.groupby(["order_seed", "boundary"])["loss_t"].rank(pct=True)
    fit = smf.ols("y ~ q + ql + C(label):C(boundary):C(order_seed)", d).fit(
        cov_type="cluster", cov_kwds={"groups": d["sample_id"]}
    )
    assert out["estimate"] == pytest.approx(fit.params["q"], rel=1e-8)
    # same cluster-robust meat; the dummy fit counts the absorbed fixed effects in its small-sample factor
    n, g = len(d), d["sample_id"].nunique()
    ratio = math.sqrt(((n - 1) / (n - 2)) / ((n - 1) / (n - fit.df_model - 1)))
    assert (out["ci_high"] - out["estimate"]) == pytest.approx(
        (fit.conf_int(0.1).loc["q", 1] - fit.params["q"]) * ratio, rel=1e-6
    )
    assert out["n_samples"] == g and out["p"] > 0


@pytest.fixture(scope="module")
def demo():
    deltas = S.synthetic_deltas(n_orders=2, n_classes=8, classes_per_task=2, n_per_class=40, seed=1)
    cfg = dict(
        seed=0,
        n_boot=200,
        ci_level=0.9,
        n_permutations=100,
        tail_quantile=0.05,
        n_deciles=5,
        mediation_sims=20,
        outcomes=list(S.DEFAULT_OUTCOMES),
        epochs_per_task=12,
        window=3,
        taus=[0.0, 0.001, 0.01],
        primary=S.PRIMARY,
    )
    return deltas, cfg, S.run_all(deltas, cfg)


def test_p_values_at_the_resampling_floor_are_bounds_and_bh_adjusts_p_perm_too(demo):
    _, cfg, out = demo
    b_floor, p_floor = 1 / (cfg["n_boot"] + 1), 1 / (cfg["n_permutations"] + 1)
    for name in ("pooled", "per_boundary"):
        t = out[name]
        boot = t[t["pooling"] != "random"]
        assert boot["p_at_floor"].any() and (~boot["p_at_floor"]).any(), name  # demo has both kinds
        assert (boot.loc[boot["p_at_floor"], "p"] == b_floor).all() and (boot["p"].dropna() >= b_floor).all()
        assert not t.loc[t["pooling"] == "random", "p_at_floor"].any()  # analytic t p: not a resampling bound
        perm = t.dropna(subset=["p_perm"])
        np.testing.assert_array_equal(perm["p_perm_at_floor"], np.isclose(perm["p_perm"], p_floor))
        assert (t["p_perm_bh"].dropna() >= t["p_perm"].dropna().loc[t["p_perm_bh"].dropna().index]).all()
    t = out["per_boundary"]
    for _, g in t.groupby("estimator"):
        np.testing.assert_allclose(g["p_perm_bh"], S.bh(g["p_perm"]))


def test_every_row_says_what_it_generalises_to_and_headline_shows_random_effects_from_5_orders(demo):
    _, cfg, out = demo
    assert set(out["per_boundary"]["generalises_to"]) == {"this class order"}
    pooled = out["pooled"]
    assert (
        pooled["generalises_to"] == pooled["pooling"].map({"fixed": "these class orders", "random": "new class orders"})
    ).all()
    head = out["headline"]
    assert "df" not in head and (head["generalises_to"] == "these class orders").all()
    assert head["random_estimate"].isna().all()  # 2 class orders: no random-effects column yet
    deltas = S.synthetic_deltas(n_orders=5, n_classes=4, classes_per_task=2, n_per_class=20, seed=3)
    five = S.tables.association_tables(
        deltas[deltas.is_old], {**cfg, "n_boot": 50, "n_permutations": 0}, ["d_loss"], ["windowed"]
    )
    ran = five["pooled"][(five["pooled"]["pooling"] == "random") & (five["pooled"]["boundary"].astype(str) == "all")]
    merged = five["headline"].merge(ran, on=["outcome", "kind", "estimator"], suffixes=("", "_r"))
    assert len(merged) == 2
    np.testing.assert_allclose(merged["random_estimate"], merged["estimate_r"])
    np.testing.assert_allclose(
        merged[["random_ci_low", "random_ci_high", "random_df"]], merged[["ci_low_r", "ci_high_r", "df"]]
    )


def test_run_all_writes_every_documented_table_with_the_pooled_columns(demo):
    _, _, out = demo
    assert set(out) == set(S.TABLES)
    for name in ("headline", "pooled", "per_boundary", "trend", "models"):
        table = out[name]
        assert len(table) > 0, name
        assert set(S.CONDITION_KEYS + S.POOLED_COLUMNS) <= set(table.columns), name
        p = table["p"].dropna()
        assert (p > 0).all() and (p <= 1).all(), name  # never printed as 0
        assert set(table["pooling"]) <= {"none", "fixed", "random"}
    assert set(out["pooled"]["pooling"]) == {"fixed", "random"}
    assert set(out["pooled"]["estimator"]) == {"raw", "partial"}
    head = out["headline"]
    assert set(head["boundary"].astype(str)) == {"all"} and set(head["pooling"]) == {"fixed"}
    assert len(head) == 2 * 2 * len(S.DEFAULT_OUTCOMES)  # estimator x kind x outcome
    assert list(out["windowed_correlation_results"].columns) == ["order_seed"] + S.windowed_correlation_columns()
    assert set(S.TAIL_COLUMNS + ["score", "direction", "p_bh"]) <= set(out["tails"].columns)
    assert set(S.MEDIATION_COLUMNS + ["mediator", "acme_p_bh"]) <= set(out["mediation"].columns)
    assert list(out["cross_sample"].columns) == S.CROSS_SAMPLE_COLUMNS


def test_p_bh_adjusts_the_reported_p_within_the_documented_family(demo):
    _, _, out = demo
    pooled = out["pooled"]
    level = np.where(pooled["boundary"].astype(str) == "all", "all", "boundary")
    for _, g in pooled.groupby([pooled["estimator"], pooled["pooling"], level]):
        np.testing.assert_allclose(g["p_bh"], S.bh(g["p"]))
    merged = out["headline"].merge(
        pooled, on=S.CONDITION_KEYS + ["outcome", "kind", "estimator", "pooling"], suffixes=("", "_pooled")
    )
    merged = merged[merged["boundary_pooled"].astype(str) == "all"]
    np.testing.assert_allclose(merged["p_bh"], merged["p_bh_pooled"])


def test_run_all_recovers_planted_effects_within_class(demo):
    deltas, _, out = demo
    head = out["headline"].set_index(["outcome", "kind", "estimator"])
    # planted: memo's within-class part raises d_loss (effect 0.5 on standardized log memo)
    for kind in ("immediate", "windowed"):
        r = head.loc[("d_loss", kind, "partial")]
        assert r["estimate"] > 0.2 and r["ci_low"] > 0 and r["p_bh"] < 0.05
        assert not (r["null_low"] <= r["estimate"] <= r["null_high"])
        assert head.loc[("d_log_grad", kind, "partial"), "ci_high"] < 0  # planted negative
    models = out["models"]
    assert (models[models.outcome == "d_loss"]["estimate"] > 0).all()
    assert (models[models.outcome == "d_loss"]["ci_low"] > 0).all()


def test_class_level_confound_moves_raw_but_not_within_class():
    deltas = S.synthetic_deltas(
        n_orders=2, n_classes=8, n_per_class=40, effect=0.0, mediated=(0.0, 0.0), class_confound=2.0, seed=3
    )
    cfg = dict(seed=1, n_boot=200, ci_level=0.95, n_permutations=100, epochs_per_task=12, window=3, outcomes=["d_loss"])
    old = deltas[deltas.is_old]
    out = S.tables.association_tables(old, cfg, ["d_loss"], ["windowed"])["headline"].set_index("estimator")
    assert out.loc["raw", "ci_low"] > 0.1  # the class confound shows in the raw association ...
    assert out.loc["partial", "ci_low"] < 0 < out.loc["partial", "ci_high"]  # ... not within class
    assert out.loc["raw", "null_low"] > 0  # and the within-class null band of raw sits at the confound


def test_outcomes_come_from_the_config_so_renamed_columns_work():
    deltas = S.synthetic_deltas(n_orders=1, n_classes=4, n_per_class=20, seed=2)
    cfg = dict(
        seed=0,
        n_boot=50,
        n_permutations=20,
        epochs_per_task=12,
        window=3,
        outcomes=["drift_after", "d_loss"],
        n_deciles=4,
        mediation_sims=10,
    )
    out = S.run_all(deltas, cfg)
    assert set(out["headline"]["outcome"]) == {"drift_after", "d_loss"}


def test_accuracy_differences_are_paired_t_intervals_and_conditions_compare_pooled_estimates():
    other = {**S.PRIMARY, "filter": "per_class-q0.9"}
    summary = S.synthetic_summary(
        n_orders=4, conditions=[S.PRIMARY, other], shift={tuple(other.values()): 0.05}, seed=1
    )
    acc = S.accuracy_differences(summary, S.PRIMARY, 0.95)
    row = acc[(acc.metric == "test_acc") & (acc.task == 2)].iloc[0]
    a = summary[(summary["filter"] == "per_class-q0.9") & (summary.task == 2)].sort_values("order_seed")["test_acc"]
    b = summary[(summary["filter"] == "none") & (summary.task == 2)].sort_values("order_seed")["test_acc"]
    d = a.to_numpy() - b.to_numpy()
    assert row["estimate"] == pytest.approx(d.mean())
    assert row["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    deltas = S.synthetic_deltas(n_orders=2, n_classes=6, n_per_class=30, seed=2, conditions=[S.PRIMARY, other])
    shifted = deltas["filter"] == "per_class-q0.9"
    deltas.loc[shifted, "d_loss"] += 3.0 * np.log(deltas.loc[shifted, "memo"])  # planted: stronger association
    cfg = dict(seed=0, n_boot=200, ci_level=0.95, outcomes=["d_loss"], primary=S.PRIMARY)
    table = S.compare_conditions(deltas, summary, cfg)
    assert set(S.CONDITION_KEYS + S.POOLED_COLUMNS + ["metric"]) <= set(table.columns)
    diff = table[(table.metric == "pooled_estimate_difference") & (table.estimator == "partial")]
    assert len(diff) == 2 and (diff["ci_low"] > 0).all()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call",
    [
        lambda d: S.windowed_correlation_results(d.drop(columns="grad_drop")),
        lambda d: S.tails(d.drop(columns="memo"), 0.1, "d_loss"),
        lambda d: S.ols_rank_fe(d.drop(columns="label"), "d_loss"),
        lambda d: S.run_all(d.drop(columns="pred_forget"), {"epochs_per_task": 12, "window": 3}),
    ],
)
def test_missing_column_is_a_one_line_value_error(call):
    d = S.synthetic_deltas(n_orders=1, n_classes=4, n_per_class=10)
    with pytest.raises(ValueError, match="missing column") as err:
        call(d)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda d: S.tails(d, 0.1, "d_loss"),
        lambda d: S.mediation(d, "memo", "align_cos", "d_loss", sims=10),
        lambda d: S.run_all(d, {"epochs_per_task": 12, "window": 3}),
    ],
)
def test_all_nan_column_is_a_one_line_value_error(call):
    d = S.synthetic_deltas(n_orders=1, n_classes=4, n_per_class=10).assign(d_loss=np.nan)
    with pytest.raises(ValueError, match="no finite values") as err:
        call(d)
    assert "\n" not in str(err.value) and "d_loss" in str(err.value)


def test_other_bad_inputs():
    df = pd.DataFrame({"memo": np.arange(10.0), "y": np.arange(10.0)})
    with pytest.raises(ValueError, match="need >= 20"):
        S.decile_effects(df, "memo", "y", n_deciles=10, n_boot=10)
    with pytest.raises(ValueError, match="must differ"):
        S.mediation(df, "memo", "memo", "y")
    with pytest.raises(ValueError, match="epochs_per_task"):
        S.run_all(S.synthetic_deltas(n_orders=1, n_classes=4, n_per_class=10), {"window": 3})
    two = cell_table()
    two.loc[1, "label"] = 99
    two.loc[1, "sample_id"] = two.loc[0, "sample_id"]
    with pytest.raises(ValueError, match="more than one label"):
        resampling.Universe.of(two)
    with pytest.raises(ValueError, match="primary condition"):
        S.accuracy_differences(S.synthetic_summary(n_orders=2), {**S.PRIMARY, "ordering": "ascending"})


def test_cell_keys_do_not_depend_on_row_order():
    df = two_order_table(seed=3)
    a = resampling.resample(df, S.CONDITION_KEYS + KEYS, ["y"], 5, 0, np.random.default_rng(0))
    b = resampling.resample(df.iloc[::-1], S.CONDITION_KEYS + KEYS, ["y"], 5, 0, np.random.default_rng(0))
    pd.testing.assert_frame_equal(a.rows, b.rows)
    np.testing.assert_allclose(a.estimate, b.estimate)
    for (o, bd), e in zip(a.rows[["order_seed", "boundary"]].itertuples(index=False), a.estimate[:, 0]):
        sub = df[(df.order_seed == o) & (df.boundary == bd)]
        assert e == pytest.approx(stats.spearmanr(sub["memo"], sub["y"]).statistic)


def test_null_of_closed_cells_equals_the_general_computation():
    df = cell_table(seed=6)
    df["z"] = np.round(df["y"] * 0.5 + np.random.default_rng(1).normal(size=len(df)), 1)
    universe = resampling.Universe.of(df)
    cell = resampling.build_cells(df, universe, KEYS, ["y", "z"])[0]
    assert cell.closed
    perm = resampling.within_class_permutations(universe, 7, np.random.default_rng(2))
    pos = np.full(len(universe.sample_id), -1)
    pos[cell.idx] = np.arange(len(cell.idx))
    base = cell.memo_rank.ranks(np.ones((len(cell.idx), 1)))[:, 0]
    xr = base[pos[perm[:, cell.idx].T]]
    fast = resampling._null_stats(cell, xr)
    slow = resampling._cell_batch(cell, np.ones(xr.shape), memo_ranks=xr)
    np.testing.assert_allclose(fast, slow, atol=1e-10)


def test_stats_cost_model_counts_the_old_class_rows_and_grows_with_draws_rows_and_threads():
    from memplast import stats_cost

    # the measured paper-size table: 5 orders, 100 classes in 20 tasks of 5, 450 per class, 2 kinds
    assert stats_cost.old_rows(5, 5, 20, 450) == stats_cost.ROWS_MEASURED
    small = S.synthetic_deltas(n_orders=2, n_classes=8, classes_per_task=2, n_per_class=10, seed=0)
    assert stats_cost.old_rows(2, 2, 4, 10) == int(small["is_old"].sum())
    rows = stats_cost.ROWS_MEASURED
    one = stats_cost.runtime_minutes(rows, 2000, 2000, 1)
    assert stats_cost.runtime_minutes(rows, 2000, 2000, 2) < one < stats_cost.runtime_minutes(rows, 4000, 2000, 1)
    assert stats_cost.runtime_minutes(rows, 2000, 0, 2, effects=False) < stats_cost.runtime_minutes(rows, 2000, 2000, 2)
    assert stats_cost.mem_mb(2 * rows, 2) > stats_cost.mem_mb(rows, 2) >= 2 * stats_cost.PEAK_MB
