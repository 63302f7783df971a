"""Tests for memplast.stats: agreement with scipy/statsmodels called directly, planted effects
recovered, CI coverage, documented table schemas, and clear errors on bad input."""

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.multitest import multipletests

from memplast import stats as S


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


@pytest.fixture(scope="module")
def demo():
    deltas = S.synthetic_deltas(n_orders=2, n_classes=8, classes_per_task=2, n_per_class=40, seed=1)
    summary = S.synthetic_summary(n_orders=3)
    cfg = dict(seed=0, n_boot=200, ci_level=0.95, n_permutations=200, tail_quantile=0.05, n_deciles=5,
               mediation_sims=30, outcomes=list(S.DEFAULT_OUTCOMES), epochs_per_task=12, window=3,
               taus=[0.0, 0.001, 0.01], primary=S.PRIMARY)
    return deltas, summary, cfg, S.run_all(deltas, summary, cfg)


# --------------------------------------------------------------------------- correlations

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
        (x, y), lambda a, b: stats.spearmanr(a, b).statistic, paired=True, vectorized=False,
        n_resamples=300, method="BCa", rng=np.random.default_rng(11)).confidence_interval
    assert out["ci_method"] == "BCa"
    assert out["spearman_ci_low"] == pytest.approx(direct.low, abs=1e-12)
    assert out["spearman_ci_high"] == pytest.approx(direct.high, abs=1e-12)


def test_fast_average_ranks_equal_rankdata():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 7, size=(50, 40)).astype(float)
    codes = np.unique(values, return_inverse=True)[1].reshape(values.shape)
    np.testing.assert_allclose(S._average_ranks(codes), stats.rankdata(values, axis=-1))


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


# --------------------------------------------------------------------------- partial Spearman

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


# --------------------------------------------------------------------------- per boundary

def test_per_boundary_rows_columns_and_values(demo):
    deltas, _, _, out = demo
    pb = out["per_boundary"]
    assert list(pb.columns[: len(S.PER_BOUNDARY_COLUMNS)]) == S.PER_BOUNDARY_COLUMNS
    assert {"spearman_p_bh", "partial_spearman_p_bh"} <= set(pb.columns)
    n_groups = deltas[deltas.is_old].groupby(S.RUN_KEYS + ["kind", "boundary"]).ngroups
    assert len(pb) == n_groups * len(S.DEFAULT_OUTCOMES)
    row = pb[(pb.order_seed == 1) & (pb.kind == "windowed") & (pb.boundary == 2) & (pb.outcome == "d_log_grad")].iloc[0]
    sub = deltas[(deltas.order_seed == 1) & (deltas.kind == "windowed") & (deltas.boundary == 2) & deltas.is_old]
    sub = sub.dropna(subset=["d_log_grad"])
    assert row["n"] == len(sub) < (deltas.is_old & (deltas.order_seed == 1) & (deltas.kind == "windowed") & (deltas.boundary == 2)).sum()
    assert row["spearman_r"] == pytest.approx(stats.spearmanr(sub["memo"], sub["d_log_grad"]).statistic)
    # planted: memo raises d_loss everywhere
    assert (pb[pb.outcome == "d_loss"]["spearman_r"] > 0.2).all()


