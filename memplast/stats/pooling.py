"""Per-cell, pooled, trend and null-band rows from one ``Resampled`` (same draws for everything).

Row kinds (``pooling`` column):

- ``none``: one cell (class order x boundary), its sample-bootstrap percentile CI and p;
- ``fixed``: the mean of the cell estimates over class orders (per boundary) or over orders and
  boundaries (boundary ``all``), each cell weighted equally; its bootstrap distribution is the
  same mean of each replicate's cell estimates, so shared samples and persistent per-sample
  effects are in it. Inference is about these class orders; percentile CI, bootstrap p;
- ``random``: Hartung-Knapp-Sidik-Jonkman random effects over the k class orders (for
  ``all``, each order's estimate is its mean over boundaries): within-order variances v_o = the
  bootstrap variances, DerSimonian-Laird tau^2, weights u_o = 1 / (v_o + tau^2),
  mu = sum u y / sum u, q = sum u (y - mu)^2 / (k - 1), Var = max(q / sum u, Var_boot(mu)) (the
  floor keeps shared samples' covariance, which the HKSJ spread alone misses),
  CI mu -+ t_{k-1} sqrt(Var), p from t_{k-1}. Inference is about class orders like these.

p-values: bootstrap p = 2 min(1 + #{theta* <= 0}, 1 + #{theta* >= 0}) / (1 + B) (never 0).
Null band: the same pooled statistic over the within-class permutations, its percentile band at
the CI level, and p_perm = (1 + #{|t* - m| >= |t - m|}) / (1 + P) with m the null mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from memplast.stats.common import ESTIMATORS, bootstrap_p, percentile_ci
from memplast.stats.resampling import Resampled

NULL_COLUMNS = ["null_low", "null_high", "p_perm"]


def _n_samples(res: Resampled, rows: np.ndarray) -> int:
    return int(len(np.unique(np.concatenate([res.sample_idx[i] for i in rows])))) if len(rows) else 0


def _summary(est: float, draws: np.ndarray, null: np.ndarray, ci_level: float) -> dict:
    lo, hi = percentile_ci(draws, ci_level)
    out = {"estimate": est, "ci_low": float(lo), "ci_high": float(hi), "p": float(bootstrap_p(draws))}
    out.update(_null_band(est, null, ci_level))
    return out


def _null_band(est: float, null: np.ndarray, ci_level: float) -> dict:
    null = null[np.isfinite(null)]
    if not len(null) or not np.isfinite(est):
        return dict.fromkeys(NULL_COLUMNS, np.nan)
    lo, hi = percentile_ci(null, ci_level)
    m = null.mean()
    return {"null_low": float(lo), "null_high": float(hi),
            "p_perm": float((1 + np.sum(np.abs(null - m) >= abs(est - m) - 1e-12)) / (1 + len(null)))}


def hksj(y: np.ndarray, v: np.ndarray, boot: np.ndarray, ci_level: float) -> dict:
    """HKSJ random-effects pool of order estimates ``y`` with within variances ``v`` (module
    docstring); ``boot`` (B, k) are the orders' bootstrap replicates (for the variance floor)."""
    keep = np.isfinite(y) & np.isfinite(v) & (v > 0)
    y, v, boot = y[keep], v[keep], boot[:, keep]
    k = len(y)
    out = {"estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "tau2": np.nan}
    if k < 2:
        return out
    w = 1 / v
    mu_fe = np.sum(w * y) / w.sum()
    q_stat = np.sum(w * (y - mu_fe) ** 2)
    tau2 = max(0.0, (q_stat - (k - 1)) / (w.sum() - np.sum(w**2) / w.sum()))
    u = 1 / (v + tau2)
    mu = float(np.sum(u * y) / u.sum())
    var_hk = np.sum(u * (y - mu) ** 2) / ((k - 1) * u.sum())
    var_boot = np.nanvar(boot @ (u / u.sum()), ddof=1)
    se = float(np.sqrt(max(var_hk, var_boot)))
    crit = stats.t.ppf(0.5 + ci_level / 2, k - 1)
    p = float(2 * stats.t.sf(abs(mu) / se, k - 1)) if se > 0 else np.nan
    out.update(estimate=mu, ci_low=mu - crit * se, ci_high=mu + crit * se, p=p, tau2=tau2)
    return out


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(a, axis=axis)


def cell_rows(res: Resampled, ci_level: float) -> pd.DataFrame:
    """One row per cell and estimator (pooling ``none``)."""
    rows = []
    for i, meta in enumerate(res.rows.to_dict("records")):
        for e, name in enumerate(ESTIMATORS):
            rows.append({**meta, "estimator": name, "pooling": "none", "n_samples": meta["n"], "n_orders": 1,
                         **_summary(res.estimate[i, e], res.boot[:, i, e], res.null[:, i, e], ci_level)})
    return pd.DataFrame(rows).drop(columns="n")


def pooled_rows(res: Resampled, group: Sequence[str], ci_level: float, order_key: str = "order_seed") -> pd.DataFrame:
    """Fixed and HKSJ-random pooled rows per ``group`` (must include kind and outcome), per boundary
    (over orders) and over all boundaries (boundary ``all``)."""
    meta = res.rows.reset_index(drop=True)
    out = []
    for key, g in meta.groupby(list(group), sort=True):
        ident = dict(zip(group, key if isinstance(key, tuple) else (key,)))
        levels = [(b, gb.index.to_numpy()) for b, gb in g.groupby("boundary", sort=True)] + [("all", g.index.to_numpy())]
        for boundary, idx in levels:
            orders = meta.loc[idx, order_key].to_numpy()
            base = {**ident, "boundary": boundary, "n_samples": _n_samples(res, idx), "n_orders": len(np.unique(orders))}
            for e, name in enumerate(ESTIMATORS):
                est = _nanmean(res.estimate[idx, e], 0)
                draws = _nanmean(res.boot[:, idx, e], 1)
                null = _nanmean(res.null[:, idx, e], 1)
                out.append({**base, "estimator": name, "pooling": "fixed", **_summary(float(est), draws, null, ci_level)})
                uo = np.unique(orders)
                y = np.array([_nanmean(res.estimate[idx[orders == o], e], 0) for o in uo])
                bo = np.stack([_nanmean(res.boot[:, idx[orders == o], e], 1) for o in uo], axis=1)
                no = np.stack([_nanmean(res.null[:, idx[orders == o], e], 1) for o in uo], axis=1)
                v = np.nanvar(bo, axis=0, ddof=1)
                ran = hksj(y, v, bo, ci_level)
                tau2 = ran.pop("tau2")
                if np.isfinite(ran["estimate"]):
                    u = 1 / (v + tau2)
                    ran.update(_null_band(ran["estimate"], no @ (u / u.sum()), ci_level))
                else:
                    ran.update(dict.fromkeys(NULL_COLUMNS, np.nan))
                out.append({**base, "estimator": name, "pooling": "random", **ran})
    return pd.DataFrame(out)


def trend_rows(res: Resampled, group: Sequence[str], ci_level: float, strides: dict) -> pd.DataFrame:
    """Slope of the fixed-pooled per-boundary estimate over boundary index, per ``group``.

    slope = sum_k (k - kbar)(theta_k - thetabar) / sum_k (k - kbar)^2 over the boundaries used
    (every ``strides[kind]``-th from the first, so windowed deltas share no epochs); the
    bootstrap CI and p come from the same slope of every replicate's pooled estimates.
    """
    meta = res.rows.reset_index(drop=True)
    out = []
    for key, g in meta.groupby(list(group), sort=True):
        ident = dict(zip(group, key if isinstance(key, tuple) else (key,)))
        stride = strides.get(ident.get("kind"), 1)
        bounds = sorted(g["boundary"].unique())
        used = [b for b in bounds if (b - bounds[0]) % stride == 0]
        for e, name in enumerate(ESTIMATORS):
            th = np.array([_nanmean(res.estimate[g.index[g["boundary"] == b], e], 0) for b in used])
            tb = np.stack([_nanmean(res.boot[:, g.index[g["boundary"] == b], e], 1) for b in used], axis=1) \
                if used else np.empty((res.boot.shape[0], 0))
            row = {**ident, "boundary": "all", "estimator": name, "pooling": "fixed", "n_boundaries": len(used),
                   "boundaries_used": ",".join(str(int(b)) for b in used), "stride": stride,
                   "n_samples": _n_samples(res, g.index.to_numpy()), "n_orders": g["order_seed"].nunique(),
                   "estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan}
            ok = np.isfinite(th)
            if ok.sum() >= 2:
                k = np.asarray(used, float)[ok]
                c = (k - k.mean()) / np.sum((k - k.mean()) ** 2)
                draws = tb[:, ok] @ c
                lo, hi = percentile_ci(draws, ci_level)
                row.update(estimate=float(th[ok] @ c), ci_low=float(lo), ci_high=float(hi), p=float(bootstrap_p(draws)))
            out.append(row)
    return pd.DataFrame(out)


def difference_rows(res: Resampled, factors: Sequence[str], primary: dict, group: Sequence[str],
                    ci_level: float) -> pd.DataFrame:
    """Paired difference of the fixed-pooled (all boundaries) estimate: each condition minus the
    primary one, per ``group`` (kind, outcome) and estimator; CI and p from the same draws."""
    meta = res.rows.reset_index(drop=True)
    is_primary = np.logical_and.reduce([meta[f] == primary[f] for f in factors])
    out = []
    for key, g in meta.groupby(list(factors) + list(group), sort=True):
        ident = dict(zip(list(factors) + list(group), key))
        if all(ident[f] == primary[f] for f in factors):
            continue
        p_idx = meta.index[is_primary & np.logical_and.reduce([meta[c] == ident[c] for c in group])].to_numpy()
        if not len(p_idx):
            continue
        idx = g.index.to_numpy()
        for e, name in enumerate(ESTIMATORS):
            est = float(_nanmean(res.estimate[idx, e], 0) - _nanmean(res.estimate[p_idx, e], 0))
            draws = _nanmean(res.boot[:, idx, e], 1) - _nanmean(res.boot[:, p_idx, e], 1)
            lo, hi = percentile_ci(draws, ci_level)
            out.append({**ident, "boundary": "all", "estimator": name, "pooling": "fixed",
                        "metric": "pooled_estimate_difference", "task": pd.NA, "estimate": est,
                        "ci_low": float(lo), "ci_high": float(hi), "p": float(bootstrap_p(draws)),
                        "n_samples": _n_samples(res, np.r_[idx, p_idx]), "n_orders": g["order_seed"].nunique()})
    return pd.DataFrame(out)
