"""Per-cell, pooled, trend and condition-difference rows from one ``Resampled`` (same draws for all).

Every reported quantity is a linear combination c of the cell estimates (a mean over orders, over
orders and boundaries, a slope over boundaries, a difference of conditions). Its estimate is
c . theta, its bootstrap replicates c . theta*_b (same draw b for every cell, so shared samples and
persistent per-sample effects are in them), its null replicates c . theta^0_p.

``pooling`` column:

- ``none``: one cell (class order x boundary);
- ``fixed``: equal-weight mean over class orders (per boundary) or over orders and boundaries
  (boundary ``all``); inference about these class orders;
- ``random``: inference about class orders like these (between-order heterogeneity). Order
  estimates y_o (each order's mean over the pooled boundaries), sample covariance Sigma = the
  bootstrap covariance of the y_o (shared samples make it non-diagonal), S = sum (y_o - ybar)^2,
  tau^2 = max(0, (S - tr Sigma + 1'Sigma1 / k) / (k - 1)) (method of moments),
  Var(ybar) = 1'Sigma1 / k^2 + tau^2 / k, CI ybar -+ t_df sqrt(Var), normal when tau^2 = 0 (then
  only the sample-level variance is left). With independent orders and tau^2 > 0 this is exactly
  the equal-weight Hartung-Knapp-Sidik-Jonkman interval; the Sigma terms correct it for the orders
  sharing samples. Degrees of freedom (Satterthwaite): when tau^2 > 0,
  Var(ybar) = V_o + V_b with V_o = S / (k (k - 1)) (from the k order estimates: k - 1 df, HKSJ's
  part) and V_b = (1'Sigma1 - tr Sigma) / (k (k - 1)) (the orders' shared-sample covariance, from
  the B bootstrap replicates: effectively known, B - 1 df), so
  df = Var^2 / (V_o^2 / (k - 1) + V_b^2 / (B - 1)), at least k - 1 (= k - 1 when V_b <= 0, the
  plain HKSJ t). A t with k - 1 df on a variance that is 40-50% bootstrap variance made these
  intervals ~1.7x too wide (coverage 0.98, null rejection 0.02-0.03).

CIs are bias-corrected (BC) percentile intervals at ``ci_level`` and p inverts them
(``common.bc_interval``; never 0). Null band: percentile band of the null replicates at ``ci_level``, and
p_perm = (1 + #{|t0 - m| >= |t - m|}) / (1 + P) with m the null mean.

Resampling floor: B draws cannot resolve a p below 1 / (B + 1). A bootstrap p at or below it is
stored as 1 / (B + 1) with ``p_at_floor`` True (a bound: p < 1/(B+1)), and p_perm = 1 / (P + 1)
(no null replicate as extreme) has ``p_perm_at_floor`` True. Analytic p (random rows) never is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse, stats

from memplast.stats.common import ESTIMATORS, bc_interval, percentile_ci
from memplast.stats.resampling import Resampled

NULL_COLUMNS = ["null_low", "null_high", "p_perm", "p_perm_at_floor"]
P_FLOOR = 1e-300  # analytic p-values below this are reported as this (never as 0)
EMPTY = (np.empty(0, dtype=np.int64), np.empty(0))


def _weights(res: Resampled, rows: np.ndarray, e: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse contrast (rows, weights): equal weights over the rows with a finite estimate."""
    ok = np.asarray(rows)[np.isfinite(res.estimate[rows, e])]
    return (ok, np.full(len(ok), 1 / len(ok))) if len(ok) else EMPTY


def _combine(parts, coefs) -> tuple[np.ndarray, np.ndarray]:
    """sum_j coef_j * contrast_j (contrasts as (rows, weights))."""
    parts = [(r, w * c) for (r, w), c in zip(parts, coefs) if len(r)]
    if not parts:
        return EMPTY
    return np.concatenate([r for r, _ in parts]), np.concatenate([w for _, w in parts])


def _n_samples(res: Resampled, rows: np.ndarray) -> int:
    mask = np.zeros(len(res.universe.sample_id), dtype=bool)
    for i in rows:
        mask[res.sample_idx[i]] = True
    return int(mask.sum())