def test_per_boundary_is_deterministic_given_seed():
    deltas = S.synthetic_deltas(n_orders=1, n_classes=4, n_per_class=20, seed=4)
    a = S.per_boundary(deltas, ["memo"], ["d_loss"], n_boot=100, seed=7)
    b = S.per_boundary(deltas.sample(frac=1, random_state=0), ["memo"], ["d_loss"], n_boot=100, seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = S.per_boundary(deltas, ["memo"], ["d_loss"], n_boot=100, seed=8)
    assert not np.allclose(a["spearman_ci_low"], c["spearman_ci_low"])


# --------------------------------------------------------------------------- models

def test_ols_cluster_and_mixedlm_match_statsmodels_formulas():
    deltas = S.synthetic_deltas(n_orders=2, n_classes=6, n_per_class=30, seed=2)
    out = S.pooled_models(deltas, ["memo"], ["d_loss"], ["immediate"], ci_level=0.9)
    old = deltas[deltas.is_old & (deltas.kind == "immediate")].dropna(subset=["d_loss"])
    for scope, data, extra in (("run", old[old.order_seed == 0], ""), ("pooled", old, " + C(order_seed)")):
        data = data.reset_index(drop=True)
        ols = smf.ols("d_loss ~ memo + loss_t + C(label) + C(boundary)" + extra, data).fit(
            cov_type="cluster", cov_kwds={"groups": data["sample_id"]})
        row = out[(out.scope == scope) & (out.model == "ols_cluster") & (out.order_seed.fillna(0) == 0)].iloc[0]
        assert row["coef"] == pytest.approx(ols.params["memo"])
        assert row["se"] == pytest.approx(ols.bse["memo"])
        assert row["p"] == pytest.approx(ols.pvalues["memo"])
        assert row["ci_low"] == pytest.approx(ols.conf_int(0.1).loc["memo", 0])
        assert row["n"] == len(data) and row["n_groups"] == data["sample_id"].nunique()
        mixed = smf.mixedlm("d_loss ~ memo + loss_t + C(boundary)" + extra, data, groups=data["label"]).fit(reml=True)
        row = out[(out.scope == scope) & (out.model == "mixedlm") & (out.order_seed.fillna(0) == 0)].iloc[0]
        assert row["coef"] == pytest.approx(mixed.fe_params["memo"], rel=1e-4)
        assert row["se"] == pytest.approx(mixed.bse_fe["memo"], rel=1e-3)
        assert row["converged"] == mixed.converged
    assert set(out.scope) == {"run", "pooled"} and out[out.scope == "pooled"].order_seed.isna().all()
    assert list(out.columns) == S.POOLED_MODEL_COLUMNS


# --------------------------------------------------------------------------- multiple testing, pooling

def test_bh_matches_multipletests_and_keeps_nans():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.2, 0.001])
    out = S.bh(p)
    keep = ~np.isnan(p)
    np.testing.assert_allclose(out[keep], multipletests(p[keep], method="fdr_bh")[1])
    assert np.isnan(out[2])
    table = pd.DataFrame({"fam": ["a", "a", "b", "b", "b", "a"], "p": p})
    adjusted = S.add_bh(table, ["fam"])
    for fam, g in table.groupby("fam"):
        np.testing.assert_allclose(adjusted.loc[g.index, "p_bh"], S.bh(g["p"]))
    assert not np.allclose(adjusted["p_bh"].to_numpy()[keep], out[keep])  # families matter


def test_fisher_z_pool_on_hand_numbers():
    out = S.fisher_z_pool([0.3, 0.5, 0.1], [53, 103, 28], ci_level=0.95)
    z = [math.atanh(0.3), math.atanh(0.5), math.atanh(0.1)]
    w = [50, 100, 25]
    zbar = (50 * z[0] + 100 * z[1] + 25 * z[2]) / 175
    se = 1 / math.sqrt(175)
    q = 50 * (z[0] - zbar) ** 2 + 100 * (z[1] - zbar) ** 2 + 25 * (z[2] - zbar) ** 2
    assert out["k"] == 3 and out["n_total"] == 184
    assert out["r_pooled"] == pytest.approx(math.tanh(zbar))
    assert out["se"] == pytest.approx(se)
    assert out["ci_low"] == pytest.approx(math.tanh(zbar - 1.959963984540054 * se))
    assert out["ci_high"] == pytest.approx(math.tanh(zbar + 1.959963984540054 * se))
    assert out["p"] == pytest.approx(math.erfc(abs(zbar) / se / math.sqrt(2)))
    assert out["Q"] == pytest.approx(q) and out["Q_df"] == 2
    assert out["Q_p"] == pytest.approx(math.exp(-q / 2))  # chi2 with 2 df: sf = exp(-q/2)
    assert out["I2"] == pytest.approx(max(0, (q - 2) / q))
    assert sum(w) == 175
    same = S.fisher_z_pool([0.4, 0.4], [50, 80])
    assert same["Q"] == pytest.approx(0) and same["I2"] == 0
    one = S.fisher_z_pool([0.4, np.nan], [50, 80])
    assert one["k"] == 1 and np.isnan(one["I2"])


# --------------------------------------------------------------------------- trend

