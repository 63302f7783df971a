"""Calibration of every reported interval and p-value on synthetic boundary tables.

``calibration_deltas`` generates old-/new-class rows in the deltas schema with the dependence of
a real study: the same samples at every boundary, class order and condition; a persistent
per-sample effect s_i; memo clustered by class; an outcome that depends on class (confound).
Per sample i of class c: u_c ~ N(0, 1) (fixed by ``design_seed``, as are the class orders: the
inference is about samples from these classes), e_i ~ N(0, 1), memo_i = exp(a u_c + e_i),
s_i ~ N(0, sd_s). At boundary k of order o, for old-class samples:
loss_t = exp(0.5 u_c + 0.5 eta), outcome = (beta + trend k + delta_o + shift) e_i + gamma u_c + s_i
+ 0.3 log loss_t + eps (eta, eps ~ N(0, 1)); delta_o ~ N(0, sd_o) is between-order heterogeneity;
shift is the planted effect of the second condition (``filter`` = "shifted"). So the within-class
association is carried by beta only; gamma > 0 with a > 0 is a purely class-level confound.

The truth of every quantity is its estimate on one very large table with the same classes and
class orders (``truth``). ``calibration_table`` reports, per quantity, the coverage of the
interval and the rejection rate at alpha of the p-value over replicates.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from memplast.stats import models, pooling
from memplast.stats.common import CONDITION_KEYS, PRIMARY, RUN_KEYS
from memplast.stats.resampling import resample

KEYS = CONDITION_KEYS + ["kind", "order_seed", "boundary"]
SHIFTED = {**PRIMARY, "filter": "shifted"}


def calibration_deltas(
    beta: float = 0.3,
    trend: float = 0.0,
    gamma: float = 1.0,
    a: float = 1.0,
    sd_sample: float = 1.0,
    sd_order: float = 0.0,
    shift: float | None = 0.0,
    n_orders: int = 3,
    n_classes: int = 8,
    classes_per_task: int = 2,
    n_per_class: int = 30,
    outcome: str = "d_loss",
    design_seed: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """A deltas table (one kind, ``windowed``) from the model in the module docstring; ``shift``
    None leaves out the second condition."""
    design = np.random.default_rng([design_seed, 7])
    u_class = design.normal(size=n_classes)
    orders = [design.permutation(n_classes) for _ in range(n_orders)]
    rng = np.random.default_rng([design_seed, seed])
    n = n_classes * n_per_class
    label = np.repeat(np.arange(n_classes), n_per_class)
    u, e = u_class[label], rng.normal(size=n)
    memo = np.exp(a * u + e)
    s = sd_sample * rng.normal(size=n)
    delta = sd_order * rng.normal(size=n_orders)
    conds = [(PRIMARY, 0.0)] + ([] if shift is None else [(SHIFTED, shift)])
    cols = {k: [] for k in ("order_seed", "filter", "sample_id", "boundary", "is_old", "loss_t", outcome)}
    for cond, sh in conds:
        for o, order in enumerate(orders):
            task_of_class = np.empty(n_classes, dtype=int)
            task_of_class[order] = np.arange(n_classes) // classes_per_task
            task = task_of_class[label]
            for k in range(n_classes // classes_per_task - 1):
                rows = np.flatnonzero(task <= k + 1)
                old = task[rows] <= k
                m = len(rows)
                loss_t = np.exp(0.5 * u[rows] + 0.5 * rng.normal(size=m))
                y = (
                    (beta + trend * k + delta[o] + sh) * e[rows]
                    + gamma * u[rows]
                    + s[rows]
                    + 0.3 * np.log(loss_t)
                    + rng.normal(size=m)
                )
                for key, val in (
                    ("order_seed", np.full(m, o)),
                    ("filter", np.full(m, cond["filter"], dtype=object)),
                    ("sample_id", rows),
                    ("boundary", np.full(m, k)),
                    ("is_old", old),
                    ("loss_t", np.where(old, loss_t, np.nan)),
                    (outcome, np.where(old, y, np.nan)),
                ):
                    cols[key].append(val)
    out = pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})
    sid = out["sample_id"].to_numpy()
    return out.assign(
        ordering=PRIMARY["ordering"],
        weighting=PRIMARY["weighting"],
        algorithm=PRIMARY["algorithm"],
        label=label[sid],
        kind="windowed",
        memo=memo[sid],
    )[RUN_KEYS + ["sample_id", "label", "boundary", "is_old", "kind", "memo", "loss_t", outcome]]


REP = "weighting"  # replicate tables are stacked with the replicate number in this factor


def stack(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Independent replicate tables as one table: replicate r gets its own sample ids and class
    labels (so draws and permutations stay within replicate) and ``weighting`` = r."""
    n_s = max(int(t["sample_id"].max()) + 1 for t in tables)
    n_c = max(int(t["label"].max()) + 1 for t in tables)
    return pd.concat(
        [
            t.assign(sample_id=t["sample_id"] + r * n_s, label=t["label"] + r * n_c, **{REP: r})
            for r, t in enumerate(tables)
        ],
        ignore_index=True,
    )


