"""Statistics: does per-sample memorization predict per-sample loss of plasticity?

Input is the pooled boundary-deltas table (one row per run, sample, boundary and kind; see
design.md §5) and the per-task run summaries. Old-class samples (``is_old``) are the subject.
Every function drops NaNs per analysis and reports the n it used. scipy and statsmodels do the
estimation; this module only arranges data, seeds and tables.

Seeding: every resampling analysis draws from ``numpy.random.default_rng([seed, crc32(key)])``
where ``key`` names the analysed group, so a table does not depend on the order groups are
processed in, and the same config gives the same numbers.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.mediation import Mediation
from statsmodels.stats.multitest import multipletests

log = logging.getLogger("memplast.stats")

RUN_KEYS = ["order_seed", "filter", "ordering", "weighting", "algorithm"]
CONDITION_KEYS = RUN_KEYS[1:]
KINDS = ("immediate", "windowed")
DEFAULT_OUTCOMES = ("d_loss", "d_log_grad", "grad_drop", "d_dormant_t0.01", "align_cos", "pred_forget")
PRIMARY = {"filter": "none", "ordering": "random", "weighting": "none", "algorithm": "base"}
MIN_N = 5  # fewest finite pairs a per-group correlation is computed from (else NaN row)
BCA_MAX_N = 5000  # above this n the BCa jackknife is too costly; percentile intervals are used
_ELEMENTS_PER_BATCH = 5_000_000  # bootstrap batch size cap (resamples x n) to bound memory

# Sign that makes "larger = more plasticity lost" for the tails analysis (positive = worse).
PLASTICITY_LOSS_SIGN = {
    "d_loss": 1, "grad_drop": 1, "d_log_grad": -1, "d_margin": -1, "d_drift": 1,
    "pred_forget": 1, "align_dot": -1, "align_cos": -1,
}

TABLES = (
    "per_boundary", "pooled_models", "pooled_over_orders", "trend", "deciles", "tails",
    "mediation", "cross_sample", "conditions", "windowed_correlation_results",
)

CORRELATION_COLUMNS = [
    "n", "pearson_r", "pearson_p", "pearson_ci_low", "pearson_ci_high",
    "spearman_r", "spearman_p", "spearman_ci_low", "spearman_ci_high",
    "kendall_tau", "kendall_p", "ci_method",
]
PER_BOUNDARY_COLUMNS = (
    RUN_KEYS + ["memo_source", "outcome", "kind", "boundary"] + CORRELATION_COLUMNS
    + ["partial_spearman_r", "partial_spearman_p", "partial_n", "partial_df"]
)
POOLED_MODEL_COLUMNS = (
    ["scope"] + RUN_KEYS + ["memo_source", "outcome", "kind", "model", "coef", "se", "ci_low",
                            "ci_high", "p", "n", "n_groups", "n_orders", "memo_sd", "converged"]
)
FISHER_COLUMNS = ["k", "n_total", "r_pooled", "ci_low", "ci_high", "z", "se", "p", "Q", "Q_df", "Q_p", "I2",
                  "tau2", "r_pooled_re", "ci_low_re", "ci_high_re", "p_re"]
POOLED_OVER_ORDERS_COLUMNS = CONDITION_KEYS + ["memo_source", "outcome", "kind", "level", "boundary"] + FISHER_COLUMNS
TREND_COLUMNS = ["coef", "n_boundaries", "boundaries_used", "stride", "trend_rho", "p"]
DECILE_COLUMNS = ["term", "decile", "n", "memo_min", "memo_max", "median", "ci_low", "ci_high", "p"]
TAIL_COLUMNS = [
    "boundary", "n", "k", "memo_threshold", "n_high", "n_tail_high", "p_high_tail", "p_high_all",
    "enrichment", "odds_ratio", "p", "jaccard_prev",
]
MEDIATION_EFFECTS = ("acme", "ade", "total", "prop_mediated")
MEDIATION_COLUMNS = ["n"] + [f"{e}{s}" for e in MEDIATION_EFFECTS for s in ("", "_ci_low", "_ci_high", "_p")]
CROSS_SAMPLE_COLUMNS = RUN_KEYS + [
    "kind", "boundary", "n_new", "new_memo_mean", "n_old", "old_d_loss_mean",
    "spearman_r", "spearman_p", "n_boundaries",
]
CONDITION_METRICS = ("final_acc", "auc_acc", "rel_acc", "final_dormant")
CONDITIONS_COLUMNS = CONDITION_KEYS + [
    "metric", "is_primary", "n_pairs", "mean", "primary_mean", "mean_diff", "median_diff",
    "statistic", "p", "test",
]
LEGACY_DELTAS = {"loss": "d_loss", "grad_norm": "-grad_drop", "dormant": "d_dormant_t{tau}"}


# --------------------------------------------------------------------------- helpers

def _rng(seed, *key) -> np.random.Generator:
    """Generator seeded by ``seed`` and a stable hash of ``key`` (order-independent seeding)."""
    tag = zlib.crc32("|".join(str(k) for k in key).encode())
    return np.random.default_rng([int(seed), tag])


def _require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise a one-line ValueError naming the columns of ``columns`` missing from ``df``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; table has {list(df.columns)}")


def _require_finite(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise a one-line ValueError if any of ``columns`` has no finite value in ``df``."""
    for c in columns:
        if not np.isfinite(pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)).any():
            raise ValueError(f"{what}: column {c!r} has no finite values ({len(df)} rows)")


def _old(deltas: pd.DataFrame) -> pd.DataFrame:
    return deltas[deltas["is_old"].astype(bool)]


