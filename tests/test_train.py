"""The incremental protocol: schedule, masking, early stopping, task classes, algorithms,
weighting, determinism and bitwise resume after a kill."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from memplast import data, train
from memplast.models import class_mask, load_checkpoint, per_sample_loss


def test_lr_at_every_task_epoch():
    lrs = [train.lr_at(e, 0.1, [60, 120, 160], 0.2) for e in range(200)]
    assert lrs[:60] == [0.1] * 60
    assert np.allclose(lrs[60:120], 0.02) and np.allclose(lrs[120:160], 0.004) and np.allclose(lrs[160:], 0.0008)


def test_unseen_logits_get_no_gradient_and_softmax_covers_seen_only():
    logits = torch.randn(4, 10, requires_grad=True)
    labels = torch.tensor([1, 3, 3, 1])
    mask = class_mask([1, 3, 5], 10)
    loss = per_sample_loss(logits, labels, mask)
    z = logits[:, [1, 3, 5]]
    ref = -torch.log_softmax(z, 1)[torch.arange(4), torch.tensor([0, 1, 1, 0])]
    torch.testing.assert_close(loss, ref)
    loss.sum().backward()
    assert (logits.grad[:, ~mask] == 0).all() and (logits.grad[:, mask] != 0).all()
    with pytest.raises(ValueError, match="outside the class mask"):
        per_sample_loss(logits, torch.tensor([0, 1, 1, 1]), mask)


def test_memo_weights_z_score_clip_and_mean_one_by_hand():
    memo = np.array([1.0, 2.0, 3.0, 10.0])  # mean 4, population sd sqrt(12.5)
    z = (memo - 4.0) / np.sqrt(12.5)
    # alpha 0.5: nothing clipped, the z-scored weights already average 1
    np.testing.assert_allclose(train.memo_weights(memo, alpha=0.5, lo=0.5, hi=2.0), 1 + 0.5 * z, rtol=1e-12)
    # alpha 1: 1 + z = [0.15, 0.43, 0.72, 2.70] -> clipped to [0.5, 0.5, 0.72, 2.0] (mean 0.93) -> renormalised
    v = np.array([0.5, 0.5, 1 + z[2], 2.0])
    w = train.memo_weights(memo, alpha=1.0, lo=0.5, hi=2.0)
    np.testing.assert_allclose(w, v / v.mean(), rtol=1e-12)
    assert w[0] == w[1] and w[3] / w[0] == pytest.approx(4.0)  # clipping kept the ratios of the clipped ends
    # the old clip(1 + alpha memo / mean) weights averaged above 1 (a larger effective lr): no longer
    memo = np.random.default_rng(0).lognormal(size=5000)
    for alpha in (0.25, 0.5, 2.0, -1.0):
        w = train.memo_weights(memo, alpha, 0.5, 2.0)
        assert abs(w.mean() - 1.0) < 1e-12
        assert np.corrcoef(w, memo)[0, 1] * np.sign(alpha) > 0.3
    np.testing.assert_array_equal(train.memo_weights(np.full(7, 3.0), 0.5, 0.5, 2.0), np.ones(7))


@pytest.fixture(scope="module")
def small(demo_config):
    """A 2-task digits setting of a few epochs."""
    cfg = copy.deepcopy(demo_config)
    cfg["protocol"].update(epochs_per_task=4, lr_milestones=[2], state_every=2, batch_size=32)
    return cfg


def _run(
    tmp,
    cfg,
    prepared,
    task,
    prev=None,
    algorithm="base",
    ordering="random",
    alpha=0.0,
    memo=None,
    stop=None,
    name="order0/none/random/none/base",
    ckpt_all=False,
    window=0,
    seed=0,
    prov=None,
):
    E = cfg["protocol"]["epochs_per_task"]
    epochs = train.task_epoch_range(task, E) if ckpt_all else [task * E + E]
    ckpts = {g: str(tmp / f"t{task}" / f"e{g}.pt") for g in epochs}
    spec = train.RunSpec(
        name,
        seed,
        data.class_order(seed, 10),
        task,
        prepared.sample_id[prepared.split == "train"],
        ordering,
        alpha,
        algorithm,
        memo=memo,
    )
    metrics = train.run_task(
        spec,
        prepared,
        cfg["protocol"],
        cfg["model"],
        cfg["dataset"]["augmentation"],
        cfg["ordering"],
        cfg["weighting"],
        prev,
        str(tmp / f"t{task}" / "end.pt"),
        ckpts,
        str(tmp / f"t{task}" / "m.parquet"),
        str(tmp / f"t{task}" / "o.parquet"),
        str(tmp / "resume" / f"t{task}.pt"),
        prov or {"test": 1},
        stop_after_epoch=stop,
        window_paths=[str(tmp / f"t{task}" / f"best-{j}.pt") for j in range(window)],
        live_path=str(tmp / f"t{task}" / "live.pt") if window else None,
    )
    return metrics, ckpts


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def _tensors(obj):
    """Every tensor inside nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_task_trains_on_its_classes_and_restores_best_weights(tmp_path, small, digits):
    metrics, ckpts = _run(tmp_path, small, digits, 0, ckpt_all=True)
    epochs = metrics[metrics.kind == "epoch"]
    assert epochs["epoch"].tolist() == [1, 2, 3, 4]
    assert epochs["lr"].tolist() == pytest.approx([0.05, 0.05, 0.01, 0.01])
    best = int(epochs.loc[epochs.val_acc.idxmax(), "epoch"])  # first maximum: strict improvement
    end = metrics[metrics.kind == "end"].iloc[0]
    assert end["best_epoch"] == best and end["val_acc"] == pytest.approx(epochs.val_acc.max())
    end_weights = _weights(tmp_path / "t0" / "end.pt")
    if best < 4:
        assert _same(end_weights, _weights(ckpts[best]))
    # the task-end checkpoint holds the restored weights
    assert _same(end_weights, _weights(ckpts[4]))
    model, meta = load_checkpoint(ckpts[4])
    assert meta["seen"] == data.class_order(0, 10)[:2].tolist() and meta["task"] == 0
    # order log: every epoch's order covers exactly the task's training samples
    log = pd.read_parquet(tmp_path / "t0" / "o.parquet")
    assert log["n"].tolist() == [((digits.split == "train") & np.isin(digits.labels, meta["seen"])).sum()] * 4
    assert log["hash"].nunique() == 4  # random ordering: a new permutation every epoch


