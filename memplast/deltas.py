"""Boundary deltas (design §5): how each sample's probe quantities change across a task boundary.

Boundary k ends task k at epoch E_k with the weights of its best-validation epoch B_k (B_k = E_k
without early stopping); task k+1 starts from them. Both windows lie on the training path: the
before-window is B_k - w + 1 .. B_k (fewer epochs if B_k is early in the task), the after-window
E_k + 1 .. E_k + w. For a per-sample quantity v(e) at probed epoch e:

- ``immediate``: after = v(E_k + 1), before = v(B_k);
- ``windowed``: after = mean of v over the after-window, before = mean over the before-window.

Deltas are after - before, except grad_drop = before - after (positive = the gradient shrank).
Logs of gradient norms are taken per epoch, then averaged (windowed d_log_grad = difference of
mean log g). A window mean is NaN if any of its values is NaN (so new-class samples, whose loss
is undefined before the boundary, get NaN loss-based deltas), except drift, whose NaNs are
skipped (drift is NaN at the first probed epoch). drift_after = drift over the after-window (its
mean; immediate: at E_k + 1), d_drift = drift_after - the same over the before-window.

The rollback (the restore of B_k over the live last epoch L = E_k) is its own quantity, the same
for both kinds: d_loss_rollback = loss(B_k) - loss(L) (likewise d_log_grad, d_margin, d_dormant*),
drift_rollback = ||h_B(x) - h_L(x)||; all 0 when nothing was restored (B_k = E_k).
Every row records best_epoch, before_first/before_last and after_first/after_last.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KINDS = ("immediate", "windowed")
AT_BOUNDARY = ("align_dot", "align_cos", "pred_forget")
LEGACY_COLUMNS = ["sample_id", "class_label", "memo", "delta_loss", "delta_grad_norm", "delta_dormant", "boundary"]


def outcome_columns(taus, score_taus) -> list[str]:
    """Every outcome column :func:`boundary_deltas` writes when the probes use dormancy thresholds
    ``taus`` and ``score_taus`` (config ``probes``): what ``stats.outcomes`` may name."""
    dormant = [f"dormant_t{t:g}" for t in taus] + [f"dormant_score_t{t:g}" for t in score_taus]
    return [
        "loss_t", "d_loss", "d_log_grad", "grad_drop", "d_input_grad", *(f"d_{c}" for c in dormant), "d_margin",
        "drift_after", "d_drift", "d_loss_rollback", "d_log_grad_rollback", "d_margin_rollback",
        *(f"d_{c}_rollback" for c in dormant), "drift_rollback", *AT_BOUNDARY,
    ]  # fmt: skip


def dormant_columns(table: pd.DataFrame) -> list[str]:
    """The overall dormancy columns (dormant_t{tau}, dormant_score_t{tau}; not the per-layer ones)."""
    return [c for c in table.columns if c.startswith("dormant_") and "_L" not in c]


def _mean(values: pd.DataFrame, epochs, skipna: bool = False) -> pd.DataFrame:
    """Per sample, the mean of every column over the given probed epochs."""
    sel = values[values["epoch"].isin(list(epochs))].drop(columns="epoch")
    return sel.groupby("sample_id", sort=True).mean(skipna=skipna)


def boundary_deltas(probe_table: pd.DataFrame, boundary_epoch: int, window: int) -> pd.DataFrame:
    """One row per (sample_id, kind) for one boundary from its long probe table (one row per sample
    and probed epoch, with ``boundary``, ``role`` and ``best_epoch``; see ``probes.probe_boundary``).
    Columns: sample_id, label, boundary, is_old, kind, best_epoch, before_first, before_last,
    after_first, after_last, loss_t, d_loss, d_log_grad, grad_drop, d_input_grad, d_dormant...,
    d_margin, drift_after, d_drift, the rollback columns, align_dot, align_cos, pred_forget (module
    docstring; loss_t and the alignment columns are the values at B_k for both kinds)."""
    t, e = probe_table, int(boundary_epoch)
    for c in ("boundary", "best_epoch"):
        if c not in t.columns or t[c].nunique() != 1:
            raise ValueError(f"boundary_deltas: the probe table needs a '{c}' column with one value")
    if "role" not in t.columns or not set(t["role"]) <= {"before", "after", "live"}:
        raise ValueError("boundary_deltas: the probe table needs a 'role' column (before / after / live)")
    best = int(t["best_epoch"].iloc[0])
    if best > e:
        raise ValueError(f"boundary_deltas: best epoch {best} after the boundary epoch {e}")
    after_need = list(range(e + 1, e + window + 1))
    t = t[
        ((t["role"] == "before") & (t["epoch"] > best - window) & (t["epoch"] <= best))
        | ((t["role"] == "after") & t["epoch"].isin(after_need))
        | (t["role"] == "live")
    ]
    if t.duplicated(["sample_id", "epoch", "role"]).any():
        raise ValueError("boundary_deltas: duplicate (sample_id, epoch, role) rows in the probe table")
    before_ep = sorted(t.loc[t["role"] == "before", "epoch"].unique())
    if not before_ep or before_ep[-1] != best or before_ep != list(range(before_ep[0], best + 1)):
        raise ValueError(
            f"boundary_deltas: boundary epoch {e}, best epoch {best}: the before-window epochs "
            f"{before_ep} must be consecutive and end at the best epoch"
        )
    if missing := sorted(set(after_need) - set(t.loc[t["role"] == "after", "epoch"])):
        raise ValueError(f"boundary_deltas: boundary epoch {e}, window {window}: epochs {missing} not probed")
    n_points = len(before_ep) + window + int((t["role"] == "live").any())
    if (t.groupby("sample_id").size() != n_points).any():
        raise ValueError("boundary_deltas: not every sample is probed at every epoch of the window")

    dormant = dormant_columns(t)
    cols = ["loss", "margin", "grad_norm", "input_grad_norm", *dormant, "drift"]
    path = t[t["role"] != "live"]
    values = path[["sample_id", "epoch", *cols]].copy()
    values["log_grad"] = np.log(values["grad_norm"])
    values["log_input_grad"] = np.log(values["input_grad_norm"])
    at_best = values[values["epoch"] == best].set_index("sample_id").sort_index()
    live = t[t["role"] == "live"]
    if len(live):
        live = live[["sample_id", *cols]].assign(log_grad=np.log(live["grad_norm"])).set_index("sample_id").sort_index()
    else:  # nothing restored: the live last epoch is B_k itself
        live = at_best.assign(drift=0.0)

    meta = t[(t["role"] == "before") & (t["epoch"] == best)].set_index("sample_id").sort_index()
    frames = []
    for kind in KINDS:
        before_w, after_w = ([best], [e + 1]) if kind == "immediate" else (before_ep, after_need)
        before, after = _mean(values, before_w), _mean(values, after_w)
        drift_b = _mean(values[["sample_id", "epoch", "drift"]], before_w, skipna=True)["drift"]
        drift_a = _mean(values[["sample_id", "epoch", "drift"]], after_w, skipna=True)["drift"]
        d = pd.DataFrame(
            {
                "sample_id": meta.index,
                "label": meta["label"].to_numpy(),
                "boundary": meta["boundary"].to_numpy(),
                "is_old": meta["is_old"].to_numpy(dtype=bool),
                "kind": kind,
                "best_epoch": best,
                "before_first": before_w[0],
                "before_last": before_w[-1],
                "after_first": after_w[0],
                "after_last": after_w[-1],
                "loss_t": meta["loss"].to_numpy(),
            }
        )
        d["d_loss"] = (after["loss"] - before["loss"]).to_numpy()
        d["d_log_grad"] = (after["log_grad"] - before["log_grad"]).to_numpy()
        d["grad_drop"] = (before["grad_norm"] - after["grad_norm"]).to_numpy()
        d["d_input_grad"] = (after["log_input_grad"] - before["log_input_grad"]).to_numpy()
        for c in dormant:
            d[f"d_{c}"] = (after[c] - before[c]).to_numpy()
        d["d_margin"] = (after["margin"] - before["margin"]).to_numpy()
        d["drift_after"] = drift_a.to_numpy()
        d["d_drift"] = (drift_a - drift_b).to_numpy()
        d["d_loss_rollback"] = (at_best["loss"] - live["loss"]).to_numpy()
        d["d_log_grad_rollback"] = (at_best["log_grad"] - live["log_grad"]).to_numpy()
        d["d_margin_rollback"] = (at_best["margin"] - live["margin"]).to_numpy()
        for c in dormant:
            d[f"d_{c}_rollback"] = (at_best[c] - live[c]).to_numpy()
        d["drift_rollback"] = live["drift"].to_numpy()
        for c in AT_BOUNDARY:
            d[c] = meta[c].to_numpy(dtype=float)
        frames.append(d)
    return pd.concat(frames, ignore_index=True)


def join_memo(deltas: pd.DataFrame, scores: pd.DataFrame, score_col: str) -> pd.DataFrame:
    """Add ``memo`` (= scores[score_col]) and ``memo_pct`` (its rank percentile in (0, 100],
    average ties, among all scored train samples: rows with split == "train" if ``scores`` has a
    split column) on sample_id. Every delta row must have a score."""
    s = scores
    if "split" in s.columns:
        s = s[s["split"] == "train"]
    s = s[["sample_id", score_col]].dropna()
    if s["sample_id"].duplicated().any():
        raise ValueError("join_memo: duplicate sample_id in the scores table")
    s = pd.DataFrame(
        {"sample_id": s["sample_id"], "memo": s[score_col].astype(float), "memo_pct": s[score_col].rank(pct=True) * 100}
    )
    out = deltas.drop(columns=["memo", "memo_pct"], errors="ignore").merge(
        s, on="sample_id", how="left", validate="many_to_one"
    )
    if n := int(out["memo"].isna().sum()):
        raise ValueError(
            f"join_memo: {n} delta rows have no '{score_col}' score (sample ids e.g. "
            f"{out.loc[out['memo'].isna(), 'sample_id'].head(5).tolist()})"
        )
    return out


def plasticity_export(deltas: pd.DataFrame, tau: float) -> pd.DataFrame:
    """The user's legacy CSV table from the windowed old-class rows of ``join_memo`` output:
    sample_id, class_label, memo, delta_loss (= d_loss), delta_grad_norm (= -grad_drop, the change
    of the window-mean gradient norm), delta_dormant (= d_dormant at ``tau``), boundary."""
    col = f"d_dormant_t{tau:g}"
    for c in ("memo", col):
        if c not in deltas.columns:
            raise ValueError(f"plasticity_export: deltas have no '{c}' column")
    w = deltas[(deltas["kind"] == "windowed") & deltas["is_old"].astype(bool)]
    out = pd.DataFrame(
        {
            "sample_id": w["sample_id"],
            "class_label": w["label"],
            "memo": w["memo"],
            "delta_loss": w["d_loss"],
            "delta_grad_norm": -w["grad_drop"],
            "delta_dormant": w[col],
            "boundary": w["boundary"],
        }
    )
    return out[LEGACY_COLUMNS].reset_index(drop=True)