def _finite(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Rows of ``df`` where every column in ``columns`` is finite (NaN and +-inf dropped)."""
    values = df[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return df[np.isfinite(values).all(axis=1)]


def _key_dict(keys: Sequence[str], values) -> dict:
    values = values if isinstance(values, tuple) else (values,)
    return dict(zip(keys, values))


def _pearson_along(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=axis) / np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))


def _average_ranks(codes: np.ndarray) -> np.ndarray:
    """Average (tie-aware, 1-based) ranks along the last axis of integer level codes.

    ``codes`` holds dense ranks (0..L-1) of the original values, so resampled rows only need a
    counting pass instead of a sort: rank = #smaller + (#equal + 1) / 2, as in rankdata.
    """
    shape = codes.shape
    flat = codes.reshape(-1, shape[-1]).astype(np.int64)
    n_levels = int(flat.max()) + 1
    rows = flat.shape[0]
    offsets = n_levels * np.arange(rows, dtype=np.int64)[:, None]
    counts = np.bincount((flat + offsets).ravel(), minlength=rows * n_levels).reshape(rows, n_levels)
    below = np.cumsum(counts, axis=1) - counts
    avg = below + (counts + 1) / 2.0
    return np.take_along_axis(avg, flat, axis=1).reshape(shape)


def _pearson_spearman_statistic(x, y, cx, cy, axis=-1):
    """Vectorized (Pearson r, Spearman rho) of paired resamples; cx, cy are dense rank codes."""
    x, y, cx, cy = (np.moveaxis(np.asarray(a), axis, -1) for a in (x, y, cx, cy))
    return np.stack([_pearson_along(x, y), _pearson_along(_average_ranks(cx), _average_ranks(cy))])


# --------------------------------------------------------------------------- correlations

def correlations(x, y, n_boot: int = 2000, seed=0, ci_level: float = 0.95) -> dict:
    """Pearson, Spearman and Kendall correlation of paired x, y, with bootstrap CIs.

    Non-finite pairs are dropped; ``n`` is the number of pairs used. p-values are scipy's
    (pearsonr: exact t test; spearmanr: t approximation; kendalltau: exact for small n without
    ties, else normal). CIs for Pearson r and Spearman rho come from one paired
    ``scipy.stats.bootstrap`` over samples (``n_boot`` resamples, seeded by ``seed``, an int or
    a sequence of ints) at confidence ``ci_level``.

    Method: BCa for n <= 5000, percentile above (``ci_method`` says which). BCa corrects the
    bias and skewness of the bootstrap distribution of a correlation (bounded at +-1, skewed
    for |rho| > 0), is second-order accurate, and its jackknife costs only n vectorized
    evaluations at these sizes; beyond 5000 pairs the jackknife is too costly and the sampling
    distribution is close enough to normal that the percentile interval suffices. Spearman
    resamples are ranked with ties averaged, exactly as ``scipy.stats.spearmanr``. If x or y
    is constant, every statistic is NaN. Raises ValueError with fewer than 3 finite pairs.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"correlations: x and y must be 1-d of equal length, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < 3:
        raise ValueError(f"correlations: {n} finite (x, y) pairs; need at least 3")
    method = "BCa" if n <= BCA_MAX_N else "percentile"
    out = dict.fromkeys(CORRELATION_COLUMNS, np.nan)
    out.update(n=n, ci_method=method)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    out["pearson_r"], out["pearson_p"] = (float(v) for v in stats.pearsonr(x, y))
    out["spearman_r"], out["spearman_p"] = (float(v) for v in stats.spearmanr(x, y))
    tau = stats.kendalltau(x, y)
    out["kendall_tau"], out["kendall_p"] = float(tau.statistic), float(tau.pvalue)
    if n_boot > 0:
        cx = np.unique(x, return_inverse=True)[1]
        cy = np.unique(y, return_inverse=True)[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                (x, y, cx, cy), _pearson_spearman_statistic, paired=True, vectorized=True,
                n_resamples=n_boot, confidence_level=ci_level, method=method,
                batch=max(1, _ELEMENTS_PER_BATCH // n), rng=np.random.default_rng(seed),
            )
        lo, hi = res.confidence_interval
        out["pearson_ci_low"], out["spearman_ci_low"] = (float(v) for v in lo)
        out["pearson_ci_high"], out["spearman_ci_high"] = (float(v) for v in hi)
    return out


def partial_spearman(df: pd.DataFrame, x: str, y: str, covariates: Sequence[str] = ("loss_t",),
                     categorical: Sequence[str] = ("label",)) -> dict:
    """Spearman partial correlation of ``x`` and ``y`` given covariates.

    Rows with a non-finite x, y or covariate (or missing category) are dropped. x, y and the
    continuous ``covariates`` are rank-transformed (ties averaged); the ranks of x and of y are
    each residualized by OLS (statsmodels) on an intercept, the covariate ranks and dummies of
    every ``categorical`` column (first level dropped); the partial correlation r is the Pearson
    correlation of the two residual vectors. Its p-value is two-sided from
    t = r sqrt(df / (1 - r^2)) with df = n - 2 - k, k = number of non-redundant covariate columns
    (the OLS model's df_model). Returns dict r, p, n, df.
    """
    covariates, categorical = list(covariates), list(categorical)
    _require(df, [x, y] + covariates + categorical, "partial_spearman")
    data = _finite(df, [x, y] + covariates)
    data = data[data[categorical].notna().all(axis=1)] if categorical else data
    n = len(data)
    out = {"r": np.nan, "p": np.nan, "n": n, "df": np.nan}
    design = pd.DataFrame({f"rank_{c}": stats.rankdata(data[c]) for c in covariates}, index=data.index)
    if categorical:
        dummies = pd.get_dummies(data[categorical].astype(str), drop_first=True, dtype=float)
        design = pd.concat([design, dummies], axis=1)
    design = sm.add_constant(design.to_numpy(dtype=float), has_constant="add")
    if n - design.shape[1] < 2:
        return out
    rx = stats.rankdata(data[x])
    ry = stats.rankdata(data[y])
    fx = sm.OLS(rx, design).fit()
    fy = sm.OLS(ry, design).fit()
    dof = n - 2 - int(round(fx.df_model))
    out["df"] = dof
    ex, ey = fx.resid, fy.resid
    if dof < 1 or np.ptp(ex) < 1e-12 or np.ptp(ey) < 1e-12:
        return out
    r = float(np.clip(np.corrcoef(ex, ey)[0, 1], -1.0, 1.0))
    t = r * math.sqrt(dof / max(1.0 - r * r, 1e-300))
    out.update(r=r, p=float(2 * stats.t.sf(abs(t), dof)))
    return out


def per_boundary(deltas: pd.DataFrame, memo_cols: Sequence[str] = ("memo",),
                 outcomes: Sequence[str] = DEFAULT_OUTCOMES, kinds: Sequence[str] = KINDS,
                 n_boot: int = 2000, seed: int = 0, ci_level: float = 0.95) -> pd.DataFrame:
    """Correlation of each memo source with each outcome, per run, kind and boundary.

    Old-class samples only. One row per (run, memo_source, outcome, kind, boundary) with the
    ``correlations`` columns (n = finite pairs used; bootstrap seeded per row) and the partial
    Spearman controlling for baseline loss ``loss_t`` and class ``label`` (partial_n, partial_df).
    Groups with fewer than 5 finite pairs get NaN statistics and their n. Rows are ordered by
    sample_id before resampling, so the result does not depend on the input row order. Raises
    ValueError if a column is missing or a memo/outcome column has no finite old-sample value.
    """
    memo_cols, outcomes, kinds = list(memo_cols), list(outcomes), list(kinds)
    _require(deltas, RUN_KEYS + ["sample_id", "label", "boundary", "is_old", "kind", "loss_t"]
             + memo_cols + outcomes, "per_boundary")
    old = _old(deltas)
    old = old[old["kind"].isin(kinds)].sort_values("sample_id", kind="stable")  # row order cannot matter
    _require_finite(old, memo_cols + outcomes, "per_boundary (old samples)")
    rows = []
    for key, g in old.groupby(RUN_KEYS + ["kind", "boundary"], sort=True):
        ident = _key_dict(RUN_KEYS + ["kind", "boundary"], key)
        for memo in memo_cols:
            for outcome in outcomes:
                sub = _finite(g, [memo, outcome])
                row = {**ident, "memo_source": memo, "outcome": outcome}
                if len(sub) < MIN_N:
                    row.update(dict.fromkeys(CORRELATION_COLUMNS, np.nan), n=len(sub))
                    row.update(partial_spearman_r=np.nan, partial_spearman_p=np.nan, partial_n=len(sub), partial_df=np.nan)
                else:
                    rng = _rng(seed, "per_boundary", *key, memo, outcome)
                    row.update(correlations(sub[memo], sub[outcome], n_boot, rng.integers(2**32), ci_level))
                    part = partial_spearman(sub, memo, outcome, ["loss_t"], ["label"])
                    row.update(partial_spearman_r=part["r"], partial_spearman_p=part["p"],
                               partial_n=part["n"], partial_df=part["df"])
                rows.append(row)
        log.debug("per_boundary: %s done", ident)
    return pd.DataFrame(rows, columns=PER_BOUNDARY_COLUMNS)


# --------------------------------------------------------------------------- regression models

def _dummies(values: pd.Series, prefix: str) -> pd.DataFrame:
    """Treatment-coded dummies (first level dropped) of a factor; no columns for one level."""
    return pd.get_dummies(values.astype(str), prefix=prefix, drop_first=True, dtype=float)


def _fit_ols_cluster(y: np.ndarray, exog: pd.DataFrame, clusters: np.ndarray, alpha: float) -> dict:
    """OLS of y on exog with sample-clustered covariance; the memo coefficient is column ``x``."""
    res = sm.OLS(y, exog).fit(cov_type="cluster", cov_kwds={"groups": clusters})
    lo, hi = res.conf_int(alpha).loc["x"]
    return {"coef": res.params["x"], "se": res.bse["x"], "ci_low": lo, "ci_high": hi, "p": res.pvalues["x"],
            "n": int(res.nobs), "n_groups": len(np.unique(clusters)), "converged": True}


def _fit_mixedlm(y: np.ndarray, exog: pd.DataFrame, groups: np.ndarray, alpha: float) -> dict:
    """REML MixedLM with a random intercept per group; the memo coefficient is column ``x``."""
    out = {"coef": np.nan, "se": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan,
           "n": len(y), "n_groups": len(np.unique(groups)), "converged": False}
    if out["n_groups"] < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = sm.MixedLM(y, exog, groups=groups).fit(reml=True)
            lo, hi = res.conf_int(alpha).loc["x"]
            out.update(coef=res.fe_params["x"], se=res.bse_fe["x"], ci_low=lo, ci_high=hi, p=res.pvalues["x"],
                       converged=bool(res.converged))
        except (np.linalg.LinAlgError, ValueError) as err:
            log.warning("MixedLM failed (%s); row left NaN", err)
    return out


def pooled_models(deltas: pd.DataFrame, memo_cols: Sequence[str] = ("memo",),
                  outcomes: Sequence[str] = DEFAULT_OUTCOMES, kinds: Sequence[str] = KINDS,
                  ci_level: float = 0.95) -> pd.DataFrame:
    """Regression of each outcome on memo over all boundaries, per run and pooled over orders.

    Old-class samples, rows with a non-finite outcome, memo or loss_t dropped. Two models per
    (scope, memo_source, outcome, kind):

    - ``ols_cluster``: OLS ``outcome ~ memo + loss_t + C(label) + C(boundary)`` with
      cluster-robust (sample_id) covariance, statsmodels ``cov_type="cluster"`` defaults
      (small-sample correction, normal reference); n_groups = clusters.
    - ``mixedlm``: MixedLM ``outcome ~ memo + loss_t + C(boundary)`` with a random intercept per
      class (REML); n_groups = classes; ``converged`` is statsmodels' flag.

    scope ``run``: one fit per run. scope ``pooled``: one fit per condition over all its class
    orders (only if there are >= 2), adding ``C(order_seed)``; order_seed is NA on these rows.
    Factors are treatment-coded (a single-level factor adds nothing); the design matrices are
    built directly (same fit as the formulas, without re-parsing them for every model). The
    memo coefficient is per unit of the memo column (``memo_sd`` = its SD in the fitted rows,
    to rescale); CI at ``ci_level``.
    """
    memo_cols, outcomes, kinds = list(memo_cols), list(outcomes), list(kinds)
    _require(deltas, RUN_KEYS + ["sample_id", "label", "boundary", "is_old", "kind", "loss_t"]
             + memo_cols + outcomes, "pooled_models")
    old = _old(deltas)
    old = old[old["kind"].isin(kinds)]
    _require_finite(old, memo_cols + outcomes, "pooled_models (old samples)")
    alpha = 1 - ci_level
    rows = []
    for cond, cg in old.groupby(CONDITION_KEYS + ["kind"], sort=True):
        ident = _key_dict(CONDITION_KEYS + ["kind"], cond)
        orders = sorted(cg["order_seed"].unique())
        units = [("run", o, cg[cg["order_seed"] == o]) for o in orders]
        if len(orders) >= 2:
            units.append(("pooled", pd.NA, cg))
        for scope, order, data in units:
            for memo in memo_cols:
                for outcome in outcomes:
                    sub = _finite(data, [memo, outcome, "loss_t"])
                    base = {"scope": scope, "order_seed": order, **ident, "memo_source": memo, "outcome": outcome,
                            "n_orders": sub["order_seed"].nunique(), "memo_sd": sub[memo].std()}
                    if len(sub) < MIN_N + 2 or sub[memo].nunique() < 2:
                        for model in ("ols_cluster", "mixedlm"):
                            rows.append({**base, "model": model, "n": len(sub), "converged": False})
                        continue
                    fixed = pd.concat([
                        pd.DataFrame({"const": 1.0, "x": sub[memo].astype(float), "loss_t": sub["loss_t"].astype(float)}),
                        _dummies(sub["boundary"], "boundary"), _dummies(sub["order_seed"], "order"),
                    ], axis=1)
                    y = sub[outcome].to_numpy(float)
                    ols_exog = pd.concat([fixed, _dummies(sub["label"], "label")], axis=1)
                    rows.append({**base, "model": "ols_cluster",
                                 **_fit_ols_cluster(y, ols_exog, sub["sample_id"].to_numpy(), alpha)})
                    rows.append({**base, "model": "mixedlm", **_fit_mixedlm(y, fixed, sub["label"].to_numpy(), alpha)})
        log.info("pooled_models: %s done", ident)
    out = pd.DataFrame(rows, columns=POOLED_MODEL_COLUMNS)
    out["order_seed"] = out["order_seed"].astype("Int64")
    return out


# --------------------------------------------------------------------------- pooling and trend

def fisher_z_pool(r, n, ci_level: float = 0.95) -> dict:
    """Fixed-effect Fisher-z pooling of correlations r_i from independent samples of size n_i.

    Entries with non-finite r or n_i <= 3 are dropped; |r| is clipped below 1.
    z_i = atanh(r_i), w_i = n_i - 3 (inverse of Var z_i = 1/(n_i - 3); for Spearman this
    slightly understates the variance, ~1.06/(n-3)), z = sum(w_i z_i) / sum(w_i),
    se = 1 / sqrt(sum w_i), r_pooled = tanh(z), CI = tanh(z -+ z_{1-alpha/2} se),
    p = 2 (1 - Phi(|z| / se)) for H0 rho = 0. Heterogeneity: Cochran's
    Q = sum w_i (z_i - z)^2 with df = k - 1, Q_p = P(chi2_df > Q), I2 = max(0, (Q - df) / Q)
    (0 when Q = 0; Q_p and I2 are NaN when k < 2). Random effects (k >= 2, the columns
    ending in _re): DerSimonian-Laird tau2 = max(0, (Q - df) / (sum w - sum w^2 / sum w)),
    pooled z with weights 1 / (1/w_i + tau2); with high I2 this wider interval is the honest one. Returns the FISHER_COLUMNS as a dict.
    """
    r = np.asarray(r, dtype=float)
    n = np.asarray(n, dtype=float)
    keep = np.isfinite(r) & np.isfinite(n) & (n > 3)
    r, n = np.clip(r[keep], -1 + 1e-12, 1 - 1e-12), n[keep]
    k = len(r)
    out = dict.fromkeys(FISHER_COLUMNS, np.nan)
    out.update(k=k, n_total=float(n.sum()))
    if k == 0:
        return out
    zi = np.arctanh(r)
    w = n - 3
    z = float(np.sum(w * zi) / np.sum(w))
    se = float(1 / np.sqrt(np.sum(w)))
    crit = stats.norm.ppf(0.5 + ci_level / 2)
    q = float(np.sum(w * (zi - z) ** 2))
    out.update(r_pooled=math.tanh(z), z=z, se=se, ci_low=math.tanh(z - crit * se), ci_high=math.tanh(z + crit * se),
               p=float(2 * stats.norm.sf(abs(z) / se)), Q=q, Q_df=k - 1)
    if k >= 2:
        out["Q_p"] = float(stats.chi2.sf(q, k - 1))
        out["I2"] = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
        # DerSimonian-Laird by hand: statsmodels' combine_effects does not truncate tau2 at 0
        # (a negative tau2 there shrinks the interval below the fixed-effect one)
        tau2 = max(0.0, (q - (k - 1)) / (np.sum(w) - np.sum(w**2) / np.sum(w)))
        w_re = 1 / (1 / w + tau2)
        z_re, se_re = float(np.sum(w_re * zi) / np.sum(w_re)), float(1 / np.sqrt(np.sum(w_re)))
        out.update(tau2=tau2, r_pooled_re=math.tanh(z_re), ci_low_re=math.tanh(z_re - crit * se_re),
                   ci_high_re=math.tanh(z_re + crit * se_re), p_re=float(2 * stats.norm.sf(abs(z_re) / se_re)))
    return out


def _boundary_stride(epochs_per_task: int, window: int) -> int:
    """Keep every stride-th boundary so that windows [E_k-w+1, E_k+w] do not overlap."""
    return 1 if 2 * window <= epochs_per_task else math.ceil(2 * window / epochs_per_task)


def boundary_trend(per_boundary_df: pd.DataFrame, epochs_per_task: int, window: int,
                   n_permutations: int = 2000, seed: int = 0, coef: str = "spearman_r",
                   by: Sequence[str] | None = None) -> pd.DataFrame:
    """Monotone trend of a per-boundary coefficient over boundary index.

    For each group (``by``; default: the run keys, memo_source, outcome and kind present in the
    table) the Spearman correlation ``trend_rho`` of ``coef`` vs ``boundary`` and its two-sided
    permutation p-value (``scipy.stats.permutation_test``, pairings: the coefficients are
    permuted against the boundary order; ``n_permutations`` random permutations, or all B! when
    that is fewer, so with 4 boundaries the smallest p is 2/24). Windowed deltas at consecutive boundaries
    share epochs when 2w > E (E = epochs per task, windows [E_k-w+1, E_k+w]); then only every
    ceil(2w/E)-th boundary, counted from the first, is used (``stride``). Immediate deltas never
    overlap and use every boundary. Groups with < 3 usable boundaries get NaN.
    """
    _require(per_boundary_df, ["boundary", coef], "boundary_trend")
    if by is None:
        by = [c for c in RUN_KEYS + ["memo_source", "outcome", "kind"] if c in per_boundary_df.columns]
    by = list(by)
    _require(per_boundary_df, by, "boundary_trend")
    rows = []
    for key, g in per_boundary_df.groupby(by, sort=True, dropna=False):
        ident = _key_dict(by, key)
        stride = 1 if ident.get("kind") == "immediate" else _boundary_stride(epochs_per_task, window)
        g = _finite(g, ["boundary", coef]).sort_values("boundary")
        b0 = g["boundary"].min() if len(g) else 0
        g = g[(g["boundary"] - b0) % stride == 0]
        row = {**ident, "coef": coef, "n_boundaries": len(g), "stride": stride,
               "boundaries_used": ",".join(str(int(b)) for b in g["boundary"]), "trend_rho": np.nan, "p": np.nan}
        if len(g) >= 3 and g[coef].nunique() > 1:
            x_ranks = stats.rankdata(g["boundary"].to_numpy(float))

            def rho(y, axis=-1):
                return _pearson_along(np.broadcast_to(x_ranks, np.shape(y)), stats.rankdata(y, axis=axis), axis=axis)

            res = stats.permutation_test(
                (g[coef].to_numpy(float),), rho, permutation_type="pairings", vectorized=True,
                n_resamples=n_permutations, rng=_rng(seed, "trend", *key),
            )
            row.update(trend_rho=float(res.statistic), p=float(res.pvalue))
        rows.append(row)
    return pd.DataFrame(rows, columns=by + TREND_COLUMNS)


# --------------------------------------------------------------------------- effect sizes, tails

def decile_effects(df: pd.DataFrame, memo: str, outcome: str, n_deciles: int = 10, n_boot: int = 2000,
                   seed=0, ci_level: float = 0.95) -> pd.DataFrame:
    """Median outcome per memo decile, and top-minus-bottom decile difference in medians.

    Rows with non-finite memo or outcome are dropped. Samples are split into ``n_deciles``
    equal-count bins by memo rank (ties broken by row order). ``term == "decile"`` rows: decile
    (1 = lowest memo), n, memo range, median outcome and its percentile-bootstrap CI.
    ``term == "top_minus_bottom"``: median(top) - median(bottom) with a two-sample (unpaired)
    percentile-bootstrap CI, and ``p`` from a two-sided Mann-Whitney U test of top vs bottom.
    Percentile, not BCa: BCa's acceleration uses the jackknife, which is inconsistent for the
    median, and outcomes such as d_dormant have many ties. Bootstraps use ``n_boot`` resamples
    seeded by ``seed``. Raises ValueError with fewer than 2 samples per decile.
    """
    _require(df, [memo, outcome], "decile_effects")
    data = _finite(df, [memo, outcome])
    if len(data) < 2 * n_deciles:
        raise ValueError(f"decile_effects: {len(data)} finite ({memo}, {outcome}) rows; need >= {2 * n_deciles}")
    dec = pd.qcut(data[memo].rank(method="first"), n_deciles, labels=False).to_numpy() + 1
    x = data[memo].to_numpy(float)
    y = data[outcome].to_numpy(float)
    groups = [y[dec == d] for d in range(1, n_deciles + 1)]

    def medians_and_difference(*samples, axis=-1):
        meds = [np.median(s, axis=axis) for s in samples]
        return np.stack(meds + [meds[-1] - meds[0]])

    # One unpaired bootstrap resamples every decile independently (a stratified bootstrap);
    # the statistic returns the D medians and top - bottom, so all CIs share the resamples.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = stats.bootstrap(groups, medians_and_difference, vectorized=True, n_resamples=n_boot,
                             confidence_level=ci_level, method="percentile",
                             rng=np.random.default_rng(seed)).confidence_interval
        p = stats.mannwhitneyu(groups[-1], groups[0], alternative="two-sided").pvalue
    estimate = medians_and_difference(*groups)
    rows = [{"term": "decile", "decile": d, "n": len(groups[d - 1]), "memo_min": x[dec == d].min(),
             "memo_max": x[dec == d].max(), "median": float(estimate[d - 1]),
             "ci_low": float(ci.low[d - 1]), "ci_high": float(ci.high[d - 1]), "p": np.nan}
            for d in range(1, n_deciles + 1)]
    rows.append({"term": "top_minus_bottom", "decile": pd.NA, "n": len(groups[-1]) + len(groups[0]),
                 "memo_min": np.nan, "memo_max": np.nan, "median": float(estimate[-1]),
                 "ci_low": float(ci.low[-1]), "ci_high": float(ci.high[-1]), "p": float(p)})
    out = pd.DataFrame(rows, columns=DECILE_COLUMNS)
    out["decile"] = out["decile"].astype("Int64")
    return out


def tails(df: pd.DataFrame, q: float, score_col: str, memo: str = "memo", threshold_quantile: float = 0.9,
          largest: bool = True) -> pd.DataFrame:
    """Memo enrichment of the extreme tail of a per-sample score, per boundary, and its persistence.

    ``df`` is one run and one kind (columns sample_id, boundary, score_col, memo). Per boundary,
    over the N samples with finite score and memo: the tail is the exact top k = ceil(q N)
    samples by score (``largest=False``: the bottom k), ties broken by ascending sample_id;
    m = the ``threshold_quantile`` quantile of memo over the N samples (numpy linear) and
    "high" = memo >= m. Reports p_high_tail = P(high | tail), p_high_all = P(high),
    enrichment = their ratio, the odds ratio and two-sided Fisher exact p of the 2x2 table
    (tail, high) (scipy), and jaccard_prev = |T_k & T_prev| / |T_k | T_prev| with the tail set
    of the previous boundary present (NaN for the first). The candidate pool grows as classes
    become old, so Jaccard is bounded by the pool overlap.
    """
    _require(df, ["sample_id", "boundary", score_col, memo], "tails")
    if not 0 < q <= 1:
        raise ValueError(f"tails: q must be in (0, 1], got {q}")
    _require_finite(df, [score_col, memo], "tails")
    rows, prev = [], None
    for boundary, g in df.groupby("boundary", sort=True):
        g = _finite(g, [score_col, memo])
        n = len(g)
        if n == 0:
            continue
        k = max(1, math.ceil(q * n - 1e-9))
        ranked = g.assign(_s=g[score_col] if largest else -g[score_col]).sort_values(
            ["_s", "sample_id"], ascending=[False, True], kind="mergesort")
        tail = set(ranked["sample_id"].iloc[:k])
        m = float(np.quantile(g[memo].to_numpy(float), threshold_quantile))
        high = g[memo].to_numpy(float) >= m
        in_tail = g["sample_id"].isin(tail).to_numpy()
        a, b = int((in_tail & high).sum()), int((in_tail & ~high).sum())
        c, d = int((~in_tail & high).sum()), int((~in_tail & ~high).sum())
        odds, p = stats.fisher_exact([[a, b], [c, d]])
        p_tail, p_all = a / k, high.mean()
        rows.append({"boundary": boundary, "n": n, "k": k, "memo_threshold": m, "n_high": int(high.sum()),
                     "n_tail_high": a, "p_high_tail": p_tail, "p_high_all": p_all,
                     "enrichment": p_tail / p_all if p_all > 0 else np.nan, "odds_ratio": float(odds), "p": float(p),
                     "jaccard_prev": len(tail & prev) / len(tail | prev) if prev is not None else np.nan})
        prev = tail
    return pd.DataFrame(rows, columns=TAIL_COLUMNS)


# --------------------------------------------------------------------------- mediation, cross-sample

def mediation(df: pd.DataFrame, memo: str, mediator: str, outcome: str, sims: int = 200, seed=0,
              covariates: Sequence[str] = (), ci_level: float = 0.95) -> dict:
    """Causal mediation memo -> mediator -> outcome with statsmodels' ``Mediation``.

    Rows with a non-finite value in any used column are dropped. Mediator model: OLS
    ``mediator ~ memo + covariates``; outcome model: OLS ``outcome ~ memo + mediator +
    covariates``. ``Mediation.fit(method="bootstrap", n_rep=sims)`` (seeded) resamples rows,
    refits both models and simulates potential mediators; effects are for the exposure set to 1
    vs 0 (so scale memo accordingly, e.g. to a [0, 1] rank). Returns n and, for acme (average
    causal mediated effect = indirect), ade (direct), total and prop_mediated (ACME / total;
    its estimate is the bootstrap median): estimate, percentile CI at ``ci_level`` and
    statsmodels' bootstrap p (2 min(P(>0), P(<0)), resolution 2 / sims).
    """
    covariates = list(covariates)
    cols = [memo, mediator, outcome] + covariates
    _require(df, cols, "mediation")
    if len({memo, mediator, outcome}) < 3:
        raise ValueError(f"mediation: memo, mediator and outcome must differ, got {memo!r}, {mediator!r}, {outcome!r}")
    _require_finite(df, cols, "mediation")
    data = _finite(df, cols)
    if len(data) < len(cols) + 3:
        raise ValueError(f"mediation: {len(data)} complete rows; need >= {len(cols) + 3}")
    exog_m = sm.add_constant(pd.DataFrame({"x": data[memo].to_numpy(float),
                                           **{f"c{i}": data[c].to_numpy(float) for i, c in enumerate(covariates)}}))
    exog_y = exog_m.assign(m=data[mediator].to_numpy(float))
    mediator_model = sm.OLS(data[mediator].to_numpy(float), exog_m)
    outcome_model = sm.OLS(data[outcome].to_numpy(float), exog_y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = Mediation(outcome_model, mediator_model, "x", "m").fit(
            method="bootstrap", n_rep=sims, rng=np.random.default_rng(seed))
        table = res.summary(alpha=1 - ci_level)
    names = {"acme": "ACME (average)", "ade": "ADE (average)", "total": "Total effect",
             "prop_mediated": "Prop. mediated (average)"}
    out = {"n": len(data)}
    for key, label in names.items():
        est, lo, hi, p = (float(v) for v in table.loc[label])
        out.update({key: est, f"{key}_ci_low": lo, f"{key}_ci_high": hi, f"{key}_p": p})
    return out


def cross_sample(deltas: pd.DataFrame, kinds: Sequence[str] = KINDS) -> pd.DataFrame:
    """Do memorized *new* classes hurt *old* samples? Per run, kind and boundary.

    new_memo_mean = mean memo of the new-class samples (is_old False) at the boundary,
    old_d_loss_mean = mean d_loss of the old-class samples (finite values only; counts n_new,
    n_old). Per run and kind, spearman_r / spearman_p = scipy Spearman of the two means across
    boundaries (n_boundaries used; NaN with < 3), repeated on each of that run's rows; with
    few boundaries it is descriptive (minimum attainable p is large). Raises ValueError if there
    are no new-class rows.
    """
    _require(deltas, RUN_KEYS + ["boundary", "is_old", "kind", "memo", "d_loss"], "cross_sample")
    data = deltas[deltas["kind"].isin(list(kinds))]
    is_old = data["is_old"].astype(bool)
    if not (~is_old).any():
        raise ValueError("cross_sample: no new-class rows (is_old == False) in the deltas table")
    rows = []
    for key, g in data.groupby(RUN_KEYS + ["kind"], sort=True):
        ident = _key_dict(RUN_KEYS + ["kind"], key)
        per_b = []
        for boundary, gb in g.groupby("boundary", sort=True):
            old_mask = gb["is_old"].astype(bool)
            new_memo = _finite(gb[~old_mask], ["memo"])["memo"]
            old_loss = _finite(gb[old_mask], ["d_loss"])["d_loss"]
            per_b.append({**ident, "boundary": boundary, "n_new": len(new_memo),
                          "new_memo_mean": new_memo.mean() if len(new_memo) else np.nan,
                          "n_old": len(old_loss), "old_d_loss_mean": old_loss.mean() if len(old_loss) else np.nan})
        table = pd.DataFrame(per_b)
        both = _finite(table, ["new_memo_mean", "old_d_loss_mean"])
        r = p = np.nan
        if len(both) >= 3 and both["new_memo_mean"].nunique() > 1 and both["old_d_loss_mean"].nunique() > 1:
            r, p = (float(v) for v in stats.spearmanr(both["new_memo_mean"], both["old_d_loss_mean"]))
        rows.append(table.assign(spearman_r=r, spearman_p=p, n_boundaries=len(both)))
    return pd.concat(rows, ignore_index=True)[CROSS_SAMPLE_COLUMNS]


# --------------------------------------------------------------------------- multiple testing

def bh(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (statsmodels ``multipletests(method="fdr_bh")``).

    NaN p-values stay NaN and do not count towards the number of tests.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    keep = np.isfinite(p)
    if keep.any():
        out[keep] = multipletests(p[keep], method="fdr_bh")[1]
    return out


def add_bh(table: pd.DataFrame, family: Sequence[str], p_cols: Sequence[str] = ("p",)) -> pd.DataFrame:
    """Copy of ``table`` with BH-adjusted columns, adjusted within each family.

    A family is one combination of the ``family`` columns (no columns: the whole table). Each
    p column gets ``<col>_bh`` (``p`` gets ``p_bh``).
    """
    family = list(family)
    _require(table, family + list(p_cols), "add_bh")
    out = table.copy()
    for col in p_cols:
        name = f"{col}_bh"
        out[name] = np.nan
        if out.empty:
            continue
        if not family:
            out[name] = bh(out[col])
            continue
        for _, g in out.groupby(family, sort=False, dropna=False):
            out.loc[g.index, name] = bh(g[col])
    return out


# --------------------------------------------------------------------------- conditions

def condition_metrics(summary: pd.DataFrame, reference_algorithm: str = "retrained") -> pd.DataFrame:
    """Per-run metrics from the per-task summary.

    final_acc = test_acc at the last task; auc_acc = mean test_acc over tasks (area under the
    accuracy curve per task); rel_acc = final_acc / final_acc of the ``reference_algorithm`` run
    with the same filter, ordering, weighting and order_seed (NaN if absent);
    final_dormant = dormant_units at the last task.
    """
    _require(summary, RUN_KEYS + ["task", "test_acc", "dormant_units"], "compare_conditions")
    _require_finite(summary, ["test_acc"], "compare_conditions")
    rows = []
    for key, g in summary.groupby(RUN_KEYS, sort=True):
        g = g.sort_values("task")
        last = g.iloc[-1]
        rows.append({**_key_dict(RUN_KEYS, key), "n_tasks": len(g), "final_acc": float(last["test_acc"]),
                     "auc_acc": float(g["test_acc"].mean()), "final_dormant": float(last["dormant_units"])})
    runs = pd.DataFrame(rows)
    ref_keys = ["order_seed", "filter", "ordering", "weighting"]
    ref = runs[runs["algorithm"] == reference_algorithm][ref_keys + ["final_acc"]].rename(columns={"final_acc": "_ref"})
    runs = runs.merge(ref, on=ref_keys, how="left")
    runs["rel_acc"] = runs["final_acc"] / runs["_ref"]
    return runs.drop(columns="_ref")


def compare_conditions(summary: pd.DataFrame, primary: Mapping[str, str] | None = None,
                       reference_algorithm: str = "retrained", min_pairs: int = 5) -> pd.DataFrame:
    """Compare every condition with the primary one, paired over class orders.

    Metrics per run from ``condition_metrics`` (final_acc, auc_acc, rel_acc, final_dormant).
    For each condition and metric, runs are paired with the primary condition's run of the
    same order_seed (pairs with a NaN dropped): n_pairs, mean (condition), primary_mean,
    mean_diff and median_diff (condition - primary). With n_pairs >= ``min_pairs`` (5) a
    two-sided Wilcoxon signed-rank test (scipy; p = 1 when all differences are 0); below that
    p = NaN and ``test`` = "descriptive (n_pairs < 5)". The primary's own rows have
    test = "primary". Raises ValueError if the primary condition is absent.
    """
    primary = dict(PRIMARY if primary is None else primary)
    missing = [k for k in CONDITION_KEYS if k not in primary]
    if missing:
        raise ValueError(f"compare_conditions: primary {primary} lacks key(s) {missing}")
    runs = condition_metrics(summary, reference_algorithm)
    is_primary = np.logical_and.reduce([runs[k] == primary[k] for k in CONDITION_KEYS])
    if not is_primary.any():
        raise ValueError(f"compare_conditions: primary condition {primary} not in the summary table")
    prim = runs[is_primary].set_index("order_seed")
    rows = []
    for cond, g in runs.groupby(CONDITION_KEYS, sort=True):
        ident = _key_dict(CONDITION_KEYS, cond)
        own = all(ident[k] == primary[k] for k in CONDITION_KEYS)
        g = g.set_index("order_seed")
        for metric in CONDITION_METRICS:
            pair = pd.concat([g[metric].rename("c"), prim[metric].rename("p")], axis=1, join="inner").dropna()
            diff = pair["c"] - pair["p"]
            row = {**ident, "metric": metric, "is_primary": own, "n_pairs": len(pair),
                   "mean": g[metric].mean(), "primary_mean": prim[metric].mean(),
                   "mean_diff": diff.mean() if len(pair) else np.nan,
                   "median_diff": diff.median() if len(pair) else np.nan, "statistic": np.nan, "p": np.nan}
            if own:
                row["test"] = "primary"
            elif len(pair) >= min_pairs:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    w = stats.wilcoxon(pair["c"], pair["p"])
                row.update(statistic=float(w.statistic), p=float(w.pvalue), test="wilcoxon")
            else:
                row["test"] = f"descriptive (n_pairs < {min_pairs})"
            rows.append(row)
    return pd.DataFrame(rows, columns=CONDITIONS_COLUMNS)


# --------------------------------------------------------------------------- legacy CSV

def windowed_correlation_results(deltas: pd.DataFrame, tau: float = 0.01, memo: str = "memo") -> pd.DataFrame:
    """The user's legacy table: memo vs boundary deltas per boundary (windowed kind, old samples).

    Columns: boundary, memo_delta_{loss,grad_norm,dormant}_{pearson,spearman,kendall}_{r,p},
    n_samples, where delta_loss = d_loss, delta_grad_norm = -grad_drop (the change of the grad
    norm), delta_dormant = d_dormant_t{tau} (tau formatted with ``:g``: 0 -> "t0", 0.01 ->
    "t0.01"); kendall_r is Kendall's tau-b. All correlations use the complete cases
    (n_samples = samples with memo and all three deltas finite). If the table holds more than one
    run, the run keys that vary are prepended and there is one row per run and boundary.
    """
    dormant = f"d_dormant_t{tau:g}"
    _require(deltas, ["boundary", "is_old", "kind", memo, "d_loss", "grad_drop", dormant], "windowed_correlation_results")
    data = _old(deltas)
    data = data[data["kind"] == "windowed"]
    if data.empty:
        raise ValueError("windowed_correlation_results: no windowed old-sample rows")
    data = data.assign(_loss=data["d_loss"], _grad_norm=-data["grad_drop"], _dormant=data[dormant])
    runs = [k for k in RUN_KEYS if k in data.columns and data[k].nunique() > 1]
    rows = []
    for key, g in data.groupby(runs + ["boundary"], sort=True):
        g = _finite(g, [memo, "_loss", "_grad_norm", "_dormant"])
        row = _key_dict(runs + ["boundary"], key)
        for name in ("loss", "grad_norm", "dormant"):
            c = correlations(g[memo], g[f"_{name}"], n_boot=0) if len(g) >= 3 else dict.fromkeys(CORRELATION_COLUMNS, np.nan)
            for method, r_key, p_key in (("pearson", "pearson_r", "pearson_p"), ("spearman", "spearman_r", "spearman_p"),
                                         ("kendall", "kendall_tau", "kendall_p")):
                row[f"memo_delta_{name}_{method}_r"] = c[r_key]
                row[f"memo_delta_{name}_{method}_p"] = c[p_key]
        row["n_samples"] = len(g)
        rows.append(row)
    return pd.DataFrame(rows, columns=runs + windowed_correlation_columns())


def windowed_correlation_columns() -> list[str]:
    """Column order of the legacy ``windowed_correlation_results`` table (without run keys)."""
    return (["boundary"] + [f"memo_delta_{d}_{m}_{s}" for d in ("loss", "grad_norm", "dormant")
                            for m in ("pearson", "spearman", "kendall") for s in ("r", "p")] + ["n_samples"])


# --------------------------------------------------------------------------- everything

def _overall_spearman(old: pd.DataFrame, memo_cols, outcomes, kinds) -> pd.DataFrame:
    """Per run: Spearman of memo vs the sample's outcome averaged over boundaries (n = samples)."""
    rows = []
    for key, g in old[old["kind"].isin(kinds)].groupby(RUN_KEYS + ["kind"], sort=True):
        ident = _key_dict(RUN_KEYS + ["kind"], key)
        for memo in memo_cols:
            for outcome in outcomes:
                per_sample = _finite(g, [memo, outcome]).groupby("sample_id")[[memo, outcome]].mean()
                r = np.nan
                if len(per_sample) >= MIN_N and per_sample[memo].nunique() > 1 and per_sample[outcome].nunique() > 1:
                    r = float(stats.spearmanr(per_sample[memo], per_sample[outcome]).statistic)
                rows.append({**ident, "memo_source": memo, "outcome": outcome, "spearman_r": r, "n": len(per_sample)})
    return pd.DataFrame(rows)


def pooled_over_orders(per_boundary_df: pd.DataFrame, overall: pd.DataFrame, ci_level: float = 0.95) -> pd.DataFrame:
    """Fisher-z pooling of per-run Spearman correlations across class orders, per condition.

    level ``boundary``: the per_boundary spearman_r (weights n - 3) per memo_source, outcome,
    kind and boundary; level ``overall``: per run, Spearman of memo vs each sample's outcome
    averaged over the boundaries where it is old (n = samples), pooled per memo_source, outcome
    and kind (boundary NA). Columns: see ``fisher_z_pool``.
    """
    rows = []
    for level, table, extra in (("boundary", per_boundary_df, ["boundary"]), ("overall", overall, [])):
        if table.empty:
            continue
        keys = CONDITION_KEYS + ["memo_source", "outcome", "kind"] + extra
        for key, g in table.groupby(keys, sort=True):
            rows.append({**_key_dict(keys, key), "level": level, **fisher_z_pool(g["spearman_r"], g["n"], ci_level)})
    out = pd.DataFrame(rows, columns=POOLED_OVER_ORDERS_COLUMNS)
    out["boundary"] = out["boundary"].astype("Int64")
    return out


def run_all(deltas: pd.DataFrame, summary: pd.DataFrame | None, cfg: Mapping) -> dict[str, pd.DataFrame]:
    """Every table under results/stats/ (names in ``TABLES``), from pooled deltas and summaries.

    Analyses every run in ``deltas`` (the caller selects runs). ``cfg``: seed, n_boot, ci_level,
    n_permutations, tail_quantile, n_deciles, mediation_sims, outcomes (defaults as in the
    config schema), epochs_per_task and window (required), taus (default [0, 0.001, 0.01]),
    primary (default none/random/none/base), optional memo_cols (default: memo, plus memo_dyn
    when present with finite values; memo_pct ranks samples like memo, so its Spearman and
    Kendall would repeat memo's) and tail_memo_quantile (default 0.9).

    Tables and their BH families (``*_bh`` columns; p-values adjusted within a family):
    - per_boundary: each p column within (run, memo_source, kind) over outcomes x boundaries;
    - pooled_models: within (scope, run or condition, memo_source, kind, model) over outcomes;
    - pooled_over_orders: within (condition, memo_source, kind, level) over outcomes x boundaries;
    - trend: coefficient spearman_r per run (scope run) and r_pooled per condition (scope
      pooled), family (scope, run or condition, memo_source, kind) over outcomes;
    - deciles (first memo source; per run, kind, boundary and outcome): the top_minus_bottom p
      within (run, kind) over outcomes x boundaries;
    - tails (first memo source; each outcome with a known sign, direction = +1 if larger is
      worse) within (run, kind) over scores x boundaries;
    - mediation: memo rank in [0, 1] within boundary -> {align_cos, d_dormant_t<max tau>,
      d_log_grad} -> d_loss, covariate loss_t, per run, kind, boundary; acme_p within
      (run, kind) over mediators x boundaries;
    - cross_sample: descriptive, no adjustment;
    - conditions: within metric over conditions;
    - windowed_correlation_results: legacy schema with tau = max(taus), unadjusted.
    """
    t_start = time.perf_counter()
    for key in ("epochs_per_task", "window"):
        if key not in cfg:
            raise ValueError(f"run_all: cfg is missing {key!r}")
    seed = int(cfg.get("seed", 0))
    n_boot = int(cfg.get("n_boot", 2000))
    ci = float(cfg.get("ci_level", 0.95))
    outcomes = list(cfg.get("outcomes", DEFAULT_OUTCOMES))
    taus = list(cfg.get("taus", [0.0, 0.001, 0.01]))
    tau = max(taus)
    _require(deltas, RUN_KEYS + ["sample_id", "label", "boundary", "is_old", "kind", "memo", "loss_t"]
             + outcomes, "run_all deltas")
    memo_cols = list(cfg.get("memo_cols") or [c for c in ("memo", "memo_dyn")
                                                 if c in deltas.columns and deltas[c].notna().any()])
    kinds = [k for k in KINDS if (deltas["kind"] == k).any()]
    old = _old(deltas).sort_values("sample_id", kind="stable")  # resampling must not depend on row order
    _require_finite(old, memo_cols + outcomes + ["loss_t"], "run_all (old samples)")
    memo = memo_cols[0]
    log.info("run_all: %d rows, %d runs, kinds %s, memo %s, %d outcomes", len(deltas),
             deltas.groupby(RUN_KEYS).ngroups, kinds, memo_cols, len(outcomes))
    out: dict[str, pd.DataFrame] = {}

    def done(name, t0):
        log.info("run_all: %s (%d rows) in %.1f s", name, len(out[name]), time.perf_counter() - t0)

    t0 = time.perf_counter()
    pb = per_boundary(deltas, memo_cols, outcomes, kinds, n_boot, seed, ci)
    out["per_boundary"] = add_bh(pb, RUN_KEYS + ["memo_source", "kind"],
                                 ["pearson_p", "spearman_p", "kendall_p", "partial_spearman_p"])
    done("per_boundary", t0)

    t0 = time.perf_counter()
    pm = pooled_models(deltas, memo_cols, outcomes, kinds, ci)
    out["pooled_models"] = add_bh(pm, ["scope"] + RUN_KEYS + ["memo_source", "kind", "model"])
    done("pooled_models", t0)

    t0 = time.perf_counter()
    pooled = pooled_over_orders(pb, _overall_spearman(old, memo_cols, outcomes, kinds), ci)
    out["pooled_over_orders"] = add_bh(pooled, CONDITION_KEYS + ["memo_source", "kind", "level"])
    done("pooled_over_orders", t0)

    t0 = time.perf_counter()
    n_perm = int(cfg.get("n_permutations", 2000))
    trend_run = boundary_trend(pb, cfg["epochs_per_task"], cfg["window"], n_perm, seed).assign(scope="run")
    boundary_rows = pooled[pooled["level"] == "boundary"]
    trend_pooled = boundary_trend(boundary_rows, cfg["epochs_per_task"], cfg["window"], n_perm, seed, coef="r_pooled",
                                  by=CONDITION_KEYS + ["memo_source", "outcome", "kind"]).assign(scope="pooled")
    trend = pd.concat([trend_run, trend_pooled], ignore_index=True)
    trend = trend[["scope"] + RUN_KEYS + ["memo_source", "outcome", "kind"] + TREND_COLUMNS]
    trend["order_seed"] = trend["order_seed"].astype("Int64")
    out["trend"] = add_bh(trend, ["scope"] + RUN_KEYS + ["memo_source", "kind"])
    done("trend", t0)

    t0 = time.perf_counter()
    n_deciles = int(cfg.get("n_deciles", 10))
    parts = []
    for key, g in old[old["kind"].isin(kinds)].groupby(RUN_KEYS + ["kind", "boundary"], sort=True):
        ident = _key_dict(RUN_KEYS + ["kind", "boundary"], key)
        for outcome in outcomes:
            if len(_finite(g, [memo, outcome])) < 2 * n_deciles:
                log.warning("deciles: skipped %s %s (fewer than %d samples)", ident, outcome, 2 * n_deciles)
                continue
            d = decile_effects(g, memo, outcome, n_deciles, n_boot, _rng(seed, "deciles", *key, outcome).integers(2**32), ci)
            parts.append(d.assign(**ident, memo_source=memo, outcome=outcome))
    keys = RUN_KEYS + ["kind", "boundary", "memo_source", "outcome"]
    deciles = pd.concat(parts, ignore_index=True)[keys + DECILE_COLUMNS] if parts else pd.DataFrame(columns=keys + DECILE_COLUMNS)
    deciles["p_bh"] = np.nan
    top = deciles["term"] == "top_minus_bottom"
    if top.any():
        deciles.loc[top, "p_bh"] = add_bh(deciles[top], RUN_KEYS + ["kind"])["p_bh"]
    out["deciles"] = deciles
    done("deciles", t0)

    t0 = time.perf_counter()
    q = float(cfg.get("tail_quantile", 0.01))
    thr = float(cfg.get("tail_memo_quantile", 0.9))
    parts = []
    for key, g in old[old["kind"].isin(kinds)].groupby(RUN_KEYS + ["kind"], sort=True):
        for score in outcomes:
            sign = 1 if score.startswith("d_dormant") else PLASTICITY_LOSS_SIGN.get(score)
            if sign is None:
                log.info("tails: %s has no plasticity-loss direction; skipped", score)
                continue
            if _finite(g, [score, memo]).empty:
                log.warning("tails: skipped %s %s (no finite values)", key, score)
                continue
            t = tails(g, q, score, memo, thr, largest=sign > 0)
            parts.append(t.assign(**_key_dict(RUN_KEYS + ["kind"], key), score=score, direction=sign))
    keys = RUN_KEYS + ["kind", "score", "direction"]
    tails_df = pd.concat(parts, ignore_index=True)[keys + TAIL_COLUMNS] if parts else pd.DataFrame(columns=keys + TAIL_COLUMNS)
    out["tails"] = add_bh(tails_df, RUN_KEYS + ["kind"])
    done("tails", t0)

    t0 = time.perf_counter()
    sims = int(cfg.get("mediation_sims", 200))
    mediators = [m for m in ("align_cos", f"d_dormant_t{tau:g}", "d_log_grad") if m in deltas.columns]
    rows = []
    for key, g in old[old["kind"].isin(kinds)].groupby(RUN_KEYS + ["kind", "boundary"], sort=True):
        g = g.assign(memo_rank=g[memo].rank(pct=True))
        for mediator in mediators:
            if len(_finite(g, ["memo_rank", mediator, "d_loss", "loss_t"])) < 10:
                continue
            res = mediation(g, "memo_rank", mediator, "d_loss", sims, _rng(seed, "mediation", *key, mediator).integers(2**32),
                            covariates=["loss_t"], ci_level=ci)
            rows.append({**_key_dict(RUN_KEYS + ["kind", "boundary"], key), "exposure": f"rank({memo})",
                         "mediator": mediator, "outcome": "d_loss", **res})
    keys = RUN_KEYS + ["kind", "boundary", "exposure", "mediator", "outcome"]
    out["mediation"] = add_bh(pd.DataFrame(rows, columns=keys + MEDIATION_COLUMNS), RUN_KEYS + ["kind"], ["acme_p"])
    done("mediation", t0)

    t0 = time.perf_counter()
    out["cross_sample"] = cross_sample(deltas, kinds)
    done("cross_sample", t0)

    t0 = time.perf_counter()
    if summary is None or summary.empty:
        log.warning("run_all: no summary table; conditions table is empty")
        out["conditions"] = pd.DataFrame(columns=CONDITIONS_COLUMNS + ["p_bh"])
    else:
        conds = compare_conditions(summary, cfg.get("primary", PRIMARY))
        out["conditions"] = add_bh(conds, ["metric"])
    done("conditions", t0)

    t0 = time.perf_counter()
    out["windowed_correlation_results"] = (windowed_correlation_results(deltas, tau, memo) if "windowed" in kinds
                                           else pd.DataFrame(columns=windowed_correlation_columns()))
    done("windowed_correlation_results", t0)
    log.info("run_all: all tables in %.1f s", time.perf_counter() - t_start)
    return out


# --------------------------------------------------------------------------- synthetic data

def synthetic_deltas(n_orders: int = 2, n_classes: int = 10, classes_per_task: int = 2, n_per_class: int = 75,
                     effect: float = 0.5, trend: float = 0.0, mediated: tuple[float, float] = (0.6, 0.5),
                     class_confound: float = 1.0, nan_fraction: float = 0.01, noise_fraction: float = 0.05,
                     conditions: Sequence[Mapping[str, str]] | None = None, seed: int = 0) -> pd.DataFrame:
    """A realistic pooled deltas table with planted effects (for tests, figures and timing).

    Per sample (shared by all runs): class effect u_c ~ N(0, 1); log memo = 0.7 u_c + N(0, 1)
    (+1.5 for the ``noise_fraction`` planted noisy samples), memo = exp(log memo) (heavy tail),
    z = standardized log memo, memo_pct = overall percentile. Per run (condition x order_seed;
    class order a seeded permutation), boundary k and kind (noise sd 1 immediate, 0.6 windowed),
    for old-class samples with eps ~ N(0, sd):
    mediator D = a z + eps, d_dormant_t0.01 = round(0.02 D, 3) (ties, as real fractions), the
    t0.001 / t0 columns shrink it; d_loss = (effect + trend k) z + b D' + class_confound u_c +
    0.3 log loss_t + eps with D' = d_dormant_t0.01 / 0.02 and (a, b) = ``mediated``, so the
    indirect effect of z on d_loss is a b; d_log_grad = -0.5 effect z + eps (``nan_fraction`` NaN),
    grad_drop consistent with it; align_cos / align_dot / pred_forget are kind-independent.
    New-class samples (classes of task k+1) are included with is_old False and NaN loss-based
    columns (loss_t, d_loss, d_log_grad, grad_drop, d_margin), as ``memplast.deltas`` makes them.
    """
    rng = np.random.default_rng(seed)
    conditions = [dict(PRIMARY)] if conditions is None else [dict(c) for c in conditions]
    n = n_classes * n_per_class
    n_tasks = n_classes // classes_per_task
    sample_id = np.arange(n)
    label = np.repeat(np.arange(n_classes), n_per_class)
    u = rng.normal(size=n_classes)[label]
    noisy = rng.random(n) < noise_fraction
    log_memo = 0.7 * u + rng.normal(size=n) + 1.5 * noisy
    memo = np.exp(log_memo)
    z = (log_memo - log_memo.mean()) / log_memo.std()
    memo_pct = stats.rankdata(memo) / n * 100
    a, b = mediated
    frames = []
    for cond in conditions:
        for order_seed in range(n_orders):
            order = np.random.default_rng([seed, order_seed]).permutation(n_classes)
            task_of_class = np.empty(n_classes, dtype=int)
            task_of_class[order] = np.arange(n_classes) // classes_per_task
            task = task_of_class[label]
            rs = _rng(seed, *cond.values(), order_seed)
            g_t_static = np.exp(-0.5 * z + 0.3 * rs.normal(size=n))
            align_noise = rs.normal(size=(n_tasks, n))
            for k in range(n_tasks - 1):
                rows = task <= k + 1
                is_old = task[rows] <= k
                zk, uk, m = z[rows], u[rows], rows.sum()
                loss_t = np.exp(-1 + 0.5 * zk + 0.3 * rs.normal(size=m))
                align_cos = np.tanh(-0.3 * zk + align_noise[k, rows])
                g_t = g_t_static[rows]
                pred_forget = 0.5 * zk + rs.normal(size=m)
                for kind, sd in (("immediate", 1.0), ("windowed", 0.6)):
                    eps = lambda: sd * rs.normal(size=m)  # noqa: E731
                    dorm = np.round(0.02 * (a * zk + eps()), 3)
                    d_loss = (effect + trend * k) * zk + b * dorm / 0.02 + class_confound * uk + 0.3 * np.log(loss_t) + eps()
                    d_log_grad = -0.5 * effect * zk + eps()
                    d_log_grad[rs.random(m) < nan_fraction] = np.nan
                    frame = pd.DataFrame({
                        "order_seed": order_seed, **cond, "sample_id": sample_id[rows], "label": label[rows],
                        "boundary": k, "is_old": is_old, "noisy": noisy[rows], "kind": kind,
                        "memo": memo[rows], "memo_pct": memo_pct[rows], "loss_t": loss_t,
                        "d_loss": d_loss, "d_log_grad": d_log_grad, "grad_drop": g_t * (1 - np.exp(d_log_grad)),
                        "d_input_grad": 0.3 * zk + eps(), "d_margin": -0.8 * d_loss + eps(),
                        "d_dormant_t0": np.round(dorm * 0.5, 3), "d_dormant_t0.001": np.round(dorm * 0.8, 3),
                        "d_dormant_t0.01": dorm, "drift": np.abs(0.5 + 0.2 * zk + eps()),
                        "align_dot": align_cos * g_t, "align_cos": align_cos, "pred_forget": pred_forget,
                    })
                    # new classes have no loss before the boundary (old-class mask), as in memplast.deltas
                    frame.loc[~is_old, ["loss_t", "d_loss", "d_log_grad", "grad_drop", "d_margin"]] = np.nan
                    frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def synthetic_summary(n_orders: int = 5, n_tasks: int = 5, conditions: Sequence[Mapping[str, str]] | None = None,
                      shift: Mapping[tuple, float] | None = None, seed: int = 0) -> pd.DataFrame:
    """Per-run per-task summary table with a planted accuracy shift per condition.

    test_acc = 0.9 - 0.05 task + shift[condition] + N(0, 0.01) (retrained: no decay), where
    ``shift`` maps (filter, ordering, weighting, algorithm) to an additive shift (default 0);
    dormant_units grows with task. Default conditions: primary and its retrained reference.
    """
    rng = np.random.default_rng(seed)
    if conditions is None:
        conditions = [dict(PRIMARY), {**PRIMARY, "algorithm": "retrained"}]
    shift = dict(shift or {})
    rows = []
    for cond in conditions:
        s = shift.get(tuple(cond[k] for k in CONDITION_KEYS), 0.0)
        decay = 0.0 if cond["algorithm"] == "retrained" else 0.05
        for order_seed in range(n_orders):
            for task in range(n_tasks):
                acc = 0.9 - decay * task + s + rng.normal(0, 0.01)
                rows.append({"order_seed": order_seed, **cond, "task": task, "test_acc": acc,
                             "val_acc": acc + rng.normal(0, 0.01), "dormant_units": 0.05 * task * (decay > 0) + 0.01,
                             "effective_rank": 50 - task, "stable_rank": 10 - 0.5 * task, "mean_abs_weight": 0.01 + 0.001 * task})
    return pd.DataFrame(rows)
