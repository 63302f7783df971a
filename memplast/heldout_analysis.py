"""Do loss of plasticity and its mitigations act on the memo-dependent held-out samples? (design §6)

Test samples only (validation samples choose the best epoch). A test sample is *memo-dependent*
by the Feldman-Zhang influence definition where that data is present, else by the neighbour proxy
(memplast/dependence.py); its continuous dependence score is the memo percentile of its top
influence pair (influence) or of its nearest same-class training neighbour (proxy).

- :func:`slice_measures`: per run (class order x condition) and task end, accuracy on the
  dependent slice, on the rest and their difference ``acc_gap``; per run, mean forgetting events
  per slice and their difference ``forgetting_gap`` (task ``-1`` = the run's mean over its task
  ends for the accuracies, the whole run for forgetting events).
- :func:`slice_comparison`: per condition, each measure's mean over class orders with its t
  interval (``contrast`` = ``level``); and each condition minus the primary one, paired over
  class orders (``contrast`` = ``vs_primary``: memplast.stats.conditions.accuracy_differences).
- :func:`dependence_association`: the within-class association (partial Spearman given class
  and the loss at the end of the sample's first task) between the dependence score and the
  number of forgetting events, from the headline's class-stratified sample bootstrap
  (memplast.stats.resampling), pooled over class orders (memplast.stats.pooling).
- :func:`answer_sentence`: the report's one sentence.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from memplast.stats.common import CONDITION_KEYS, PRIMARY, RUN_KEYS, rng_for

ALL_TASKS = -1
MEASURES = ("acc_dependent", "acc_rest", "acc_gap", "forgetting_dependent", "forgetting_rest", "forgetting_gap")


def dependence_of(dep: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """(test sample_id, dependent, score) and the definition used: ``influence`` when the table has
    Feldman-Zhang pairs, else ``proxy``."""
    test = dep[dep["split"] == "test"]
    if "dependent_influence" in test and test["fz_top_influence"].notna().any():
        out = test.assign(dependent=test["dependent_influence"].astype(bool), score=test["fz_memo_pct"])
        return out[["sample_id", "dependent", "score"]], "influence"
    out = test.assign(dependent=test["dependent_proxy"].astype(bool), score=test["nn_memo_pct"])
    return out[["sample_id", "dependent", "score"]], "proxy"


def slice_measures(ends: pd.DataFrame, samples: pd.DataFrame, dep: pd.DataFrame) -> pd.DataFrame:
    """Long table RUN_KEYS, task, measure, value (see the module docstring). ``ends``: task-end test
    rows of the held-out tables (RUN_KEYS, sample_id, task, correct); ``samples``: their per-sample
    summaries (RUN_KEYS, sample_id, forgetting_events); ``dep``: :func:`dependence_of`'s first item."""
    flag = dep.set_index("sample_id")["dependent"]
    missing = ~ends["sample_id"].isin(flag.index)
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} test rows have no dependence entry; rebuild results/memo/heldout_dependence.parquet"
        )
    e = ends.assign(slice=np.where(ends["sample_id"].map(flag), "dependent", "rest"))
    acc = e.pivot_table(index=RUN_KEYS + ["task"], columns="slice", values="correct", aggfunc="mean")
    acc = acc.reindex(columns=["dependent", "rest"]).add_prefix("acc_").astype(float)
    acc["acc_gap"] = acc["acc_dependent"] - acc["acc_rest"]
    over = acc.groupby(level=RUN_KEYS).mean().assign(task=ALL_TASKS).set_index("task", append=True)
    s = samples.assign(slice=np.where(samples["sample_id"].map(flag), "dependent", "rest"))
    fg = s.pivot_table(index=RUN_KEYS, columns="slice", values="forgetting_events", aggfunc="mean")
    fg = fg.reindex(columns=["dependent", "rest"]).add_prefix("forgetting_").astype(float)
    fg["forgetting_gap"] = fg["forgetting_dependent"] - fg["forgetting_rest"]
    over = over.join(fg.assign(task=ALL_TASKS).set_index("task", append=True))
    wide = pd.concat([acc, over]).reset_index()
    return wide.melt(id_vars=RUN_KEYS + ["task"], value_vars=list(MEASURES), var_name="measure").dropna(
        subset=["value"]
    )


