"""Condition comparisons: accuracy per task, paired with the primary condition over class orders.

(The pooled memo-outcome association of each condition minus the primary's comes from the
shared sample bootstrap: ``memplast.stats.pooling.difference_rows``.)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats

from memplast.stats.common import CONDITION_KEYS, PRIMARY, RUN_KEYS, key_dict, require, require_finite

ACCURACY_METRICS = ("test_acc", "dormant_units")


def accuracy_differences(
    summary: pd.DataFrame, primary: Mapping[str, str] | None = None, ci_level: float = 0.95
) -> pd.DataFrame:
    """Per condition (other than the primary), metric and task: paired difference over class orders.

    For metric m in ``ACCURACY_METRICS`` present in ``summary``, d_o = m(condition, order o, task)
    - m(primary, o, task) over the orders both have: estimate = mean d, CI = mean -+
    t_{n-1} sd / sqrt(n), p = paired t test (scipy ``ttest_rel``; continuous, so its smallest
    attainable p is not bounded away from 0). n_orders = pairs; NaN CI and p below 2 pairs.
    Raises ValueError if the primary condition is absent.
    """
    primary = dict(PRIMARY if primary is None else primary)
    require(summary, RUN_KEYS + ["task", "test_acc"], "accuracy_differences")
    require_finite(summary, ["test_acc"], "accuracy_differences")
    is_p = np.logical_and.reduce([summary[k] == primary[k] for k in CONDITION_KEYS])
    if not is_p.any():
        raise ValueError(f"accuracy_differences: primary condition {primary} not in the summary table")
    metrics = [m for m in ACCURACY_METRICS if m in summary.columns]
    prim = summary[is_p].set_index(["order_seed", "task"])
    rows = []
    for cond, g in summary[~is_p].groupby(CONDITION_KEYS, sort=True):
        ident = key_dict(CONDITION_KEYS, cond)
        g = g.set_index(["order_seed", "task"])
        for m in metrics:
            pair = pd.concat([g[m].rename("c"), prim[m].rename("p")], axis=1, join="inner").dropna()
            for task, t in pair.groupby(level="task", sort=True):
                d = (t["c"] - t["p"]).to_numpy(float)
                row = {
                    **ident,
                    "metric": m,
                    "task": task,
                    "boundary": "all",
                    "estimator": "paired_mean_difference",
                    "pooling": "none",
                    "p_at_floor": False,  # paired t over class orders
                    "estimate": d.mean(),
                    "ci_low": np.nan,
                    "ci_high": np.nan,
                    "p": np.nan,
                    "n_samples": np.nan,
                    "n_orders": len(d),
                }
                if len(d) >= 2 and np.ptp(d) > 0:
                    se = d.std(ddof=1) / np.sqrt(len(d))
                    crit = stats.t.ppf(0.5 + ci_level / 2, len(d) - 1)
                    row.update(
                        ci_low=d.mean() - crit * se,
                        ci_high=d.mean() + crit * se,
                        p=float(stats.ttest_rel(t["c"], t["p"]).pvalue),
                    )
                rows.append(row)
    return pd.DataFrame(rows)
