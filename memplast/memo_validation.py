"""Numbers behind the memorization-validation figure: do the memo scores agree with each
other (and with Feldman-Zhang), and do they flag planted noisy labels?"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score


def top_k_mask(df: pd.DataFrame, column: str, k: int) -> np.ndarray:
    """Boolean mask of the k rows with the largest ``column`` (e.g. top 5k by fz_mem)."""
    order = np.argsort(-df[column].to_numpy(), kind="stable")
    mask = np.zeros(len(df), dtype=bool)
    mask[order[:k]] = True
    return mask


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Uncentered cosine similarity a.b / (|a| |b|), as Garg et al. compare with FZ scores."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def method_agreement(df: pd.DataFrame, columns, subset=None, subset_name: str = "all") -> pd.DataFrame:
    """Spearman, Pearson and uncentered cosine for every pair of score columns.

    ``subset``: optional boolean mask over rows (e.g. :func:`top_k_mask`), named in the
    ``subset`` column. Rows where either score of a pair is NaN are dropped for that pair.
    Returns one row per pair: method_a, method_b, subset, n, spearman, pearson, cosine.
    """
    rows = df if subset is None else df[np.asarray(subset, dtype=bool)]
    out = []
    for a, b in itertools.combinations(columns, 2):
        pair = rows[[a, b]].dropna()
        x, y = pair[a].to_numpy(np.float64), pair[b].to_numpy(np.float64)
        out.append(
            {
                "method_a": a,
                "method_b": b,
                "subset": subset_name,
                "n": len(pair),
                "spearman": stats.spearmanr(x, y)[0] if len(pair) > 2 else np.nan,
                "pearson": stats.pearsonr(x, y)[0] if len(pair) > 2 else np.nan,
                "cosine": cosine(x, y) if len(pair) else np.nan,
            }
        )
    return pd.DataFrame(out, columns=["method_a", "method_b", "subset", "n", "spearman", "pearson", "cosine"])


def noise_auroc(df: pd.DataFrame, columns, noisy_col: str = "noisy") -> pd.DataFrame:
    """AUROC of each score for flagging the planted noisy labels (higher score = more likely noisy).

    Returns method, auroc, n, n_noisy. A NaN score or a single-class ``noisy`` column is an error.
    """
    noisy = df[noisy_col].to_numpy().astype(bool)
    if noisy.all() or not noisy.any():
        raise ValueError(f"{noisy_col!r} must contain both noisy and clean samples to compute an AUROC")
    out = []
    for c in columns:
        score = df[c].to_numpy(np.float64)
        if np.isnan(score).any():
            raise ValueError(f"score column {c!r} has {int(np.isnan(score).sum())} NaN values")
        out.append({"method": c, "auroc": roc_auc_score(noisy, score), "n": len(df), "n_noisy": int(noisy.sum())})
    return pd.DataFrame(out, columns=["method", "auroc", "n", "n_noisy"])
