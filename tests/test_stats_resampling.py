"""The class-stratified sample bootstrap and within-class permutations (memplast.stats.resampling,
pooling): every replicate against explicit resampling with scipy/statsmodels, the pooled contrasts,
the random-effects and OLS rows."""

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats

from memplast import stats as S
from memplast.stats import pooling, resampling


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


def test_compiled_cell_sums_equal_the_matrix_formulation_bit_for_bit():
    """rank_kernels.cell_sums (one pass per variable and draw, int32 ranks, float64 sums in any
    order) gives exactly the statistics of the matrix formulation (rank matrices and numpy.matmul),
    on a cell with heavy ties, a class missing rows, several outcomes and draws with zero weights."""
    df = cell_table(n_classes=6, n_per_class=50, seed=11)
    df["z"] = np.round(df["y"] * 0.3 + np.random.default_rng(2).normal(size=len(df)), 0)  # ~10 tie groups
    df.loc[df.index[:7], "z"] = np.nan  # class 0 incomplete for z: its own cell, not closed
    universe = resampling.Universe.of(df)
    cells = resampling.build_cells(df, universe, KEYS, ["y", "z"])
    assert len(cells) == 2 and not all(c.closed for c in cells)
    counts = resampling.stratified_counts(universe, 25, np.random.default_rng(3))
    for cell in cells:
        fast = resampling._cell_draws(cell, counts)
        reference = resampling._cell_batch(cell, counts[:, cell.idx].T)
        np.testing.assert_array_equal(fast, reference)
        assert np.isfinite(fast).all()


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
    fixed = resampling.NullFixed.of(cell)
    fast = resampling._null_stats(cell, xr.T, fixed)
    slow = resampling._cell_batch(cell, np.ones(xr.shape), memo_ranks=xr)
    np.testing.assert_allclose(fast, slow, atol=1e-10)
    # closed: the memo moments of the identity permutation serve every permutation
    sxx, txx, means = resampling.memo_moments(base[None], cell, fixed)
    closed = resampling._null_stats(cell, xr.T, fixed, (sxx[0], txx[0], means[0]))
    np.testing.assert_allclose(closed, fast, rtol=0, atol=1e-14)


def test_build_cells_names_a_cell_key_with_missing_values():
    df = cell_table(seed=3).astype({"boundary": float})
    df.loc[df.index[5], "boundary"] = np.nan
    with pytest.raises(ValueError, match="'boundary' has missing values"):
        resampling.build_cells(df, resampling.Universe.of(df), KEYS, ["y"])