def summarise(res: Resampled, contrasts: list, e: int, ci_level: float) -> pd.DataFrame:
    """estimate, ci_low, ci_high, p and the null columns of each contrast ((rows, weights) pairs)."""
    q = len(contrasts)
    rows = np.concatenate([r for r, _ in contrasts]) if q else np.empty(0, dtype=np.int64)
    data = np.concatenate([w for _, w in contrasts]) if q else np.empty(0)
    which = np.repeat(np.arange(q), [len(r) for r, _ in contrasts])
    c = sparse.csr_matrix((data, (which, rows)), shape=(q, len(res.estimate)))
    nan = np.where(np.diff(c.indptr) == 0, np.nan, 0.0)
    theta = c @ np.nan_to_num(res.estimate[:, e]) + nan
    draws = (c @ res.boot[:, :, e].T).T
    lo, hi, p = bc_interval(draws, theta, ci_level)
    floor = 1 / (1 + draws.shape[0])
    live = np.isfinite(theta)
    out = {
        "estimate": theta,
        "ci_low": lo + nan,
        "ci_high": hi + nan,
        "p": np.maximum(p, floor) + nan,
        "p_at_floor": (p <= floor) & live,
    }
    if res.null.shape[0]:
        nd = (c @ res.null[:, :, e].T).T
        nlo, nhi = percentile_ci(nd, ci_level)
        m = nd.mean(axis=0)
        n_extreme = (np.abs(nd - m) >= np.abs(theta - m) - 1e-12).sum(axis=0)
        out.update(
            null_low=nlo + nan,
            null_high=nhi + nan,
            p_perm=(1 + n_extreme) / (1 + nd.shape[0]) + nan,
            p_perm_at_floor=(n_extreme == 0) & live,
        )
    else:
        out.update(null_low=np.full(q, np.nan), null_high=np.full(q, np.nan), p_perm=np.full(q, np.nan))
        out["p_perm_at_floor"] = np.zeros(q, dtype=bool)
    return pd.DataFrame(out)


def satterthwaite_df(var: float, v_orders: float, k: int, n_boot: int) -> float:
    """Degrees of freedom of ``var`` = v_orders (k - 1 df) + the rest (bootstrap, n_boot - 1 df),
    Satterthwaite's approximation; k - 1 when the rest is not positive (module docstring)."""
    v_boot = var - v_orders
    if v_boot <= 0:
        return float(k - 1)
    if v_orders <= 0:
        return np.inf
    return max(float(k - 1), var**2 / (v_orders**2 / (k - 1) + v_boot**2 / max(1, n_boot - 1)))


def random_effects(y: np.ndarray, boot: np.ndarray, ci_level: float) -> dict:
    """Sample-aware HKSJ pool of order estimates ``y`` (k,) with bootstrap replicates ``boot``
    (B, k) (module docstring). Returns estimate, ci_low, ci_high, p, tau2, df (Satterthwaite)."""
    keep = np.isfinite(y)
    y, boot = y[keep], boot[:, keep]
    k = len(y)
    out = dict.fromkeys(["estimate", "ci_low", "ci_high", "p", "tau2", "df"], np.nan)
    if k < 2 or boot.shape[0] < 2:
        return out
    sigma = np.atleast_2d(np.cov(boot, rowvar=False))
    s = float(np.sum((y - y.mean()) ** 2))
    tau2 = max(0.0, (s - np.trace(sigma) + sigma.sum() / k) / (k - 1))
    var = sigma.sum() / k**2 + tau2 / k
    df = np.inf if tau2 == 0 else satterthwaite_df(var, s / (k * (k - 1)), k, boot.shape[0])
    se = float(np.sqrt(var))
    mu = float(y.mean())
    crit = stats.t.ppf(0.5 + ci_level / 2, df)
    out.update(
        estimate=mu,
        ci_low=mu - crit * se,
        ci_high=mu + crit * se,
        tau2=tau2,
        df=float(df),
        p=max(float(2 * stats.t.sf(abs(mu) / se, df)), P_FLOOR) if se > 0 else np.nan,
    )
    return out


def _groups(res: Resampled, group: Sequence[str]):
    meta = res.rows.reset_index(drop=True)
    for key, g in meta.groupby(list(group), sort=True):
        yield dict(zip(group, key if isinstance(key, tuple) else (key,))), g


def cell_rows(res: Resampled, ci_level: float) -> pd.DataFrame:
    """One row per cell and estimator (pooling ``none``)."""
    meta = res.rows.reset_index(drop=True)
    parts = []
    for e, name in enumerate(ESTIMATORS):
        s = summarise(res, [(np.array([i]), np.ones(1)) for i in range(len(meta))], e, ci_level)
        parts.append(
            pd.concat([meta.drop(columns="n"), s], axis=1).assign(
                estimator=name, pooling="none", n_samples=meta["n"].to_numpy(), n_orders=1
            )
        )
    return pd.concat(parts, ignore_index=True)


