"""Sample orderings within an epoch (the ``ordering`` run factor, design §7).

``random`` draws a new permutation every epoch; ``fixed`` draws one permutation per task and
repeats it; ``ascending``/``descending`` sort by memo score; ``stratified`` splits the samples
into k memo strata and visits them round-robin (stratum order within each from a per-task
permutation); ``file`` follows a user list. Reshuffling is a separate knob: with
``block_size > 0`` every non-random order is reshuffled inside consecutive blocks each epoch.
All randomness comes from the run's torch generator, so orders are reproducible.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch

ORDERINGS = ("random", "fixed", "ascending", "descending", "stratified", "file")


def _perm(n: int, generator: torch.Generator) -> np.ndarray:
    return torch.randperm(n, generator=generator).numpy()


def base_order(
    kind: str,
    ids: np.ndarray,
    memo: np.ndarray | None,
    generator: torch.Generator,
    strata: int = 10,
    file_ids: np.ndarray | None = None,
) -> np.ndarray | None:
    """The per-task order (sample ids) of a non-random ordering; None for ``random``."""
    ids = np.asarray(ids)
    if kind == "random":
        return None
    if kind == "fixed":
        return ids[_perm(len(ids), generator)]
    if kind in ("ascending", "descending", "stratified") and memo is None:
        raise ValueError(f"ordering {kind!r} needs memo scores")
    if kind in ("ascending", "descending"):
        order = np.lexsort((ids, memo))  # ties broken by sample id
        return ids[order if kind == "ascending" else order[::-1]]
    if kind == "stratified":
        ranks = pd.Series(memo).rank(method="first").to_numpy() - 1
        stratum = np.floor(ranks * strata / len(ids)).astype(int)
        shuffled = _perm(len(ids), generator)
        # position of each sample inside its stratum (in the shuffled order) -> round-robin
        pos = np.empty(len(ids), dtype=int)
        for s in range(strata):
            members = shuffled[stratum[shuffled] == s]
            pos[members] = np.arange(len(members))
        order = np.lexsort((stratum, pos))
        return ids[order]
    if kind == "file":
        present = pd.Index(file_ids)
        missing = ~pd.Index(ids).isin(present)
        if missing.any():
            raise ValueError(
                f"ordering file lacks {int(missing.sum())} of the task's training samples; list every sample_id"
            )
        return np.asarray(file_ids)[pd.Index(file_ids).isin(ids)]
    raise ValueError(f"unknown ordering {kind!r}; choose one of {ORDERINGS}")


def epoch_order(
    base: np.ndarray | None, ids: np.ndarray, generator: torch.Generator, block_size: int = 0
) -> np.ndarray:
    """This epoch's order: a fresh permutation for ``random`` (base None), else the base order,
    reshuffled inside consecutive blocks of ``block_size`` when that is > 0."""
    if base is None:
        return np.asarray(ids)[_perm(len(ids), generator)]
    if block_size <= 0:
        return base
    out = base.copy()
    for start in range(0, len(out), block_size):
        block = out[start : start + block_size]
        out[start : start + block_size] = block[_perm(len(block), generator)]
    return out


def order_hash(order: np.ndarray) -> str:
    """Short fingerprint of an epoch's order (sha1 of the int64 ids)."""
    return hashlib.sha1(np.ascontiguousarray(order, dtype=np.int64).tobytes()).hexdigest()[:16]


def order_diagnostics(
    order: np.ndarray,
    memo_of: pd.Series,
    window: int = 50,
    top_quantile: float = 0.9,
    influence_of: pd.Series | None = None,
    batch_size: int | None = None,
) -> pd.DataFrame:
    """Along one epoch's order: memo, its moving average and local variance (centred window),
    and whether the sample is high-memo (>= top_quantile of the task's scores). With
    ``influence_of`` (Feldman-Zhang's self-influence estimate fz_mem) also ``influence`` and its
    moving average; with ``batch_size`` the SGD ``batch`` each position falls in."""
    memo = memo_of.loc[order].to_numpy()
    s = pd.Series(memo)
    high = memo >= np.quantile(memo, top_quantile)
    out = pd.DataFrame(
        {
            "position": np.arange(len(order)),
            "sample_id": order,
            "memo": memo,
            "moving_mean": s.rolling(window, center=True, min_periods=1).mean().to_numpy(),
            "moving_var": s.rolling(window, center=True, min_periods=2).var().to_numpy(),
            "high_memo": high,
        }
    )
    if batch_size:
        out["batch"] = out["position"] // batch_size
    if influence_of is not None:
        infl = pd.Series(influence_of.loc[order].to_numpy(float))
        out["influence"] = infl.to_numpy()
        out["influence_moving_mean"] = infl.rolling(window, center=True, min_periods=1).mean().to_numpy()
    return out


def gap_summary(diag: pd.DataFrame) -> dict:
    """Gaps (in positions) between consecutive high-memo samples vs the gap a random order gives."""
    pos = diag.loc[diag["high_memo"], "position"].to_numpy()
    gaps = np.diff(pos)
    n, k = len(diag), len(pos)
    return {
        "n": n,
        "n_high": k,
        "mean_gap": float(gaps.mean()) if len(gaps) else float("nan"),
        "median_gap": float(np.median(gaps)) if len(gaps) else float("nan"),
        "expected_gap_random": (n + 1) / (k + 1) if k else float("nan"),
        "lag1_autocorr": float(pd.Series(diag["memo"]).autocorr(1)) if n > 2 else float("nan"),
    }