def slice_comparison(measures: pd.DataFrame, ci_level: float, primary: dict | None = None) -> pd.DataFrame:
    """Per condition, measure and task: the mean over class orders with its t interval (``level``),
    and the condition minus the primary condition paired over class orders (``vs_primary``)."""
    from memplast.plasticity import t_interval
    from memplast.stats.conditions import accuracy_differences

    primary = dict(PRIMARY if primary is None else primary)
    rows = []
    for key, g in measures.groupby(CONDITION_KEYS + ["measure", "task"], sort=True):
        mean, lo, hi = t_interval(g["value"].to_numpy(float), ci_level)
        rows.append({**dict(zip(CONDITION_KEYS + ["measure", "task"], key)), "contrast": "level",
                     "estimate": mean, "ci_low": lo, "ci_high": hi, "n_orders": len(g)})  # fmt: skip
    parts = [pd.DataFrame(rows)]
    is_primary = np.logical_and.reduce([measures[k] == v for k, v in primary.items()])
    if is_primary.any() and (~is_primary).any():
        for m, g in measures.groupby("measure", sort=True):
            d = accuracy_differences(g.rename(columns={"value": "test_acc"}), primary, ci_level)
            if len(d):
                parts.append(d.assign(measure=m, contrast="vs_primary")[parts[0].columns.tolist() + ["p"]])
    return pd.concat(parts, ignore_index=True)


def dependence_association(
    ends: pd.DataFrame, samples: pd.DataFrame, dep: pd.DataFrame, n_boot: int, ci_level: float, seed: int
) -> pd.DataFrame:
    """Within-class association of the dependence score with forgetting events per condition,
    pooled over class orders (fixed and random), from one class-stratified sample bootstrap."""
    from memplast.stats.pooling import pooled_rows
    from memplast.stats.resampling import resample

    first = ends.sort_values("task").drop_duplicates(RUN_KEYS + ["sample_id"])
    rows = samples.merge(first[RUN_KEYS + ["sample_id", "loss"]], on=RUN_KEYS + ["sample_id"], how="left")
    rows = rows.merge(dep[["sample_id", "score"]], on="sample_id", how="inner")
    rows = rows.rename(columns={"loss": "loss_t", "score": "memo"}).assign(boundary=0)
    rows["forgetting_events"] = rows["forgetting_events"].astype(float)
    res = resample(rows, RUN_KEYS + ["boundary"], ["forgetting_events"], n_boot, 0, rng_for(seed, "heldout"))
    out = pooled_rows(res, CONDITION_KEYS + ["outcome"], ci_level)
    return out[out["boundary"].astype(str) == "all"].drop(columns="boundary").reset_index(drop=True)


def _ci(r, pct: str, scale: float = 100.0, digits: int = 1) -> str:
    est, lo, hi = (scale * float(r[k]) for k in ("estimate", "ci_low", "ci_high"))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{est:+.{digits}f} (no interval: too few class orders)"
    return f"{est:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _verdict(r) -> str:
    lo, hi = float(r["ci_low"]), float(r["ci_high"])
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 <= hi:
        return "not resolved"
    return "larger" if lo > 0 else "smaller"


def answer_sentence(comparison: pd.DataFrame, ci_level: float, definition: str, n_dependent: int, n_test: int,
                    primary: dict | None = None, reference: str = "retrained") -> str:  # fmt: skip
    """One sentence: the primary condition's accuracy gap (memo-dependent minus other test samples,
    mean over tasks) next to the reference algorithm's, and each other condition minus the primary."""
    primary = dict(PRIMARY if primary is None else primary)
    pct = f"{100 * ci_level:g}%"
    c = comparison[(comparison["measure"] == "acc_gap") & (comparison["task"] == ALL_TASKS)]
    head = (f"**Held-out samples** ({definition} definition: {n_dependent} of {n_test} test samples "
            f"memo-dependent): accuracy on the memo-dependent test samples minus the others, mean over tasks")  # fmt: skip
    is_p = np.logical_and.reduce([c[k] == v for k, v in primary.items()])
    level = c[(c["contrast"] == "level") & is_p]
    if level.empty or n_dependent == 0:
        return head + ": not measured (no primary-condition runs or no memo-dependent test sample)."
    r = level.iloc[0]
    text = f"{head}, {primary['algorithm']} {_ci(r, pct)} points ({pct} CI over {int(r['n_orders'])} class orders)"
    diff = c[c["contrast"] == "vs_primary"]
    ref = diff[
        (diff["algorithm"] == reference) & np.logical_and.reduce([diff[k] == primary[k] for k in CONDITION_KEYS[:-1]])
    ]
    if len(ref):
        d = ref.iloc[0]
        text += (f"; {reference} − {primary['algorithm']}: {_ci(d, pct)} points, so {primary['algorithm']} loses the "
                 f"memo-dependent samples {'faster than' if _verdict(d) == 'larger' else 'not faster than' if _verdict(d) == 'smaller' else 'at a rate not resolved from that of'} {reference}")  # fmt: skip
    others = diff[diff["algorithm"] != reference]
    if len(others):
        items = [f"{'/'.join(str(o[k]) for k in CONDITION_KEYS if o[k] != primary[k])} {_ci(o, pct)} ({_verdict(o)})"
                 for _, o in others.iterrows()]  # fmt: skip
        text += "; each other condition minus the primary: " + "; ".join(items)
    return text + "."
