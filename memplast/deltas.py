"""Boundary deltas (design §5): how each sample's probe quantities change across a task boundary.

Boundary k ends task k at epoch E_k (the restored best-validation model) and starts task k+1.
For a per-sample quantity v(e) at probed epoch e:

- ``immediate``: after = v(E_k + 1), before = v(E_k);
- ``windowed``: after = mean of v over (E_k, E_k + w], before = mean over (E_k - w, E_k].

Deltas are after - before, except grad_drop = before - after (positive = the gradient shrank).
Logs of gradient norms are taken per epoch, then averaged (windowed d_log_grad = difference of
mean log g). A window mean is NaN if any of its values is NaN (so new-class samples, whose loss
is undefined before the boundary, get NaN loss-based deltas), except drift, whose NaNs are
skipped (drift is NaN at the first probed epoch).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KINDS = ("immediate", "windowed")
AT_BOUNDARY = ("align_dot", "align_cos", "pred_forget")
LEGACY_COLUMNS = ["sample_id", "class_label", "memo", "delta_loss", "delta_grad_norm", "delta_dormant", "boundary"]


def _taus(table: pd.DataFrame) -> list[str]:
    """The tau labels of the overall dormant columns ``dormant_t{tau}`` (not the per-layer ones)."""
    return [c[len("dormant_t"):] for c in table.columns if c.startswith("dormant_t") and "_L" not in c]


def _mean(values: pd.DataFrame, lo: int, hi: int, skipna: bool = False) -> pd.DataFrame:
    """Per sample, the mean of every column over the probed epochs in (lo, hi]."""
    sel = values[(values["epoch"] > lo) & (values["epoch"] <= hi)].drop(columns="epoch")
    return sel.groupby("sample_id", sort=True).mean(skipna=skipna)


def boundary_deltas(probe_table: pd.DataFrame, boundary_epoch: int, window: int) -> pd.DataFrame:
    """One row per (sample_id, kind) for one boundary from its long probe table (one row per sample
    and probed epoch, with ``boundary``). Columns: sample_id, label, boundary, is_old, kind, loss_t,
    d_loss, d_log_grad, grad_drop, d_input_grad, d_dormant_t{tau}..., d_margin, drift, align_dot,
    align_cos, pred_forget (see the module docstring; loss_t and the alignment columns are the
    values at E_k for both kinds)."""
    t, e = probe_table, int(boundary_epoch)
    if "boundary" not in t.columns or t["boundary"].nunique() != 1:
        raise ValueError("boundary_deltas: the probe table needs a 'boundary' column with one value")
    need = range(e - window + 1, e + window + 1)
    if missing := sorted(set(need) - set(t["epoch"].unique())):
        raise ValueError(f"boundary_deltas: boundary epoch {e}, window {window}: epochs {missing} not probed")
    t = t[t["epoch"].isin(need)]
    if t.duplicated(["sample_id", "epoch"]).any():
        raise ValueError("boundary_deltas: duplicate (sample_id, epoch) rows in the probe table")
    taus = _taus(t)
    dormant = [f"dormant_t{tau}" for tau in taus]
    values = t[["sample_id", "epoch", "loss", "margin", "grad_norm", "input_grad_norm", *dormant, "drift"]].copy()
    values["log_grad"] = np.log(values["grad_norm"])
    values["log_input_grad"] = np.log(values["input_grad_norm"])
    if (t.groupby("sample_id").size() != len(need)).any():
        raise ValueError("boundary_deltas: not every sample is probed at every epoch of the window")

    meta = t[t["epoch"] == e].set_index("sample_id").sort_index()
    frames = []
    for kind in KINDS:
        lo, hi = (e - 1, e + 1) if kind == "immediate" else (e - window, e + window)
        before, after = _mean(values, lo, e), _mean(values, e, hi)
        drift = after["drift"] if kind == "immediate" else \
            _mean(values[["sample_id", "epoch", "drift"]], e, hi, skipna=True)["drift"] \
            - _mean(values[["sample_id", "epoch", "drift"]], lo, e, skipna=True)["drift"]
        d = pd.DataFrame({"sample_id": meta.index, "label": meta["label"].to_numpy(),
                          "boundary": meta["boundary"].to_numpy(), "is_old": meta["is_old"].to_numpy(dtype=bool),
                          "kind": kind, "loss_t": meta["loss"].to_numpy()})
        d["d_loss"] = (after["loss"] - before["loss"]).to_numpy()
        d["d_log_grad"] = (after["log_grad"] - before["log_grad"]).to_numpy()
        d["grad_drop"] = (before["grad_norm"] - after["grad_norm"]).to_numpy()
        d["d_input_grad"] = (after["log_input_grad"] - before["log_input_grad"]).to_numpy()
        for c in dormant:
            d[f"d_{c}"] = (after[c] - before[c]).to_numpy()
        d["d_margin"] = (after["margin"] - before["margin"]).to_numpy()
        d["drift"] = drift.to_numpy()
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
    s = pd.DataFrame({"sample_id": s["sample_id"], "memo": s[score_col].astype(float),
                      "memo_pct": s[score_col].rank(pct=True) * 100})
    out = deltas.drop(columns=["memo", "memo_pct"], errors="ignore").merge(s, on="sample_id", how="left",
                                                                          validate="many_to_one")
    if n := int(out["memo"].isna().sum()):
        raise ValueError(f"join_memo: {n} delta rows have no '{score_col}' score (sample ids e.g. "
                         f"{out.loc[out['memo'].isna(), 'sample_id'].head(5).tolist()})")
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
    out = pd.DataFrame({"sample_id": w["sample_id"], "class_label": w["label"], "memo": w["memo"],
                        "delta_loss": w["d_loss"], "delta_grad_norm": -w["grad_drop"],
                        "delta_dormant": w[col], "boundary": w["boundary"]})
    return out[LEGACY_COLUMNS].reset_index(drop=True)
