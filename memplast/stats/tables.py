"""Every results/stats table from the pooled deltas (``run_all``) and the condition comparisons.

Tables and their BH families (``p_bh`` adjusts the ``p`` the row reports, within the family;
``p_perm_bh`` adjusts ``p_perm`` in the same family where both are shown: headline, pooled,
per_boundary). ``p_at_floor`` / ``p_perm_at_floor`` mark p-values at the resampling floor 1/(B+1)
(bounds), ``generalises_to`` what each row is about (``common.GENERALISES_TO``):

- ``headline``: pooled rows with boundary ``all`` and pooling ``fixed`` (the answer; these class
  orders), the same rows and p_bh as in ``pooled``, with the matching random-effects row (new
  class orders) as ``random_*`` columns from ``RANDOM_MIN_ORDERS`` orders on;
- ``pooled``: per boundary and ``all``, fixed and random; family (estimator, pooling, level),
  level = ``all`` or per-boundary, over outcomes x kinds (x boundaries);
- ``per_boundary``: one cell per class order (pooling ``none``); family (estimator) over
  outcomes x kinds x boundaries x orders;
- ``trend``: slope over boundaries; family (estimator) over outcomes x kinds;
- ``models``: OLS rank/FE clustered by sample; family: outcomes x kinds;
- ``deciles``: top-minus-bottom p within (run, kind) over outcomes x boundaries;
- ``tails``: within (run, kind) over scores x boundaries; ``mediation``: acme_p within (run, kind);
- ``cross_sample``: descriptive; ``windowed_correlation_results``: legacy schema, unadjusted;
- ``conditions`` (``compare_conditions``): family (metric, estimator) over conditions x tasks
  (accuracy) or conditions x outcomes x kinds (pooled-estimate differences).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

import numpy as np
import pandas as pd

from memplast.stats import effects, models, pooling
from memplast.stats.common import (
    CONDITION_KEYS,
    KINDS,
    POOLED_COLUMNS,
    PRIMARY,
    RUN_KEYS,
    add_bh,
    generalises_to,
    key_dict,
    n_finite,
    old_rows,
    outcomes_of,
    require,
    require_finite,
    rng_for,
    rows_of_kinds,
)
from memplast.stats.conditions import accuracy_differences
from memplast.stats.correlation import windowed_correlation_columns, windowed_correlation_results
from memplast.stats.resampling import resample

log = logging.getLogger("memplast.stats")

ROW_COLUMNS = POOLED_COLUMNS + pooling.NULL_COLUMNS + ["p_perm_bh"]
# random-effects columns of headline.csv (the matching ``random`` row of pooled.csv), filled from
# ``RANDOM_MIN_ORDERS`` class orders on (fewer: NaN; the between-order variance needs them)
RANDOM_MIN_ORDERS = 5
HEADLINE_RANDOM = {c: f"random_{c}" for c in ("estimate", "ci_low", "ci_high", "p", "df")}
# Sign that makes "larger = more plasticity lost" for the tails analysis (positive = worse).
PLASTICITY_LOSS_SIGN = {
    "d_loss": 1,
    "grad_drop": 1,
    "d_log_grad": -1,
    "d_margin": -1,
    "pred_forget": 1,
    "d_drift": 1,
    "align_dot": -1,
    "align_cos": -1,
}


def boundary_stride(epochs_per_task: int, window: int) -> int:
    """Every stride-th boundary keeps windows [E_k-w+1, E_k+w] disjoint: ceil(2w / E) if 2w > E."""
    return 1 if 2 * window <= epochs_per_task else math.ceil(2 * window / epochs_per_task)


def _order(table: pd.DataFrame, lead: list) -> pd.DataFrame:
    table = table.assign(generalises_to=generalises_to(table)) if "pooling" in table else table
    cols = lead + [c for c in ROW_COLUMNS if c in table.columns]
    rest = [c for c in table.columns if c not in cols]
    return table[cols + rest]


def _level(table: pd.DataFrame) -> pd.Series:
    return np.where(table["boundary"].astype(str) == "all", "all", "boundary")


def association_tables(old: pd.DataFrame, cfg: Mapping, outcomes: list, kinds: list) -> dict[str, pd.DataFrame]:
    """headline, pooled, per_boundary and trend for the condition(s) in ``old`` (one draw set)."""
    seed, ci = int(cfg.get("seed", 0)), float(cfg.get("ci_level", 0.95))
    res = resample(
        rows_of_kinds(old, kinds),
        CONDITION_KEYS + ["kind", "order_seed", "boundary"],
        outcomes,
        int(cfg.get("n_boot", 2000)),
        int(cfg.get("n_permutations", 2000)),
        rng_for(seed, "resample"),
        threads=int(cfg.get("threads", 1)),
    )
    group = CONDITION_KEYS + ["kind", "outcome"]
    cells = pooling.cell_rows(res, ci)
    cells = add_bh(cells, ["estimator"], ["p", "p_perm"])
    pooled = pooling.pooled_rows(res, group, ci)
    family = ["estimator", "pooling", "_level"]
    pooled = add_bh(pooled.assign(_level=_level(pooled)), family, ["p", "p_perm"]).drop(columns="_level")
    strides = {"immediate": 1, "windowed": boundary_stride(int(cfg["epochs_per_task"]), int(cfg["window"]))}
    trend = add_bh(pooling.trend_rows(res, group, ci, strides), ["estimator"])
    return {
        "headline": _order(headline_rows(pooled), CONDITION_KEYS),
        "pooled": _order(pooled, CONDITION_KEYS),
        "per_boundary": _order(cells, CONDITION_KEYS + ["order_seed"]),
        "trend": _order(trend, CONDITION_KEYS),
    }


def headline_rows(pooled: pd.DataFrame) -> pd.DataFrame:
    """The fixed rows over all boundaries (these class orders), and next to each the matching
    random-effects row (new class orders) as ``random_*`` columns once there are at least
    ``RANDOM_MIN_ORDERS`` class orders (else NaN). No ``df`` column (fixed rows have none)."""
    at_all = pooled["boundary"].astype(str) == "all"
    keys = CONDITION_KEYS + ["outcome", "kind", "estimator"]
    fixed = pooled[at_all & (pooled["pooling"] == "fixed")].drop(columns="df", errors="ignore")
    ran = pooled[at_all & (pooled["pooling"] == "random")]
    ran = ran[keys + [c for c in HEADLINE_RANDOM if c in ran]].rename(columns=HEADLINE_RANDOM)
    out = fixed.merge(ran, on=keys, how="left").reset_index(drop=True)
    few = out["n_orders"] < RANDOM_MIN_ORDERS
    for c in HEADLINE_RANDOM.values():
        out[c] = out[c].astype(float).where(~few) if c in out else np.nan
    return out


def model_table(old: pd.DataFrame, cfg: Mapping, outcomes: list, kinds: list) -> pd.DataFrame:
    """``models.ols_rank_fe`` per condition, kind and outcome (pooled over boundaries and orders)."""
    rows = []
    for key, g in rows_of_kinds(old, kinds).groupby(CONDITION_KEYS + ["kind"], sort=True):
        for outcome in outcomes:
            fit = models.ols_rank_fe(g, outcome, float(cfg.get("ci_level", 0.95)))
            rows.append(
                {
                    **key_dict(CONDITION_KEYS + ["kind"], key),
                    "outcome": outcome,
                    "boundary": "all",
                    "estimator": "ols_rank_fe",
                    "pooling": "fixed",
                    "n_rows": fit.pop("n"),
                    "n_orders": g["order_seed"].nunique(),
                    **fit,
                    "p_at_floor": False,  # analytic p
                }
            )
    return _order(add_bh(pd.DataFrame(rows), []), CONDITION_KEYS)


def _per_run(old, kinds, by, fn):
    parts = []
    for key, g in rows_of_kinds(old, kinds).groupby(by, sort=True):
        parts.extend(fn(key_dict(by, key), g))
    return parts


def effect_tables(deltas: pd.DataFrame, old: pd.DataFrame, cfg: Mapping, outcomes: list, kinds: list) -> dict:
    """deciles, tails, mediation, cross_sample (per run; see ``memplast.stats.effects``)."""
    seed, n_boot, ci = int(cfg.get("seed", 0)), int(cfg.get("n_boot", 2000)), float(cfg.get("ci_level", 0.95))
    n_deciles = int(cfg.get("n_deciles", 10))
    by = RUN_KEYS + ["kind", "boundary"]

    def deciles(ident, g):
        out = []
        for outcome in outcomes:
            if n_finite(g, ["memo", outcome]) < 2 * n_deciles:
                continue
            key = tuple(ident.values())
            d = effects.decile_effects(
                g, "memo", outcome, n_deciles, n_boot, rng_for(seed, "deciles", *key, outcome).integers(2**32), ci
            )
            out.append(d.assign(**ident, outcome=outcome))
        return out

    keys = by + ["outcome"]
    parts = _per_run(old, kinds, by, deciles)
    dec = (
        pd.concat(parts, ignore_index=True)[keys + effects.DECILE_COLUMNS]
        if parts
        else pd.DataFrame(columns=keys + effects.DECILE_COLUMNS)
    )
    dec["p_bh"] = np.nan
    top = dec["term"] == "top_minus_bottom"
    if top.any():
        dec.loc[top, "p_bh"] = add_bh(dec[top], RUN_KEYS + ["kind"])["p_bh"]

    q, thr = float(cfg.get("tail_quantile", 0.01)), float(cfg.get("tail_memo_quantile", 0.9))

    def tails(ident, g):
        out = []
        for score in outcomes:
            sign = 1 if score.startswith("d_dormant") else PLASTICITY_LOSS_SIGN.get(score)
            if sign is None or not n_finite(g, [score, "memo"]):
                continue
            out.append(
                effects.tails(g, q, score, "memo", thr, largest=sign > 0).assign(**ident, score=score, direction=sign)
            )
        return out

    keys = RUN_KEYS + ["kind", "score", "direction"]
    parts = _per_run(old, kinds, RUN_KEYS + ["kind"], tails)
    tl = (
        pd.concat(parts, ignore_index=True)[keys + effects.TAIL_COLUMNS]
        if parts
        else pd.DataFrame(columns=keys + effects.TAIL_COLUMNS)
    )

    sims = int(cfg.get("mediation_sims", 200))
    tau = max(cfg.get("taus", [0.01]))
    mediators = [m for m in ("align_cos", f"d_dormant_t{tau:g}", "d_log_grad") if m in deltas.columns]

    def mediation(ident, g):
        g = g.assign(memo_rank=g["memo"].rank(pct=True))
        out = []
        for m in mediators:
            if "d_loss" not in g or n_finite(g, ["memo_rank", m, "d_loss", "loss_t"]) < 10:
                continue
            r = effects.mediation(
                g,
                "memo_rank",
                m,
                "d_loss",
                sims,
                rng_for(seed, "mediation", *ident.values(), m).integers(2**32),
                covariates=["loss_t"],
                ci_level=ci,
            )
            out.append({**ident, "exposure": "rank(memo)", "mediator": m, "outcome": "d_loss", **r})
        return out

    keys = by + ["exposure", "mediator", "outcome"]
    med = pd.DataFrame(_per_run(old, kinds, by, mediation), columns=keys + effects.MEDIATION_COLUMNS)
    cross = (
        effects.cross_sample(deltas, kinds)
        if "d_loss" in deltas.columns
        else pd.DataFrame(columns=effects.CROSS_SAMPLE_COLUMNS)
    )
    return {
        "deciles": dec,
        "tails": add_bh(tl, RUN_KEYS + ["kind"]),
        "mediation": add_bh(med, RUN_KEYS + ["kind"], ["acme_p"]),
        "cross_sample": cross,
    }


def run_all(deltas: pd.DataFrame, cfg: Mapping) -> dict[str, pd.DataFrame]:
    """Every table in ``memplast.grid.TABLES`` from the pooled deltas of the runs to analyse (usually the primary
    condition over all class orders). ``cfg``: seed, n_boot, ci_level, n_permutations,
    tail_quantile, n_deciles, mediation_sims, outcomes (the one list of outcome columns),
    epochs_per_task and window (required), taus."""
    t_start = time.perf_counter()
    for key in ("epochs_per_task", "window"):
        if key not in cfg:
            raise ValueError(f"run_all: cfg is missing {key!r}")
    outcomes = outcomes_of(cfg)
    require(
        deltas,
        RUN_KEYS + ["sample_id", "label", "boundary", "is_old", "kind", "memo", "loss_t"] + outcomes,
        "run_all deltas",
    )
    kinds = [k for k in KINDS if (deltas["kind"] == k).any()]
    is_old = deltas["is_old"].to_numpy(dtype=bool)
    rows = np.flatnonzero(is_old)
    old = deltas.iloc[rows[np.argsort(deltas["sample_id"].to_numpy()[rows], kind="stable")]]  # one copy
    require_finite(old, ["memo", "loss_t"] + outcomes, "run_all (old samples)")
    out = association_tables(old, cfg, outcomes, kinds)
    log.info("run_all: association tables in %.1f s", time.perf_counter() - t_start)
    out["models"] = model_table(old, cfg, outcomes, kinds)
    out.update(effect_tables(deltas, old, cfg, outcomes, kinds))
    tau = max(cfg.get("taus", [0.01]))
    legacy_ok = "windowed" in kinds and {"d_loss", "grad_drop", f"d_dormant_t{tau:g}"} <= set(deltas.columns)
    out["windowed_correlation_results"] = (
        windowed_correlation_results(deltas, tau) if legacy_ok else pd.DataFrame(columns=windowed_correlation_columns())
    )
    log.info("run_all: all tables in %.1f s", time.perf_counter() - t_start)
    return out


def compare_conditions(deltas: pd.DataFrame | None, summary: pd.DataFrame, cfg: Mapping) -> pd.DataFrame:
    """The conditions table: accuracy differences per task (``accuracy_differences``) and, when
    ``deltas`` of several conditions are given, the paired difference of each condition's pooled
    association (fixed, all boundaries) minus the primary's, from one shared sample bootstrap."""
    primary = dict(cfg.get("primary", PRIMARY))
    ci = float(cfg.get("ci_level", 0.95))
    parts = [accuracy_differences(summary, primary, ci)]
    if deltas is not None and len(deltas):
        outcomes = outcomes_of(cfg)
        kinds = [k for k in KINDS if (deltas["kind"] == k).any()]
        old = old_rows(deltas)
        old = old[old["kind"].isin(kinds)]
        res = resample(
            old,
            CONDITION_KEYS + ["kind", "order_seed", "boundary"],
            outcomes,
            int(cfg.get("n_boot", 2000)),
            0,
            rng_for(int(cfg.get("seed", 0)), "conditions"),
            threads=int(cfg.get("threads", 1)),
        )
        diff = pooling.difference_rows(res, CONDITION_KEYS, primary, ["kind", "outcome"], ci)
        parts.append(diff)
    table = (
        pd.concat([p for p in parts if len(p)], ignore_index=True)
        if any(len(p) for p in parts)
        else pd.DataFrame(columns=CONDITION_KEYS + ["metric", "task"] + POOLED_COLUMNS)
    )
    for c in ("outcome", "kind"):
        if c not in table:
            table[c] = pd.NA
    table = add_bh(table, ["metric", "estimator"])
    lead = CONDITION_KEYS + ["metric", "task"]
    return _order(table, lead)