def evaluate(
    deltas: pd.DataFrame, n_boot: int, n_null: int, seed: int, ci_level: float = 0.95, outcome: str = "d_loss"
) -> pd.DataFrame:
    """Every reported quantity of each replicate (``weighting``) of ``deltas``: rep, quantity, key,
    estimate, ci_low, ci_high, p (the workflow's own pooling functions on one shared resample)."""
    old = deltas[deltas["is_old"]]
    rng = np.random.default_rng([seed, 99])
    res = resample(old, KEYS, [outcome], n_boot, n_null, rng)
    group = CONDITION_KEYS + ["kind", "outcome"]
    prim = PRIMARY["filter"]
    parts = []
    cells = pooling.cell_rows(res, ci_level)
    cells = cells[cells["filter"] == prim]
    parts.append(
        cells.assign(
            quantity="cell " + cells["estimator"],
            key=cells["order_seed"].astype(str) + "/" + cells["boundary"].astype(str),
        )
    )
    pooled = pooling.pooled_rows(res, group, ci_level)
    pooled = pooled[pooled["filter"] == prim]
    level = np.where(pooled["boundary"].astype(str) == "all", "all", "boundary")
    parts.append(
        pooled.assign(
            quantity=pooled["pooling"] + " " + level + " " + pooled["estimator"], key=pooled["boundary"].astype(str)
        )
    )
    perm = pooled[pooled["pooling"] == "fixed"]
    perm_level = np.where(perm["boundary"].astype(str) == "all", "all", "boundary")
    parts.append(
        perm.assign(
            quantity="p_perm " + perm_level + " " + perm["estimator"],
            key=perm["boundary"].astype(str),
            p=perm["p_perm"],
            ci_low=np.nan,
            ci_high=np.nan,
        )
    )
    trend = pooling.trend_rows(res, group, ci_level, {"windowed": 1})
    trend = trend[trend["filter"] == prim]
    parts.append(trend.assign(quantity="trend " + trend["estimator"], key="all"))
    if (deltas["filter"] != prim).any():
        diff = pooling.difference_rows(res, ["filter"], {"filter": prim}, [REP, "kind", "outcome"], ci_level)
        parts.append(diff.assign(quantity="condition difference " + diff["estimator"], key="all"))
    fits = []
    for rep, g in old[old["filter"] == prim].groupby(REP, sort=True):
        fits.append({REP: rep, "quantity": "ols_rank_fe", "key": "all", **models.ols_rank_fe(g, outcome, ci_level)})
    parts.append(pd.DataFrame(fits))
    cols = [REP, "quantity", "key", "estimate", "ci_low", "ci_high", "p"]
    return pd.concat([p[cols] for p in parts], ignore_index=True).rename(columns={REP: "rep"})


def truth(scenario: Mapping, n_per_class: int = 4000) -> pd.DataFrame:
    """Estimate of every quantity on one table with ``n_per_class`` samples per class (population)."""
    big = calibration_deltas(**{**scenario, "n_per_class": n_per_class, "sd_order": 0.0}, seed=10**6)
    out = evaluate(stack([big]), 2, 0, 0)
    return out[["quantity", "key", "estimate"]].rename(columns={"estimate": "truth"})


def calibration_runs(
    scenario: Mapping,
    n_rep: int,
    n_boot: int = 200,
    n_null: int = 100,
    alpha: float = 0.05,
    seed: int = 0,
    truth_table: pd.DataFrame | None = None,
    per_call: int = 100,
) -> pd.DataFrame:
    """One row per replicate and quantity: covered (truth within the CI) and rejected (p < alpha).
    Replicates are evaluated ``per_call`` at a time (stacked tables, independent draws)."""
    t = truth(scenario) if truth_table is None else truth_table
    parts = []
    for start in range(0, n_rep, per_call):
        reps = range(start, min(n_rep, start + per_call))
        tables = [calibration_deltas(**scenario, seed=seed * 100_000 + rep) for rep in reps]
        out = evaluate(stack(tables), n_boot, n_null, seed=seed * 100_000 + start)
        out["rep"] += start
        parts.append(out)
    out = pd.concat(parts, ignore_index=True).merge(t, on=["quantity", "key"], how="left")
    covered = ((out["ci_low"] <= out["truth"]) & (out["truth"] <= out["ci_high"])).astype(float)
    out["covered"] = covered.where(out["ci_low"].notna() & out["truth"].notna())
    out["rejected"] = (out["p"] < alpha).astype(float).where(out["p"].notna())
    return out


def calibration_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per quantity: replicates, mean truth, coverage, rejection rate, and Monte Carlo SEs
    (binomial sd over replicates of the per-replicate mean, so correlated cells count once)."""
    per_rep = runs.groupby(["quantity", "rep"]).agg(
        covered=("covered", "mean"), rejected=("rejected", "mean"), truth=("truth", "mean")
    )
    g = per_rep.groupby("quantity")
    out = g.agg(
        n_rep=("covered", "size"), truth=("truth", "mean"), coverage=("covered", "mean"), rejection=("rejected", "mean")
    )
    out["coverage_se"] = g["covered"].std() / np.sqrt(out["n_rep"])
    out["rejection_se"] = g["rejected"].std() / np.sqrt(out["n_rep"])
    return out.reset_index()


__all__ = ["calibration_deltas", "calibration_runs", "calibration_table", "evaluate", "stack", "truth"]