def test_same_config_gives_identical_metrics_and_weights(tmp_path, small, digits):
    m1, _ = _run(tmp_path / "a", small, digits, 0)
    m2, _ = _run(tmp_path / "b", small, digits, 0)
    pd.testing.assert_frame_equal(
        m1.drop(columns=["seconds", "images_per_sec"]), m2.drop(columns=["seconds", "images_per_sec"])
    )
    assert _same(_weights(tmp_path / "a" / "t0" / "end.pt"), _weights(tmp_path / "b" / "t0" / "end.pt"))


def test_killed_and_resumed_task_ends_bitwise_identical(tmp_path, small, digits):
    _run(tmp_path / "ref", small, digits, 0)
    ref_prev = str(tmp_path / "ref" / "t0" / "end.pt")
    _run(tmp_path / "ref", small, digits, 1, prev=ref_prev)
    # same two tasks, but task 1 is killed after its 3rd epoch (state saved after epoch 2)
    _run(tmp_path / "k", small, digits, 0)
    prev = str(tmp_path / "k" / "t0" / "end.pt")
    _run(tmp_path / "ref", small, digits, 1, prev=ref_prev, window=2)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "k", small, digits, 1, prev=prev, stop=4 + 3, ckpt_all=True, window=2)
    assert (tmp_path / "k" / "resume" / "t1.pt").exists()
    # the resume file holds model, best model, momentum and the before-window states (the last w
    # epochs and the best epoch's w), not copies of the after-window checkpoints (those wait in the
    # staging directory next to it, which Snakemake does not delete)
    state = torch.load(tmp_path / "k" / "resume" / "t1.pt", weights_only=False)
    model_bytes = sum(v.numel() * v.element_size() for v in state["model"].values())
    tensor_bytes = sum(v.numel() * v.element_size() for v in _tensors(state))
    assert state["staged"] == [5, 6] and tensor_bytes < (3.5 + 2 * 2) * model_bytes
    assert sorted(p.name for p in (tmp_path / "k" / "resume" / "t1.ckpt").iterdir()) == ["e5.pt", "e6.pt", "e7.pt"]
    # a killed Snakemake job loses its outputs: the resumed job must write all of them again
    for f in (tmp_path / "k" / "t1").glob("*.pt"):
        f.unlink()
    m, ckpts = _run(tmp_path / "k", small, digits, 1, prev=prev, ckpt_all=True, window=2)
    for name in ("best-0.pt", "best-1.pt", "live.pt"):  # the before-window survives the kill
        assert (
            torch.load(tmp_path / "k" / "t1" / name, weights_only=True)["meta"]
            == torch.load(tmp_path / "ref" / "t1" / name, weights_only=True)["meta"]
        )
        if "model" in torch.load(tmp_path / "ref" / "t1" / name, weights_only=True):
            assert _same(_weights(tmp_path / "k" / "t1" / name), _weights(tmp_path / "ref" / "t1" / name))
    assert all(Path(p).exists() for p in ckpts.values())
    assert not (tmp_path / "k" / "resume" / "t1.pt").exists()
    assert _same(_weights(tmp_path / "k" / "t1" / "end.pt"), _weights(tmp_path / "ref" / "t1" / "end.pt"))
    ref_m = pd.read_parquet(tmp_path / "ref" / "t1" / "m.parquet")
    pd.testing.assert_frame_equal(m[["epoch", "train_loss", "val_acc"]], ref_m[["epoch", "train_loss", "val_acc"]])


