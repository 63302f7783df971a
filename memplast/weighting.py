"""The ``weighting`` run factor: per-sample loss weights from memo scores (design §7)."""

from __future__ import annotations

import numpy as np


def memo_weights(memo: np.ndarray, alpha: float, lo: float, hi: float) -> np.ndarray:
    """Per-sample loss weight over one task's training set:
    v = clip(1 + alpha * z, lo, hi) with z = (memo - mean(memo)) / std(memo) (z = 0 if std = 0),
    then w = v / mean(v), so mean(w) = 1 and the effective learning rate is unchanged
    (after the renormalisation a weight may lie slightly outside [lo, hi])."""
    memo = np.asarray(memo, dtype=np.float64)
    sd = memo.std()
    z = (memo - memo.mean()) / sd if sd > 0 else np.zeros_like(memo)
    v = np.clip(1.0 + alpha * z, lo, hi)
    return v / v.mean()
