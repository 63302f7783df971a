"""Memorization filters (the ``filter`` run factor): which training samples a run keeps.

Modes (design §7): ``global`` drops samples whose memo score is at or above the q-quantile
of all training scores; ``per_class`` applies the same rule inside every class; ``balanced``
filters per class, then subsamples every class to the smallest class count (seeded);
``none`` keeps everything. A class left empty, or below ``min_per_class``, is an error.
``MODE_random-qQ`` is the size-matched control of ``MODE-qQ``: it keeps exactly as many samples
per class as the memo filter does, chosen uniformly at random inside each class (seeded), so it
removes the same amount of data and of SGD steps without looking at memorization.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memplast.grid import FilterSpec


class FilterError(ValueError):
    """A filter that would leave a class (nearly) empty."""


def apply_filter(train: pd.DataFrame, spec: FilterSpec, min_per_class: int, seed: int) -> np.ndarray:
    """Sample ids kept by ``spec``. ``train`` has columns sample_id, label, memo (train split only)."""
    if train["memo"].isna().any():
        raise FilterError(
            f"{int(train['memo'].isna().sum())} training samples have no memo score; re-run the memo stage"
        )
    if spec.mode == "none":
        keep = np.ones(len(train), dtype=bool)
    elif spec.mode == "global":
        keep = (train["memo"] < train["memo"].quantile(spec.quantile)).to_numpy()
    else:  # per_class, balanced
        threshold = train.groupby("label")["memo"].transform(lambda m: m.quantile(spec.quantile))
        keep = (train["memo"] < threshold).to_numpy()
    kept = train.loc[keep]
    counts = kept.groupby("label").size().reindex(sorted(train["label"].unique()), fill_value=0)
    low = counts[counts < min_per_class]
    if len(low):
        c = low.index[0]
        what, fix = (
            ("the dataset has", "lower subset.min_per_class")  # no filter: the data itself is that small
            if spec.mode == "none"
            else (f"filter {spec.mode} q={spec.quantile} leaves", "use a higher quantile")
        )
        raise FilterError(
            f"{what} class {c} with {low.iloc[0]} training samples (minimum subset.min_per_class={min_per_class}); {fix}"
        )
    if spec.random:
        return _random_matched(train, counts, seed, spec)
    if spec.mode == "balanced":
        n_min = int(counts.min())
        rng = np.random.default_rng(seed)
        kept = pd.concat(
            [g.iloc[np.sort(rng.choice(len(g), n_min, replace=False))] for _, g in kept.groupby("label", sort=True)]
        )
    return np.sort(kept["sample_id"].to_numpy())


def _random_matched(train: pd.DataFrame, counts: pd.Series, seed: int, spec: FilterSpec) -> np.ndarray:
    """Per class, ``counts[c]`` sample ids drawn uniformly at random (without replacement).
    For ``balanced`` every class keeps the smallest memo-filtered count."""
    if spec.mode == "balanced":
        counts = pd.Series(int(counts.min()), index=counts.index)
    rng = np.random.default_rng([seed, int(spec.quantile * 1e6), ("global", "per_class", "balanced").index(spec.mode)])
    kept = [
        g["sample_id"].to_numpy()[np.sort(rng.choice(len(g), int(counts[c]), replace=False))]
        for c, g in train.sort_values("sample_id").groupby("label", sort=True)
    ]
    return np.sort(np.concatenate(kept))


def balance_report(train: pd.DataFrame, kept_ids: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Per-class counts before/after, and a summary: CV, min, max and min/max ratio of kept counts."""
    before = train.groupby("label").size()
    after = train[train["sample_id"].isin(kept_ids)].groupby("label").size().reindex(before.index, fill_value=0)
    per_class = pd.DataFrame({"label": before.index, "n_before": before.to_numpy(), "n_kept": after.to_numpy()})
    per_class["fraction_kept"] = per_class["n_kept"] / per_class["n_before"]
    n = per_class["n_kept"].to_numpy(dtype=float)
    summary = {
        "n_before": int(before.sum()),
        "n_kept": int(n.sum()),
        "cv": float(n.std() / n.mean()),
        "min": int(n.min()),
        "max": int(n.max()),
        "min_max_ratio": float(n.min() / n.max()),
    }
    return per_class, summary