@pytest.mark.parametrize("deterministic", [True, False])
def test_resume_under_another_thread_count_is_logged_and_refused_when_deterministic(
    tmp_path, small, digits, deterministic, caplog
):
    """A resume state records threads and device; under other ones the task restarts (deterministic)
    or resumes with a warning. Restarting gives exactly the run uninterrupted under the new count."""
    cfg = copy.deepcopy(small)
    cfg["protocol"]["deterministic"] = deterministic
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _run(tmp_path / "k", cfg, digits, 0)
        prev = str(tmp_path / "k" / "t0" / "end.pt")
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path / "k", cfg, digits, 1, prev=prev, stop=4 + 3)
        saved = torch.load(tmp_path / "k" / "resume" / "t1.pt", weights_only=False)
        assert saved["runtime"] == {"threads": 1, "device": "cpu", "torch": torch.__version__}
        torch.set_num_threads(2)
        with caplog.at_level("INFO", logger="memplast.train"):
            _run(tmp_path / "k", cfg, digits, 1, prev=prev)
        text = caplog.text
        if deterministic:
            assert "not resuming" in text and "protocol.deterministic" in text and "resuming after" not in text
            _run(tmp_path / "ref", cfg, digits, 1, prev=prev)  # uninterrupted, 2 threads
            assert _same(_weights(tmp_path / "k" / "t1" / "end.pt"), _weights(tmp_path / "ref" / "t1" / "end.pt"))
        else:
            assert "under other runtime settings" in text and "resuming after task-epoch 2" in text
    finally:
        torch.set_num_threads(n)


def test_outputs_record_threads_and_device(tmp_path, small, digits):
    from memplast import io

    _run(tmp_path, small, digits, 0)
    prov = io.read_provenance(tmp_path / "t0" / "m.parquet")
    assert prov["runtime"]["threads"] == torch.get_num_threads() and prov["runtime"]["device"] == "cpu"
    assert prov["runtime"]["torch"] == torch.__version__


def test_second_task_sees_more_classes_and_algorithms_differ(tmp_path, small, digits):
    _run(tmp_path, small, digits, 0)
    prev = str(tmp_path / "t0" / "end.pt")
    start = _weights(prev)
    for algorithm in ("base", "retrained", "head_reset", "shrink_perturb"):
        out = tmp_path / algorithm
        cfg = copy.deepcopy(small)
        cfg["protocol"]["epochs_per_task"] = 1
        cfg["protocol"]["lr_milestones"] = []
        cfg["protocol"]["early_stopping"] = False
        _run(out, cfg, digits, 1, prev=prev, algorithm=algorithm, name=f"order0/none/random/none/{algorithm}")
        meta = torch.load(out / "t1" / "end.pt", weights_only=True)["meta"]
        assert meta["seen"] == data.class_order(0, 10)[:4].tolist()
    base, retrained = _weights(tmp_path / "base" / "t1" / "end.pt"), _weights(tmp_path / "retrained" / "t1" / "end.pt")
    # retrained starts from a fresh init: far from the task-0 weights; base stays close
    dist = lambda a: sum((a[k].float() - start[k].float()).norm() ** 2 for k in a if "weight" in k) ** 0.5  # noqa: E731
    assert dist(retrained) > 3 * dist(base)
    head = _weights(tmp_path / "head_reset" / "t1" / "end.pt")
    assert (head["conv1.weight"] - start["conv1.weight"]).norm() < (head["fc.weight"] - start["fc.weight"]).norm()