def test_boundary_trend_exact_permutation_and_non_overlapping_windows():
    rows = [{"order_seed": 0, "kind": kind, "outcome": "d_loss", "boundary": b, "spearman_r": 0.1 * b}
            for kind in ("immediate", "windowed") for b in range(8)]
    table = pd.DataFrame(rows)
    out = S.boundary_trend(table, epochs_per_task=10, window=10, n_permutations=5000, seed=0).set_index("kind")
    assert out.loc["immediate", "stride"] == 1 and out.loc["immediate", "n_boundaries"] == 8
    assert out.loc["windowed", "stride"] == 2 and out.loc["windowed", "boundaries_used"] == "0,2,4,6"
    assert out.loc["windowed", "trend_rho"] == pytest.approx(1.0)
    assert out.loc["windowed", "p"] == pytest.approx(2 / 24)  # exact: all 4! orders
    wide = S.boundary_trend(table, epochs_per_task=10, window=12, n_permutations=100, seed=0).set_index("kind")
    assert wide.loc["windowed", "stride"] == 3 and wide.loc["windowed", "boundaries_used"] == "0,3,6"
    flat = S.boundary_trend(table.assign(spearman_r=0.3), 10, 5, 100, 0)
    assert flat["trend_rho"].isna().all()


# --------------------------------------------------------------------------- deciles, tails

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
    b0 = pd.DataFrame({"sample_id": range(8), "boundary": 0,
                       "score": [5, 9, 9, 1, 0, 2, 3, 4], "memo": [1, 8, 7, 2, 3, 4, 5, 6]})
    b1 = pd.DataFrame({"sample_id": range(10), "boundary": 1,
                       "score": [9, 1, 8, 1, 0, 2, 3, 7, 0, 0], "memo": [8, 1, 2, 3, 4, 5, 6, 9, 7, 10]})
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


# --------------------------------------------------------------------------- mediation

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


# --------------------------------------------------------------------------- cross-sample

def test_cross_sample_means_and_spearman():
    rows = []
    for b, (new_memo, old_loss) in enumerate([(1.0, 0.1), (3.0, 0.4), (2.0, 0.2), (4.0, 0.9)]):
        rows += [{"boundary": b, "is_old": False, "memo": new_memo + d, "d_loss": -5.0} for d in (-0.5, 0.5)]
        rows += [{"boundary": b, "is_old": True, "memo": 1.0, "d_loss": old_loss + d} for d in (-0.1, 0.1, np.nan)]
    df = pd.DataFrame(rows).assign(order_seed=0, filter="none", ordering="random", weighting="none",
                                    algorithm="base", kind="windowed")
    out = S.cross_sample(df, kinds=["windowed"])
    assert list(out.columns) == S.CROSS_SAMPLE_COLUMNS
    np.testing.assert_allclose(out["new_memo_mean"], [1, 3, 2, 4])
    np.testing.assert_allclose(out["old_d_loss_mean"], [0.1, 0.4, 0.2, 0.9])
    assert (out["n_old"] == 2).all() and (out["n_new"] == 2).all()
    assert out["spearman_r"].iloc[0] == pytest.approx(1.0) and out["n_boundaries"].iloc[0] == 4
    with pytest.raises(ValueError, match="no new-class rows"):
        S.cross_sample(df[df.is_old])


# --------------------------------------------------------------------------- conditions

