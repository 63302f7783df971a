"""Regression that respects the design: memo as a within-cell rank, fixed effects, clustered by sample.

No mixed model: a random intercept per sample over ~10^6 rows is beyond statsmodels' MixedLM,
and a per-class intercept (what it could fit) treats repeated samples as independent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm

from memplast.stats.common import MIN_N, finite, require

P_FLOOR = 1e-300  # analytic p-values below this are reported as this (never as 0)


def pct_rank(values: pd.Series, cells: list[pd.Series]) -> pd.Series:
    """Rank of ``values`` within each cell, scaled to (0, 1]: average rank / cell size."""
    return values.groupby(cells).rank(method="average", pct=True)


def ols_rank_fe(data: pd.DataFrame, outcome: str, ci_level: float = 0.95, memo: str = "memo") -> dict:
    """Coefficient of memo's within-cell rank in an OLS with class x boundary x order fixed effects.

    Rows with non-finite memo, outcome or loss_t dropped. Cell = (order_seed, boundary):
    q_i = rank(memo)_i / n_cell and q^l_i = rank(loss_t)_i / n_cell (0..1). Model
    y = beta q + gamma q^l + FE(class, boundary, order) + e, fitted by the within transformation
    (every variable demeaned within class x boundary x order; identical beta to the dummy
    regression), covariance clustered by sample_id (statsmodels ``cov_type="cluster"``, normal
    reference). beta = outcome change from the lowest to the highest memo rank within a class.
    Returns estimate, ci_low, ci_high, p (floored at 1e-300), n (rows), n_samples (clusters).
    """
    require(data, ["sample_id", "label", "boundary", "order_seed", "loss_t", memo, outcome], "ols_rank_fe")
    d = finite(data, [memo, outcome, "loss_t"])
    out = {
        "estimate": np.nan,
        "ci_low": np.nan,
        "ci_high": np.nan,
        "p": np.nan,
        "n": len(d),
        "n_samples": d["sample_id"].nunique(),
    }
    if len(d) < MIN_N + 2 or d[memo].nunique() < 2:
        return out
    cells = [d["order_seed"], d["boundary"]]
    frame = pd.DataFrame(
        {"y": d[outcome].astype(float), "q": pct_rank(d[memo], cells), "ql": pct_rank(d["loss_t"], cells)}
    )
    fe = [d["label"], d["boundary"], d["order_seed"]]
    demeaned = frame - frame.groupby(fe).transform("mean")
    if demeaned["q"].abs().max() < 1e-12:
        return out
    res = sm.OLS(demeaned["y"].to_numpy(), demeaned[["q", "ql"]].to_numpy()).fit(
        cov_type="cluster", cov_kwds={"groups": d["sample_id"].to_numpy()}
    )
    lo, hi = res.conf_int(1 - ci_level)[0]
    out.update(
        estimate=float(res.params[0]), ci_low=float(lo), ci_high=float(hi), p=max(float(res.pvalues[0]), P_FLOOR)
    )
    return out
