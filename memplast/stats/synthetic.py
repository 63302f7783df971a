"""Synthetic deltas and summary tables with planted effects (tests, figures, benchmarks).

``synthetic_deltas`` makes a realistic table in the ``deltas.parquet`` schema; the calibration
tests use the leaner generator in ``memplast.stats.calibration``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from memplast.stats.common import CONDITION_KEYS, PRIMARY, rng_for


def synthetic_deltas(
    n_orders: int = 2,
    n_classes: int = 10,
    classes_per_task: int = 2,
    n_per_class: int = 75,
    effect: float = 0.5,
    trend: float = 0.0,
    mediated: tuple[float, float] = (0.6, 0.5),
    class_confound: float = 1.0,
    nan_fraction: float = 0.01,
    noise_fraction: float = 0.05,
    conditions: Sequence[Mapping[str, str]] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
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
            rs = rng_for(seed, *cond.values(), order_seed)
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
                    eps = lambda: sd * rs.normal(size=m)  # noqa: B023 (called within the iteration)
                    dorm = np.round(0.02 * (a * zk + eps()), 3)
                    d_loss = (
                        (effect + trend * k) * zk + b * dorm / 0.02 + class_confound * uk + 0.3 * np.log(loss_t) + eps()
                    )
                    d_log_grad = -0.5 * effect * zk + eps()
                    d_log_grad[rs.random(m) < nan_fraction] = np.nan
                    frame = pd.DataFrame(
                        {
                            "order_seed": order_seed,
                            **cond,
                            "sample_id": sample_id[rows],
                            "label": label[rows],
                            "boundary": k,
                            "is_old": is_old,
                            "noisy": noisy[rows],
                            "kind": kind,
                            "memo": memo[rows],
                            "memo_pct": memo_pct[rows],
                            "loss_t": loss_t,
                            "d_loss": d_loss,
                            "d_log_grad": d_log_grad,
                            "grad_drop": g_t * (1 - np.exp(d_log_grad)),
                            "d_input_grad": 0.3 * zk + eps(),
                            "d_margin": -0.8 * d_loss + eps(),
                            "d_dormant_t0": np.round(dorm * 0.5, 3),
                            "d_dormant_t0.001": np.round(dorm * 0.8, 3),
                            "d_dormant_t0.01": dorm,
                            "drift_after": np.abs(0.5 + 0.2 * zk + eps()),
                            "align_dot": align_cos * g_t,
                            "align_cos": align_cos,
                            "pred_forget": pred_forget,
                        }
                    )
                    frame["d_drift"] = frame["drift_after"] - 0.5  # after minus a constant before-window drift
                    # new classes have no loss before the boundary (old-class mask), as in memplast.deltas
                    frame.loc[~is_old, ["loss_t", "d_loss", "d_log_grad", "grad_drop", "d_margin"]] = np.nan
                    frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def synthetic_summary(
    n_orders: int = 5,
    n_tasks: int = 5,
    conditions: Sequence[Mapping[str, str]] | None = None,
    shift: Mapping[tuple, float] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
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
                rows.append(
                    {
                        "order_seed": order_seed,
                        **cond,
                        "task": task,
                        "test_acc": acc,
                        "val_acc": acc + rng.normal(0, 0.01),
                        "dormant_units": 0.05 * task * (decay > 0) + 0.01,
                        "effective_rank": 50 - task,
                        "rank99": 10 - 0.5 * task,
                        "mean_abs_weight": 0.01 + 0.001 * task,
                    }
                )
    return pd.DataFrame(rows)
