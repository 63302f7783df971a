"""Shared names and helpers of the statistics package: run keys, input checks, seeding, BH.

Seeding: every random analysis draws from ``numpy.random.default_rng([seed, crc32(key)])`` where
``key`` names the analysed group, so a table does not depend on the order groups are processed
in, and the same config gives the same numbers.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

RUN_KEYS = ["order_seed", "filter", "ordering", "weighting", "algorithm"]
CONDITION_KEYS = RUN_KEYS[1:]
KINDS = ("immediate", "windowed")
DEFAULT_OUTCOMES = ("d_loss", "d_log_grad", "grad_drop", "d_dormant_t0.01", "align_cos", "pred_forget")
PRIMARY = {"filter": "none", "ordering": "random", "weighting": "none", "algorithm": "base"}
MIN_N = 5  # fewest finite pairs a per-cell statistic is computed from (else NaN)
ESTIMATORS = ("raw", "partial")
# Columns every pooled row of results/stats/*.csv carries (after the condition factors).
POOLED_COLUMNS = [
    "outcome",
    "kind",
    "boundary",
    "estimator",
    "pooling",
    "estimate",
    "ci_low",
    "ci_high",
    "p",
    "p_bh",
    "p_at_floor",
    "n_samples",
    "n_orders",
    "generalises_to",
]
# What a row's interval and p are about, by its pooling (docs/stats_tables.md): one class order;
# fixed pooling = these class orders; random effects, or a t over orders = new class orders.
GENERALISES_TO = {"none": "this class order", "fixed": "these class orders", "random": "new class orders"}


def generalises_to(table: pd.DataFrame) -> pd.Series:
    """``GENERALISES_TO`` of each row's ``pooling`` (``paired_mean_difference`` rows, a paired t over
    class orders, generalise to new class orders)."""
    out = table["pooling"].map(GENERALISES_TO)
    if "estimator" in table:
        out = out.where(table["estimator"] != "paired_mean_difference", GENERALISES_TO["random"])
    return out


def rng_for(seed, *key) -> np.random.Generator:
    """Generator seeded by ``seed`` and a stable hash of ``key`` (order-independent seeding)."""
    tag = zlib.crc32("|".join(str(k) for k in key).encode())
    return np.random.default_rng([int(seed), tag])


def require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise a one-line ValueError naming the columns of ``columns`` missing from ``df``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; table has {list(df.columns)}")


def require_finite(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise a one-line ValueError if any of ``columns`` has no finite value in ``df``."""
    for c in columns:
        if not np.isfinite(pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)).any():
            raise ValueError(f"{what}: column {c!r} has no finite values ({len(df)} rows)")


def rows_of_kinds(table: pd.DataFrame, kinds) -> pd.DataFrame:
    """The rows of ``table`` whose kind is in ``kinds``: the table itself (no copy) when that is all."""
    keep = table["kind"].isin(list(kinds))
    return table if keep.all() else table[keep]


def old_rows(deltas: pd.DataFrame) -> pd.DataFrame:
    """Old-class rows (``is_old``): the samples whose plasticity a boundary tests."""
    return deltas[deltas["is_old"].astype(bool)]


