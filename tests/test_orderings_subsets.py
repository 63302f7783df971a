"""Run factors: memorization filters (counts, balance, errors) and sample orderings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from memplast import orderings, subsets
from memplast.config import FilterSpec


@pytest.fixture()
def train():
    rng = np.random.default_rng(0)
    sizes = {0: 100, 1: 60, 2: 40}
    labels = np.concatenate([np.full(n, c) for c, n in sizes.items()])
    memo = rng.lognormal(size=len(labels)) * (1 + labels)  # class 2 has the largest scores
    return pd.DataFrame({"sample_id": np.arange(len(labels)) * 3 + 7, "label": labels, "memo": memo})


def test_filter_none_keeps_everything(train):
    np.testing.assert_array_equal(subsets.apply_filter(train, FilterSpec("none"), 1, 0), np.sort(train.sample_id))


def test_global_filter_drops_scores_at_or_above_the_quantile(train):
    kept = subsets.apply_filter(train, FilterSpec("global", 0.8), 1, 0)
    thr = train.memo.quantile(0.8)
    assert set(kept) == set(train.loc[train.memo < thr, "sample_id"])
    assert len(kept) == (train.memo < thr).sum()
    per_class = train[train.sample_id.isin(kept)].groupby("label").size()
    assert per_class[2] / 40 < per_class[0] / 100  # the high-memo class loses most


def test_per_class_filter_keeps_the_same_fraction_in_every_class(train):
    kept = subsets.apply_filter(train, FilterSpec("per_class", 0.9), 1, 0)
    counts = train[train.sample_id.isin(kept)].groupby("label").size()
    assert counts.to_dict() == {0: 90, 1: 54, 2: 36}


def test_balanced_filter_subsamples_to_the_smallest_class(train):
    kept = subsets.apply_filter(train, FilterSpec("balanced", 0.9), 1, seed=3)
    counts = train[train.sample_id.isin(kept)].groupby("label").size()
    assert set(counts) == {36}
    assert set(kept) <= set(subsets.apply_filter(train, FilterSpec("per_class", 0.9), 1, 0))
    np.testing.assert_array_equal(kept, subsets.apply_filter(train, FilterSpec("balanced", 0.9), 1, seed=3))
    per_class, summary = subsets.balance_report(train, kept)
    assert summary["cv"] == 0 and summary["min_max_ratio"] == 1 and summary["n_kept"] == 108
    assert per_class["n_before"].tolist() == [100, 60, 40]


def test_filter_that_empties_a_class_names_it(train):
    with pytest.raises(subsets.FilterError, match=r"leaves class 2 with 0 training samples"):
        subsets.apply_filter(train, FilterSpec("global", 0.1), 1, 0)
    with pytest.raises(subsets.FilterError, match=r"class 2 with 36 .*min_per_class=50"):
        subsets.apply_filter(train, FilterSpec("per_class", 0.9), 50, 0)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


IDS = np.arange(100, 160)
MEMO = np.random.default_rng(1).lognormal(size=60)


def test_random_differs_between_epochs_and_fixed_repeats():
    g = _gen()
    base = orderings.base_order("random", IDS, None, g)
    e1, e2 = orderings.epoch_order(base, IDS, g), orderings.epoch_order(base, IDS, g)
    assert sorted(e1) == list(IDS) and (e1 != e2).any()
    fixed = orderings.base_order("fixed", IDS, None, g)
    assert (fixed != IDS).any()
    np.testing.assert_array_equal(orderings.epoch_order(fixed, IDS, g), orderings.epoch_order(fixed, IDS, g))


def test_ascending_descending_sorted():
    asc = orderings.base_order("ascending", IDS, MEMO, _gen())
    memo_of = pd.Series(MEMO, index=IDS)
    assert (np.diff(memo_of.loc[asc].to_numpy()) >= 0).all()
    desc = orderings.base_order("descending", IDS, MEMO, _gen())
    np.testing.assert_array_equal(desc, asc[::-1])


def test_stratified_interleaves_strata():
    order = orderings.base_order("stratified", IDS, MEMO, _gen(), strata=4)
    ranks = pd.Series(MEMO, index=IDS).rank(method="first").loc[order].to_numpy() - 1
    stratum = (ranks * 4 // 60).astype(int)
    # round-robin: every consecutive block of 4 holds one sample of each stratum, in order
    np.testing.assert_array_equal(stratum, np.tile(np.arange(4), 15))
    assert sorted(order) == list(IDS)


def test_file_ordering_is_followed_and_missing_ids_are_an_error():
    file_ids = np.concatenate([IDS[::-1], [999]])  # extra ids (other tasks, filtered) are skipped
    np.testing.assert_array_equal(orderings.base_order("file", IDS, None, _gen(), file_ids=file_ids), IDS[::-1])
    with pytest.raises(ValueError, match="lacks 1 of the task's training samples"):
        orderings.base_order("file", IDS, None, _gen(), file_ids=IDS[1:])


def test_block_reshuffle_keeps_blocks():
    asc = orderings.base_order("ascending", IDS, MEMO, _gen())
    g = _gen(4)
    e1 = orderings.epoch_order(asc, IDS, g, block_size=10)
    e2 = orderings.epoch_order(asc, IDS, g, block_size=10)
    assert (e1 != e2).any()
    for b in range(6):
        assert set(e1[b * 10 : (b + 1) * 10]) == set(asc[b * 10 : (b + 1) * 10])


def test_order_hash_and_diagnostics():
    asc = orderings.base_order("ascending", IDS, MEMO, _gen())
    assert orderings.order_hash(asc) == orderings.order_hash(asc.copy()) != orderings.order_hash(asc[::-1])
    diag = orderings.order_diagnostics(asc, pd.Series(MEMO, index=IDS), window=5)
    assert (np.diff(diag["moving_mean"]) >= -1e-12).all()
    gaps = orderings.gap_summary(diag)
    assert gaps["n_high"] == 6 and gaps["mean_gap"] == 1.0  # sorted: all high-memo samples adjacent