def test_compare_conditions_switches_from_descriptive_to_wilcoxon_at_five_pairs():
    other = {**S.PRIMARY, "filter": "per_class-q0.9"}
    conds = [S.PRIMARY, other, {**S.PRIMARY, "algorithm": "retrained"}]
    key = tuple(other[k] for k in S.CONDITION_KEYS)
    for n_orders, tested in ((4, False), (5, True)):
        summary = S.synthetic_summary(n_orders=n_orders, conditions=conds, shift={key: 0.05}, seed=n_orders)
        out = S.compare_conditions(summary, S.PRIMARY)
        assert list(out.columns) == S.CONDITIONS_COLUMNS
        row = out[(out["filter"] == "per_class-q0.9") & (out.metric == "final_acc")].iloc[0]
        assert row["n_pairs"] == n_orders
        assert row["mean_diff"] == pytest.approx(0.05, abs=0.02)
        runs = S.condition_metrics(summary)
        a = runs[runs["filter"] == "per_class-q0.9"].sort_values("order_seed")["final_acc"].to_numpy()
        b = runs[(runs["filter"] == "none") & (runs.algorithm == "base")].sort_values("order_seed")["final_acc"].to_numpy()
        if tested:
            assert row["test"] == "wilcoxon"
            assert row["p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
            assert row["statistic"] == pytest.approx(stats.wilcoxon(a, b).statistic)
        else:
            assert row["test"].startswith("descriptive") and np.isnan(row["p"])
        assert (out[out.is_primary]["test"] == "primary").all()
    # relative accuracy: final accuracy over the retrained run's of the same order
    base = runs[(runs["filter"] == "none") & (runs.algorithm == "base")].set_index("order_seed")
    ref = runs[runs.algorithm == "retrained"].set_index("order_seed")
    np.testing.assert_allclose(base["rel_acc"], base["final_acc"] / ref["final_acc"])
    assert runs.loc[runs.algorithm == "retrained", "rel_acc"].eq(1).all()
    summary = S.synthetic_summary(n_orders=3)
    with pytest.raises(ValueError, match="primary condition"):
        S.compare_conditions(summary, {**S.PRIMARY, "ordering": "ascending"})


# --------------------------------------------------------------------------- legacy table, run_all

def test_windowed_correlation_results_legacy_schema_and_signs():
    deltas = S.synthetic_deltas(n_orders=1, n_classes=6, n_per_class=30, seed=3)
    out = S.windowed_correlation_results(deltas, tau=0.01)
    assert list(out.columns) == S.windowed_correlation_columns()
    assert list(out.columns)[:3] == ["boundary", "memo_delta_loss_pearson_r", "memo_delta_loss_pearson_p"]
    assert out.columns[-1] == "n_samples" and len(out) == deltas["boundary"].nunique()
    sub = deltas[(deltas.kind == "windowed") & deltas.is_old & (deltas.boundary == 1)].dropna(
        subset=["memo", "d_loss", "grad_drop", "d_dormant_t0.01"])
    row = out[out.boundary == 1].iloc[0]
    assert row["n_samples"] == len(sub)
    assert row["memo_delta_grad_norm_spearman_r"] == pytest.approx(-stats.spearmanr(sub["memo"], sub["grad_drop"]).statistic)
    assert row["memo_delta_dormant_kendall_r"] == pytest.approx(stats.kendalltau(sub["memo"], sub["d_dormant_t0.01"]).statistic)
    two = S.windowed_correlation_results(S.synthetic_deltas(n_orders=2, n_classes=4, n_per_class=20), tau=0)
    assert list(two.columns) == ["order_seed"] + S.windowed_correlation_columns()


def test_run_all_writes_every_documented_table(demo):
    _, _, _, out = demo
    assert set(out) == set(S.TABLES)
    expected = {
        "pooled_models": S.POOLED_MODEL_COLUMNS + ["p_bh"],
        "pooled_over_orders": S.POOLED_OVER_ORDERS_COLUMNS + ["p_bh"],
        "cross_sample": S.CROSS_SAMPLE_COLUMNS,
        "conditions": S.CONDITIONS_COLUMNS + ["p_bh"],
        "windowed_correlation_results": ["order_seed"] + S.windowed_correlation_columns(),
    }
    for name, columns in expected.items():
        assert list(out[name].columns) == columns, name
    assert set(S.TREND_COLUMNS + ["scope", "p_bh"]) <= set(out["trend"].columns)
    assert set(S.DECILE_COLUMNS + ["outcome", "boundary", "p_bh"]) <= set(out["deciles"].columns)
    assert set(S.TAIL_COLUMNS + ["score", "direction", "p_bh"]) <= set(out["tails"].columns)
    assert set(S.MEDIATION_COLUMNS + ["mediator", "acme_p_bh"]) <= set(out["mediation"].columns)
    for name, table in out.items():
        assert len(table) > 0, name


def test_run_all_recovers_planted_effects(demo):
    _, _, _, out = demo
    pooled = out["pooled_over_orders"]
    overall = pooled[(pooled.level == "overall") & (pooled.outcome == "d_loss")]
    assert (overall["r_pooled"] > 0.3).all() and (overall["p_bh"] < 1e-3).all()
    assert (overall["k"] == 2).all()
    med = out["mediation"]
    dorm = med[med.mediator == "d_dormant_t0.01"]
    assert (dorm["acme"] > 0).mean() > 0.9  # planted path memo -> d_dormant -> d_loss
    models = out["pooled_models"]
    assert (models[(models.outcome == "d_loss") & (models.scope == "pooled")]["coef"] > 0).all()
    deciles = out["deciles"]
    diff = deciles[(deciles.term == "top_minus_bottom") & (deciles.outcome == "d_loss")]
    assert (diff["median"] > 0).all()
    tails = out["tails"]
    assert tails[tails.score == "d_loss"]["enrichment"].mean() > 1.5


def test_synthetic_deltas_schema():
    d = S.synthetic_deltas(n_orders=2, n_classes=6, n_per_class=10)
    required = S.RUN_KEYS + ["sample_id", "label", "boundary", "is_old", "noisy", "kind", "memo", "memo_pct", "loss_t",
                             "d_loss", "d_log_grad", "grad_drop", "d_input_grad", "d_margin", "d_dormant_t0",
                             "d_dormant_t0.001", "d_dormant_t0.01", "drift", "align_dot", "align_cos", "pred_forget"]
    assert set(required) <= set(d.columns)
    assert set(d["kind"]) == set(S.KINDS) and d["is_old"].any() and (~d["is_old"]).any()
    wide = d.pivot_table(index=["order_seed", "sample_id", "boundary"], columns="kind", values="align_cos")
    np.testing.assert_allclose(wide["immediate"], wide["windowed"])
    assert d["d_log_grad"].isna().any()
    assert (d["memo"] > 0).all() and d["memo"].mean() > d["memo"].median() and d["memo"].skew() > 1  # heavy tail


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call", [
    lambda d: S.per_boundary(d.drop(columns="loss_t"), ["memo"], ["d_loss"], n_boot=10),
    lambda d: S.pooled_models(d.drop(columns="label"), ["memo"], ["d_loss"]),
    lambda d: S.windowed_correlation_results(d.drop(columns="grad_drop")),
    lambda d: S.tails(d.drop(columns="memo"), 0.1, "d_loss"),
    lambda d: S.run_all(d.drop(columns="pred_forget"), None, {"epochs_per_task": 12, "window": 3}),
])
def test_missing_column_is_a_one_line_value_error(call):
    d = S.synthetic_deltas(n_orders=1, n_classes=4, n_per_class=10)
    with pytest.raises(ValueError, match="missing column") as err:
        call(d)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("call", [
    lambda d: S.per_boundary(d, ["memo"], ["d_loss"], n_boot=10),
    lambda d: S.pooled_models(d, ["memo"], ["d_loss"]),
    lambda d: S.tails(d, 0.1, "d_loss"),
    lambda d: S.mediation(d, "memo", "align_cos", "d_loss", sims=10),
    lambda d: S.run_all(d, None, {"epochs_per_task": 12, "window": 3}),
])
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
        S.run_all(S.synthetic_deltas(n_orders=1, n_classes=4, n_per_class=10), None, {"window": 3})