def finite_mask(df: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Rows of ``df`` where every column in ``columns`` is finite (NaN, +-inf and non-numbers are not)."""
    values = df[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return np.isfinite(values).all(axis=1)


def finite(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Rows of ``df`` where every column in ``columns`` is finite (NaN and +-inf dropped)."""
    return df[finite_mask(df, columns)]


def n_finite(df: pd.DataFrame, columns: Sequence[str]) -> int:
    """How many rows of ``df`` ``finite`` would keep (without copying them)."""
    return int(finite_mask(df, columns).sum())


def key_dict(keys: Sequence[str], values) -> dict:
    values = values if isinstance(values, tuple) else (values,)
    return dict(zip(keys, values))


def outcomes_of(cfg) -> list[str]:
    """The outcome columns to analyse: ``cfg['outcomes']`` (config ``stats.outcomes``, the one place
    they are named), else ``DEFAULT_OUTCOMES`` (the schema's default)."""
    return list(cfg.get("outcomes") or DEFAULT_OUTCOMES)


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
    """Copy of ``table`` with BH-adjusted columns ``<col>_bh`` (``p`` -> ``p_bh``), adjusted within
    each family = one combination of the ``family`` columns (no columns: the whole table)."""
    family = list(family)
    require(table, family + list(p_cols), "add_bh")
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


def bootstrap_p(draws: np.ndarray, axis: int = 0) -> np.ndarray:
    """Two-sided bootstrap p of H0 theta = 0 from replicate estimates ``draws`` (NaNs ignored):
    p = min(1, 2 min(1 + #{theta* <= 0}, 1 + #{theta* >= 0}) / (1 + B)), the inversion of the
    percentile interval; never 0 (smallest 2 / (1 + B))."""
    d = np.asarray(draws, dtype=float)
    ok = np.isfinite(d)
    b = ok.sum(axis=axis)
    lo = ((d <= 0) & ok).sum(axis=axis)
    hi = ((d >= 0) & ok).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.minimum(1.0, 2 * (1 + np.minimum(lo, hi)) / (1 + b))
    return np.where(b > 0, p, np.nan)


def percentile_ci(draws: np.ndarray, ci_level: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval [q_{(1-c)/2}, q_{(1+c)/2}] of replicate estimates (NaNs ignored)."""
    a = (1 - ci_level) / 2
    d = np.asarray(draws, float)
    if np.isfinite(d).all():
        lo, hi = np.quantile(d, [a, 1 - a], axis=axis)
        return lo, hi
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(d, [a, 1 - a], axis=axis)
    return lo, hi


def bc_interval(draws: np.ndarray, estimate: np.ndarray, ci_level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bias-corrected percentile interval and its p-value, per column of ``draws`` (B, Q).

    z0 = Phi^-1(#{theta* < theta} + #{theta* = theta} / 2) / B) (clipped to [1/(B+1), B/(B+1)]);
    interval = the Phi(2 z0 -+ z_{(1+c)/2}) quantiles of the draws (Efron's BC: corrects the
    median bias of the estimator, which a plain percentile interval doubles); p inverts it:
    z = Phi^-1(F*(0)) - 2 z0 with F*(0) = (1/2 + #{theta* < 0} + #{theta* = 0} / 2) / (B + 1),
    p = 2 min(Phi(z), 1 - Phi(z)) (never 0). Returns (low, high, p)."""
    from scipy.stats import norm

    d = np.sort(np.asarray(draws, float), axis=0)
    est = np.asarray(estimate, float)
    b = d.shape[0]
    frac = (np.sum(d < est, axis=0) + 0.5 * np.sum(d == est, axis=0)) / b
    z0 = norm.ppf(np.clip(frac, 1 / (b + 1), b / (b + 1)))
    za = norm.ppf(0.5 + ci_level / 2)

    def q(prob):
        pos = np.clip(prob, 0, 1) * (b - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, b - 1)
        cols = np.arange(d.shape[1])
        return d[lo, cols] + (pos - lo) * (d[hi, cols] - d[lo, cols])

    low, high = q(norm.cdf(2 * z0 - za)), q(norm.cdf(2 * z0 + za))
    f0 = (0.5 + np.sum(d < 0, axis=0) + 0.5 * np.sum(d == 0, axis=0)) / (b + 1)
    z = norm.ppf(f0) - 2 * z0
    p = np.minimum(1.0, 2 * np.minimum(norm.cdf(z), norm.sf(z)))
    bad = ~np.isfinite(est)
    return np.where(bad, np.nan, low), np.where(bad, np.nan, high), np.where(bad, np.nan, p)
