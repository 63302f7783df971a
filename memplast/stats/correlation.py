"""Correlations of one sample set: Pearson/Spearman/Kendall with bootstrap CIs, the partial
Spearman, and the user's legacy ``windowed_correlation_results`` table (schema kept as it was)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

from memplast.stats.common import RUN_KEYS, finite, key_dict, old_rows, require

CORRELATION_COLUMNS = [
    "n",
    "pearson_r",
    "pearson_p",
    "pearson_ci_low",
    "pearson_ci_high",
    "spearman_r",
    "spearman_p",
    "spearman_ci_low",
    "spearman_ci_high",
    "kendall_tau",
    "kendall_p",
    "ci_method",
]
BCA_MAX_N = 5000  # above this n the BCa jackknife is too costly; percentile intervals are used
_ELEMENTS_PER_BATCH = 5_000_000  # bootstrap batch size cap (resamples x n) to bound memory


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
                (x, y, cx, cy),
                _pearson_spearman_statistic,
                paired=True,
                vectorized=True,
                n_resamples=n_boot,
                confidence_level=ci_level,
                method=method,
                batch=max(1, _ELEMENTS_PER_BATCH // n),
                rng=np.random.default_rng(seed),
            )
        lo, hi = res.confidence_interval
        out["pearson_ci_low"], out["spearman_ci_low"] = (float(v) for v in lo)
        out["pearson_ci_high"], out["spearman_ci_high"] = (float(v) for v in hi)
    return out


def partial_spearman(
    df: pd.DataFrame, x: str, y: str, covariates: Sequence[str] = ("loss_t",), categorical: Sequence[str] = ("label",)
) -> dict:
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
    require(df, [x, y] + covariates + categorical, "partial_spearman")
    data = finite(df, [x, y] + covariates)
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
    require(
        deltas, ["boundary", "is_old", "kind", memo, "d_loss", "grad_drop", dormant], "windowed_correlation_results"
    )
    data = old_rows(deltas)
    data = data[data["kind"] == "windowed"]
    if data.empty:
        raise ValueError("windowed_correlation_results: no windowed old-sample rows")
    data = data.assign(_loss=data["d_loss"], _grad_norm=-data["grad_drop"], _dormant=data[dormant])
    runs = [k for k in RUN_KEYS if k in data.columns and data[k].nunique() > 1]
    rows = []
    for key, g in data.groupby(runs + ["boundary"], sort=True):
        g = finite(g, [memo, "_loss", "_grad_norm", "_dormant"])
        row = key_dict(runs + ["boundary"], key)
        for name in ("loss", "grad_norm", "dormant"):
            c = (
                correlations(g[memo], g[f"_{name}"], n_boot=0)
                if len(g) >= 3
                else dict.fromkeys(CORRELATION_COLUMNS, np.nan)
            )
            for method, r_key, p_key in (
                ("pearson", "pearson_r", "pearson_p"),
                ("spearman", "spearman_r", "spearman_p"),
                ("kendall", "kendall_tau", "kendall_p"),
            ):
                row[f"memo_delta_{name}_{method}_r"] = c[r_key]
                row[f"memo_delta_{name}_{method}_p"] = c[p_key]
        row["n_samples"] = len(g)
        rows.append(row)
    return pd.DataFrame(rows, columns=runs + windowed_correlation_columns())


def windowed_correlation_columns() -> list[str]:
    """Column order of the legacy ``windowed_correlation_results`` table (without run keys)."""
    return (
        ["boundary"]
        + [
            f"memo_delta_{d}_{m}_{s}"
            for d in ("loss", "grad_norm", "dormant")
            for m in ("pearson", "spearman", "kendall")
            for s in ("r", "p")
        ]
        + ["n_samples"]
    )
