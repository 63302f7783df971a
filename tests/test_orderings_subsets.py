"""Run factors: memorization filters (counts, balance, errors) and sample orderings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from memplast import orderings, subsets
from memplast.grid import FilterSpec


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
    # no filter: the data itself is below the minimum (the rehearsal's 5 images per class)
    with pytest.raises(subsets.FilterError, match=r"the dataset has class 2 with 40 .*lower subset.min_per_class"):
        subsets.apply_filter(train, FilterSpec("none", None), 50, 0)


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


@pytest.mark.parametrize("mode", ["global", "per_class", "balanced"])
def test_random_filter_matches_the_memo_filter_counts_per_class_but_not_its_samples(train, mode):
    memo_kept = subsets.apply_filter(train, FilterSpec(mode, 0.8), 1, 0)
    rand_kept = subsets.apply_filter(train, FilterSpec(mode, 0.8, random=True), 1, 0)
    label = train.set_index("sample_id")["label"]
    pd.testing.assert_series_equal(
        label.loc[memo_kept].value_counts().sort_index(), label.loc[rand_kept].value_counts().sort_index()
    )
    assert len(set(rand_kept)) == len(rand_kept) and set(rand_kept) <= set(train.sample_id)
    # chosen without looking at memo: the kept samples' memo is not shifted downwards like the filter's
    memo = train.set_index("sample_id")["memo"]
    dropped_memo = memo.drop(memo_kept).mean()
    assert memo.drop(rand_kept).mean() < dropped_memo
    # per class, the random drop removes high- and low-memo samples alike (rank of kept ~ uniform)
    ranks = train.assign(r=train.groupby("label")["memo"].rank(pct=True)).set_index("sample_id")["r"]
    assert 0.4 < ranks.loc[rand_kept].mean() < 0.6 and ranks.loc[memo_kept].mean() < 0.45
    # seeded: same seed same ids, another seed other ids
    np.testing.assert_array_equal(rand_kept, subsets.apply_filter(train, FilterSpec(mode, 0.8, random=True), 1, 0))
    assert set(rand_kept) != set(subsets.apply_filter(train, FilterSpec(mode, 0.8, random=True), 1, 1))


def test_bn_reestimation_averages_the_batch_statistics():
    from memplast.models import SmallCNN
    from memplast.train import reestimate_bn

    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, in_channels=1, width=4)
    x = torch.randn(60, 1, 8, 8) * 2 + 1
    model.bn1.running_mean.fill_(7.0)  # stale statistics, as after the last batches of a sorted epoch
    model.eval()
    n = reestimate_bn(model, x.split(20))
    assert n == 60 and not model.training and model.bn1.momentum == 0.1
    h = model.conv1(x).detach()
    batch_means = torch.stack([b.mean(dim=(0, 2, 3)) for b in h.split(20)])
    batch_vars = torch.stack([b.transpose(0, 1).flatten(1).var(dim=1) for b in h.split(20)])
    torch.testing.assert_close(model.bn1.running_mean, batch_means.mean(0))
    torch.testing.assert_close(model.bn1.running_var, batch_vars.mean(0))


def test_sorted_ordering_reestimates_bn_without_changing_the_training_path(tmp_path, demo_config, digits, one_thread):
    import copy

    from test_train import _run, _weights

    cfg = copy.deepcopy(demo_config)
    cfg["protocol"].update(epochs_per_task=2, lr_milestones=[], early_stopping=False)
    ids = digits.sample_id[digits.split == "train"]
    memo = pd.Series(np.random.default_rng(0).lognormal(size=len(ids)), index=ids)
    name = "order0/none/ascending/none/base"
    on, _ = _run(tmp_path / "on", cfg, digits, 0, ordering="ascending", memo=memo, name=name)
    cfg["ordering"]["bn_reestimate"] = False
    off, _ = _run(tmp_path / "off", cfg, digits, 0, ordering="ascending", memo=memo, name=name)
    assert on["bn_reestimated"].all() and not off["bn_reestimated"].any()
    a, b = _weights(tmp_path / "on" / "t0" / "end.pt"), _weights(tmp_path / "off" / "t0" / "end.pt")
    assert all(torch.equal(a[k], b[k]) for k in a if "running" not in k and "num_batches" not in k)
    assert not torch.equal(a["bn1.running_mean"], b["bn1.running_mean"])
    np.testing.assert_array_equal(on["train_loss"].dropna(), off["train_loss"].dropna())
    rand, _ = _run(tmp_path / "r", cfg | {"ordering": {**cfg["ordering"], "bn_reestimate": True}}, digits, 0)
    assert not rand["bn_reestimated"].any()  # a reshuffled order needs no re-estimation


def test_order_diagnostics_carry_influence_and_batches_along_the_order():
    asc = orderings.base_order("ascending", IDS, MEMO, _gen())
    infl = pd.Series(np.arange(len(IDS), dtype=float)[::-1], index=IDS)  # any per-sample influence
    diag = orderings.order_diagnostics(asc, pd.Series(MEMO, index=IDS), window=5, influence_of=infl, batch_size=7)
    np.testing.assert_array_equal(diag["influence"], infl.loc[asc].to_numpy())
    i = 20  # centred window of 5: positions 18..22
    assert diag["influence_moving_mean"][i] == pytest.approx(infl.loc[asc[18:23]].mean())
    assert diag["batch"].tolist() == [p // 7 for p in range(len(IDS))]
    assert "influence" not in orderings.order_diagnostics(asc, pd.Series(MEMO, index=IDS))
