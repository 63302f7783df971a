"""Tests for memplast.stats: the sample bootstrap against explicit resampling, scipy/statsmodels
called directly, planted effects recovered, documented table schemas, clear errors on bad input.
(Coverage and rejection rates of the pooled quantities: tests/test_calibration.py.)"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from test_stats_resampling import cell_table

from memplast import stats as S
from memplast.stats import correlation, resampling


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


@pytest.mark.parametrize("values", [[0.0, 1.0, 1.0, 3.0, 7.0], [2.0, -1.0, 0.5, 0.5], [4.0, 1.0, 2.0, 8.0, 3.0, 5.0]])
def test_bootstrap_medians_have_the_exact_resample_median_distribution(values):
    """Against every one of the n^n equally likely resamples (odd and even n, with ties): the
    probability of each median value agrees within 4.5 binomial SEs over 200,000 draws."""
    import itertools

    n = len(values)
    medians = np.median(np.array(values)[np.array(list(itertools.product(range(n), repeat=n)))], axis=1)
    support, counts = np.unique(medians, return_counts=True)
    exact = counts / counts.sum()
    draws = S.bootstrap_medians(np.array(values), 200_000, np.random.default_rng(3))
    assert np.isin(draws, support).all()  # only values a resample's median can take
    freq = np.array([(draws == v).mean() for v in support])
    se = np.sqrt(exact * (1 - exact) / len(draws))
    assert (np.abs(freq - exact) <= 4.5 * se + 1e-12).all(), np.c_[support, exact, freq]


def test_decile_cis_agree_with_scipy_bootstrap_of_explicit_resamples():
    """The same percentile CIs as scipy.stats.bootstrap on explicit resamples, up to Monte Carlo
    error (20,000 draws each: endpoints within 0.05 of the outcome's SD)."""
    table = planted_shift_table(2)
    out = S.decile_effects(table, "memo", "y", n_deciles=5, n_boot=20_000, seed=4)
    dec = pd.qcut(table["memo"].rank(method="first"), 5, labels=False).to_numpy()
    groups = [table["y"].to_numpy()[dec == d] for d in range(5)]
    want = stats.bootstrap(
        groups,
        lambda *g, axis: np.stack(
            [np.median(a, axis=axis) for a in g] + [np.median(g[-1], axis=axis) - np.median(g[0], axis=axis)]
        ),
        n_resamples=20_000,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    np.testing.assert_allclose(out["ci_low"], want.low, atol=0.05 * table["y"].std())
    np.testing.assert_allclose(out["ci_high"], want.high, atol=0.05 * table["y"].std())


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


@pytest.mark.parametrize("covariates", [[], ["c"]])
def test_mediation_equals_statsmodels_mediation_bootstrap(covariates):
    """The closed form draws what statsmodels' Mediation.fit(method="bootstrap") draws, in its order."""
    import warnings

    import statsmodels.api as sm
    from statsmodels.stats.mediation import Mediation

    rng = np.random.default_rng(11)
    n = 400
    df = pd.DataFrame({"x": rng.random(n), "c": rng.normal(size=n)})
    df["m"] = 0.08 * df["x"] + 0.2 * df["c"] + 0.5 * rng.normal(size=n)  # weak: ACME p inside (0, 1)
    df["y"] = 0.2 * df["x"] + 0.6 * df["m"] - 0.3 * df["c"] + 0.5 * rng.normal(size=n)
    out = S.mediation(df, "x", "m", "y", sims=60, seed=5, covariates=covariates, ci_level=0.9)
    exog_m = sm.add_constant(df[["x"] + covariates])
    exog_y = exog_m.assign(m=df["m"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = Mediation(sm.OLS(df["y"], exog_y), sm.OLS(df["m"], exog_m), "x", "m")
        table = fit.fit(method="bootstrap", n_rep=60, rng=np.random.default_rng(5)).summary(alpha=0.1)
    labels = {
        "acme": "ACME (average)",
        "ade": "ADE (average)",
        "total": "Total effect",
        "prop_mediated": "Prop. mediated (average)",
    }
    for key, label in labels.items():
        want = table.loc[label].to_numpy(float)
        got = [out[key], out[f"{key}_ci_low"], out[f"{key}_ci_high"], out[f"{key}_p"]]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=key)
    assert 0 < out["acme_p"] < 1  # a p that is not at the resolution bound, so the signs were compared


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