def pooled_rows(res: Resampled, group: Sequence[str], ci_level: float, order_key: str = "order_seed") -> pd.DataFrame:
    """Fixed and random pooled rows per ``group`` (kind, outcome, ...), per boundary and ``all``."""
    parts = []
    orders_all = res.rows[order_key].to_numpy()
    n_samples = {}
    for e, name in enumerate(ESTIMATORS):
        boot_e = res.boot[:, :, e]
        specs, fixed_c, random_rows, random_c = [], [], [], []
        for ident, g in _groups(res, group):
            levels = [(b, gb.index.to_numpy()) for b, gb in g.groupby("boundary", sort=True)] + [
                ("all", g.index.to_numpy())
            ]
            for boundary, idx in levels:
                orders = orders_all[idx]
                uo = np.unique(orders)
                key = (tuple(ident.values()), boundary)
                if key not in n_samples:
                    n_samples[key] = _n_samples(res, idx)
                base = {**ident, "boundary": boundary, "n_samples": n_samples[key], "n_orders": len(uo)}
                specs.append({**base, "estimator": name, "pooling": "fixed"})
                fixed_c.append(_weights(res, idx, e))
                per_order = [_weights(res, idx[orders == o], e) for o in uo]
                live = [po for po in per_order if len(po[0])]
                y = np.array([res.estimate[r, e] @ w for r, w in live])
                ran = random_effects(
                    y, np.stack([boot_e[:, r] @ w for r, w in live], axis=1) if live else np.empty((0, 0)), ci_level
                )
                ran.pop("tau2")
                random_rows.append({**base, "estimator": name, "pooling": "random", **ran, "p_at_floor": False})
                # the null of the same equal-weight mean over orders
                random_c.append(_combine(live, [1 / len(live)] * len(live)) if np.isfinite(ran["estimate"]) else EMPTY)
        if not specs:
            continue
        parts.append(pd.concat([pd.DataFrame(specs), summarise(res, fixed_c, e, ci_level)], axis=1))
        nul = summarise(res, random_c, e, ci_level)[NULL_COLUMNS]
        parts.append(pd.concat([pd.DataFrame(random_rows), nul], axis=1))
    return pd.concat(parts, ignore_index=True)


def trend_rows(res: Resampled, group: Sequence[str], ci_level: float, strides: dict) -> pd.DataFrame:
    """Slope of the fixed-pooled per-boundary estimate over boundary index, per ``group``.

    slope = sum_k (k - kbar)(theta_k - thetabar) / sum_k (k - kbar)^2 over the boundaries used
    (every ``strides[kind]``-th from the first, so windowed deltas share no epochs), as a
    contrast of the cells (so its CI and p come from the same draws). NaN below 2 boundaries.
    """
    out = []
    for e, name in enumerate(ESTIMATORS):
        specs, contrasts = [], []
        for ident, g in _groups(res, group):
            stride = strides.get(ident.get("kind"), 1)
            bounds = sorted(g["boundary"].unique())
            used = [b for b in bounds if (b - bounds[0]) % stride == 0]
            per_b = [_weights(res, g.index[g["boundary"] == b].to_numpy(), e) for b in used]
            ok = [i for i, w in enumerate(per_b) if len(w[0])]
            c = EMPTY
            if len(ok) >= 2:
                k = np.asarray(used, float)[ok]
                c = _combine([per_b[i] for i in ok], (k - k.mean()) / np.sum((k - k.mean()) ** 2))
            specs.append(
                {
                    **ident,
                    "boundary": "all",
                    "estimator": name,
                    "pooling": "fixed",
                    "n_boundaries": len(ok),
                    "boundaries_used": ",".join(str(int(used[i])) for i in ok),
                    "stride": stride,
                    "n_samples": _n_samples(res, g.index.to_numpy()),
                    "n_orders": g["order_seed"].nunique(),
                }
            )
            contrasts.append(c)
        if specs:
            s = summarise(res, contrasts, e, ci_level).drop(columns=NULL_COLUMNS)
            out.append(pd.concat([pd.DataFrame(specs), s], axis=1))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def difference_rows(
    res: Resampled, factors: Sequence[str], primary: dict, group: Sequence[str], ci_level: float
) -> pd.DataFrame:
    """Paired difference of the fixed-pooled (all boundaries) estimate: each condition minus the
    primary one, per ``group`` (kind, outcome) and estimator, from the same draws."""
    meta = res.rows.reset_index(drop=True)
    is_primary = np.logical_and.reduce([meta[f] == primary[f] for f in factors])
    prim_rows = {k: g.index.to_numpy() for k, g in meta[is_primary].groupby(list(group), sort=True)}
    out = []
    for e, name in enumerate(ESTIMATORS):
        specs, contrasts = [], []
        for ident, g in _groups(res, list(factors) + list(group)):
            if all(ident[f] == primary[f] for f in factors):
                continue
            gkey = tuple(ident[c] for c in group)
            p_idx = prim_rows.get(gkey if len(gkey) > 1 else gkey[0], np.empty(0, dtype=np.int64))
            idx = g.index.to_numpy()
            wc, wp = _weights(res, idx, e), _weights(res, p_idx, e)
            c = _combine([wc, wp], [1.0, -1.0]) if len(wc[0]) and len(wp[0]) else EMPTY
            specs.append(
                {
                    **ident,
                    "boundary": "all",
                    "estimator": name,
                    "pooling": "fixed",
                    "metric": "pooled_estimate_difference",
                    "task": pd.NA,
                    "n_samples": _n_samples(res, np.r_[idx, p_idx]),
                    "n_orders": g["order_seed"].nunique(),
                }
            )
            contrasts.append(c)
        if specs:
            s = summarise(res, contrasts, e, ci_level).drop(columns=NULL_COLUMNS)
            out.append(pd.concat([pd.DataFrame(specs), s], axis=1))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()