def test_fisher_z_random_effects_follow_dersimonian_laird():
    r, n = np.array([0.3, 0.5, 0.1]), np.array([53, 103, 28])
    out = S.fisher_z_pool(r, n, ci_level=0.95)
    z, w = np.arctanh(r), n - 3.0
    z_fe = np.sum(w * z) / w.sum()
    q = np.sum(w * (z - z_fe) ** 2)
    tau2 = max(0.0, (q - 2) / (w.sum() - np.sum(w**2) / w.sum()))
    w_re = 1 / (1 / w + tau2)
    z_re = np.sum(w_re * z) / w_re.sum()
    se_re = 1 / np.sqrt(w_re.sum())
    assert out["tau2"] == pytest.approx(tau2)
    assert out["r_pooled_re"] == pytest.approx(np.tanh(z_re))
    assert out["ci_low_re"] == pytest.approx(np.tanh(z_re - 1.959964 * se_re), rel=1e-5)
    assert out["ci_high_re"] - out["ci_low_re"] > out["ci_high"] - out["ci_low"]  # heterogeneity widens it


def test_random_effects_equal_fixed_effects_without_heterogeneity():
    out = S.fisher_z_pool([0.15, 0.17], [941, 930])
    assert out["tau2"] == 0
    assert out["ci_low_re"] == pytest.approx(out["ci_low"]) and out["ci_high_re"] == pytest.approx(out["ci_high"])