def test_common_random_numbers_pair_algorithms_of_a_class_order(tmp_path, small, digits):
    """Task 0 of base and retrained is the same computation (same init, data order and augmentation
    streams, derived from the class-order seed); a different class order gives a different run; at
    task 1 both algorithms still draw the same epoch orders, so only the algorithm differs."""
    cfg = copy.deepcopy(small)
    cfg["protocol"].update(epochs_per_task=2, lr_milestones=[], state_every=2)
    drop = ["seconds", "images_per_sec"]
    runs = {}
    for seed, algorithm in [(0, "base"), (0, "retrained"), (1, "base")]:
        name = f"order{seed}/none/random/none/{algorithm}"
        out = tmp_path / f"{seed}-{algorithm}"
        m, _ = _run(out, cfg, digits, 0, algorithm=algorithm, name=name, seed=seed)
        _run(out, cfg, digits, 1, prev=str(out / "t0" / "end.pt"), algorithm=algorithm, name=name, seed=seed)
        runs[seed, algorithm] = (
            m.drop(columns=drop),
            _weights(out / "t0" / "end.pt"),
            _weights(out / "t1" / "end.pt"),
            pd.read_parquet(out / "t1" / "o.parquet"),
        )
    (mb, wb, wb1, ob), (mr, wr, wr1, orr), (m1, w1, _, _) = runs[0, "base"], runs[0, "retrained"], runs[1, "base"]
    pd.testing.assert_frame_equal(mb, mr)
    assert _same(wb, wr)
    assert not _same(wb, w1) and not mb["train_loss"].equals(m1["train_loss"])
    assert ob["hash"].tolist() == orr["hash"].tolist()  # same data order at task 1
    assert not _same(wb1, wr1)  # ... and the algorithm alone makes the difference


def test_nan_loss_names_run_task_and_epoch(tmp_path, small, digits):
    cfg = copy.deepcopy(small)
    cfg["protocol"]["lr"] = 1e30
    with pytest.raises(train.NonFiniteLoss, match=r"run order0/none/random/none/base, task 0, epoch \d"):
        _run(tmp_path, cfg, digits, 0)
    assert not (tmp_path / "t0" / "end.pt").exists()


def test_memo_ordering_and_weighting_run(tmp_path, small, digits):
    train_ids = digits.sample_id[digits.split == "train"]
    memo = pd.Series(np.random.default_rng(0).lognormal(size=len(train_ids)), index=train_ids)
    _run(
        tmp_path,
        small,
        digits,
        0,
        ordering="ascending",
        alpha=0.5,
        memo=memo,
        name="order0/none/ascending/alpha0.5/base",
    )
    log = pd.read_parquet(tmp_path / "t0" / "o.parquet")
    assert log["hash"].nunique() == 1  # the same sorted order every epoch


def test_probe_epochs_cover_the_after_window_and_the_end():
    assert train.probe_epochs(2, 10, 3) == [21, 22, 23, 30]
    assert train.probe_epochs(0, 10, 3, extra=[5]) == [1, 2, 3, 5, 10]


@pytest.mark.parametrize(
    "val_acc, early_stopping, best",
    [
        ([0.5, 0.9, 0.6, 0.7, 0.8, 0.7], True, 2),  # best < E - w
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], True, 6),  # best = E
        ([0.5, 0.9, 0.6, 0.7, 0.8, 0.7], False, 6),  # early stopping off: nothing restored
        ([0.9, 0.5, 0.6, 0.7, 0.8, 0.7], True, 1),  # best at the task's first epoch: truncated window
    ],
)
def test_before_window_ends_at_the_best_epoch(tmp_path, small, digits, monkeypatch, val_acc, early_stopping, best):
    """Validation accuracies are planted (evaluate is replaced); the window slots must hold the
    weights of epochs best, best-1, .. (compared with every epoch's saved live weights), live.pt
    the last epoch, and the end checkpoint the best epoch's weights."""
    real, calls = train.evaluate, []

    def planted(model, data_, rows, mask, batch_size, *aug):
        loss, _ = real(model, data_, rows, mask, batch_size, *aug)
        calls.append(1)
        return loss, val_acc[min((len(calls) - 1) // 2, len(val_acc) - 1)]

    monkeypatch.setattr(train, "evaluate", planted)
    cfg = copy.deepcopy(small)
    cfg["protocol"].update(epochs_per_task=6, lr_milestones=[4], early_stopping=early_stopping)
    metrics, ckpts = _run(tmp_path, cfg, digits, 0, ckpt_all=True, window=3)
    live = torch.load(tmp_path / "t0" / "live.pt", weights_only=True)
    assert live["meta"]["best_epoch"] == best and live["meta"]["epoch"] == 6 and live["meta"]["live"]
    for j in range(3):
        slot = torch.load(tmp_path / "t0" / f"best-{j}.pt", weights_only=True)
        assert slot["meta"]["best_epoch"] == best and slot["meta"]["slot"] == j
        if best - j >= 1:
            assert slot["meta"]["epoch"] == best - j
            if best - j < 6:  # epochs < E: the per-epoch checkpoints hold the live weights of that epoch
                assert _same(slot["model"], _weights(ckpts[best - j]))
        else:
            assert slot["meta"]["empty"] and slot["meta"]["epoch"] is None and "model" not in slot
    end = _weights(tmp_path / "t0" / "end.pt")
    assert _same(end, torch.load(tmp_path / "t0" / "best-0.pt", weights_only=True)["model"])
    assert _same(end, live["model"]) == (best == 6)
    if best < 6:
        assert _same(end, _weights(ckpts[best]))
