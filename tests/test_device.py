"""The GPU path checked on the CPU: host synchronisations of the training step (counted like
torch.cuda.set_sync_debug_mode), generator states that load whatever device wrote them, and
initialisation drawn from seeded CPU generators."""

from __future__ import annotations

import copy
import math
import struct

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import Killed, run_one_task

from memplast import data, train
from memplast.algorithms import shrink_perturb_step
from memplast.device import (
    CPU_STATE_BYTES,
    count_host_syncs,
    host_int,
    load_generator_state,
    stable_seed,
    to_device,
    to_host,
)
from memplast.masks import class_mask, per_sample_loss, seen_classes
from memplast.models import build_model, init_reference, reinit

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- the counter itself
def test_counter_sees_each_kind_of_sync_and_not_host_only_reads():
    x, mask = torch.randn(6), torch.tensor([True, False] * 3)
    with count_host_syncs() as c:
        x.sum().item()
        if x[0] > 0:
            pass
        float(x.max())
        x.tolist()
        x.cpu()
        x[mask]
        torch.nonzero(x > 0)
        torch.tensor([1, 2], device="cpu")
        x.to("cpu")
    assert sum(c.values()) == 9, c
    assert c["boolean-mask indexing"] == 1 and c["data-dependent shape (aten::nonzero)"] == 1
    with count_host_syncs() as c:
        host_int(torch.randint(0, 10, (1,)))
        to_device(np.arange(4), torch.device("cpu"))
        (x * 2).index_select(0, torch.tensor([0, 2]))
    assert sum(c.values()) == 0, c
    with count_host_syncs() as c:
        a, b = to_host(x, torch.arange(3))
    assert sum(c.values()) == 1  # one copy for both
    assert a.dtype == np.float32 and b.dtype == np.int64 and np.array_equal(a, x.numpy()) and b.tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- the training step
def reference_train_epoch(model, optimizer, d, rows, mask, batch_size, generator, aug, weights=None):
    """The straightforward step (the code before this change): a boolean mask, the loss checked
    and the accuracy read at every step."""
    model.train()
    losses, correct = torch.empty(len(rows)), 0
    for start in range(0, len(rows), batch_size):
        x, y = d.batch(rows[start : start + batch_size], generator, aug)
        logits = model(x)
        loss_i = per_sample_loss(logits, y, mask)
        w = weights[start : start + batch_size] if weights is not None else None
        loss = (loss_i * w).mean() if w is not None else loss_i.mean()
        if not torch.isfinite(loss):
            raise train.NonFiniteLoss("non-finite")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[start : start + len(y)] = loss_i.detach()
        correct += (logits.detach().masked_fill(~mask, float("-inf")).argmax(1) == y).sum().item()
    return losses.numpy(), correct / len(rows)


@pytest.fixture(scope="module")
def setting(digits, demo_config):
    d = train.DeviceData(digits, torch.device("cpu"))
    seen = data.class_order(0, 10)[:4]
    rows = d.rows("train", seen)
    aug = {"crop_padding": 1, "flip": True, "rotation_degrees": 10}
    return d, seen, rows, aug, demo_config["model"]


def _fresh(model_cfg, seed=0):
    model = build_model("small_cnn", 10, 1, 4)
    reinit(model, seed)
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def test_step_is_the_reference_step_bitwise(setting):
    d, seen, rows, aug, model_cfg = setting
    rows = rows[:200]
    w = torch.linspace(0.5, 2.0, len(rows))
    m1, o1 = _fresh(model_cfg)
    m2, o2 = _fresh(model_cfg)
    l1, a1 = train.train_epoch(m1, o1, d, rows, seen_classes(seen, 10), 32, torch.Generator().manual_seed(1), aug, w)
    l2, a2 = reference_train_epoch(m2, o2, d, rows, class_mask(seen, 10), 32, torch.Generator().manual_seed(1), aug, w)
    assert np.array_equal(l1, l2) and a1 == a2
    assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    ev = [train.evaluate(m1, d, d.rows("val", seen), m, 64) for m in (seen_classes(seen, 10), class_mask(seen, 10))]
    assert ev[0] == ev[1]


def _syncs(fn, n_rows, setting, **kw):
    d, seen, rows, aug, model_cfg = setting
    model, opt = _fresh(model_cfg)
    mask = seen_classes(seen, 10)  # built once per task, outside the counted epoch
    with count_host_syncs() as c:
        fn(
            model,
            opt,
            d,
            rows[:n_rows],
            mask if fn is train.train_epoch else class_mask(seen, 10),
            16,
            torch.Generator().manual_seed(0),
            aug,
            **kw,
        )
    return sum(c.values())


@pytest.mark.parametrize("algorithm", ["base", "shrink_perturb", "weighted"])
def test_training_step_never_synchronises(setting, algorithm):
    """Syncs per epoch do not grow with the number of steps (2 vs 8 steps): none in the step."""
    kw = {}
    counts = []
    for n in (32, 128):
        if algorithm == "weighted":
            kw = {"weights": torch.ones(n)}
        if algorithm == "shrink_perturb":
            model, _ = _fresh(setting[4])
            kw = {
                "after_step": shrink_perturb_step(
                    model, {"shrink": 0.9, "noise_std": 1e-3}, torch.Generator().manual_seed(0)
                )
            }
        counts.append(_syncs(train.train_epoch, n, setting, **kw))
    assert counts[0] == counts[1] <= 2, counts


def test_reference_step_synchronises_every_step(setting):
    """Positive control: the counter sees the per-step syncs of the old step (>= 3 per step)."""
    counts = [_syncs(reference_train_epoch, n, setting) for n in (32, 128)]
    assert counts[1] - counts[0] >= 3 * (8 - 2), counts


def test_planted_sync_in_the_step_is_counted(setting):
    d = setting[0]
    probe = torch.ones(1, device=d.device)
    n_steps = [_syncs(train.train_epoch, n, setting, after_step=lambda: probe.item()) for n in (32, 128)]
    assert n_steps[1] - n_steps[0] == 8 - 2


def test_evaluation_reads_once(setting):
    d, seen, rows, aug, model_cfg = setting
    model, _ = _fresh(model_cfg)
    val = d.rows("val", seen)
    mask = seen_classes(seen, 10)
    counts = []
    for bs in (len(val), 8):
        with count_host_syncs() as c:
            train.evaluate(model, d, val, mask, bs)
        counts.append(sum(c.values()))
    assert counts[0] == counts[1] <= 2, counts


def test_unseen_label_raises_on_host(setting):
    d, seen, rows, aug, model_cfg = setting
    model, opt = _fresh(model_cfg)
    other = d.rows("train", data.class_order(0, 10)[4:5])
    with pytest.raises(ValueError, match="outside the class mask"):
        train.train_epoch(model, opt, d, other[:20], seen_classes(seen, 10), 16, torch.Generator(), None)


def test_non_finite_loss_is_caught_after_the_epoch_with_its_batch(setting):
    d, seen, rows, aug, model_cfg = setting
    model, opt = _fresh(model_cfg)
    w = torch.ones(64)
    w[40] = float("nan")
    with pytest.raises(train.NonFiniteLoss, match="batch starting at 32"):
        train.train_epoch(
            model, opt, d, rows[:64], seen_classes(seen, 10), 16, torch.Generator(), None, w, where="here"
        )


# --------------------------------------------------------------------------- generators across devices
def cuda_generator_state(seed: int, offset: int = 0) -> torch.Tensor:
    """The 16-byte state a CUDA (Philox) generator's get_state() returns: seed and offset."""
    return torch.frombuffer(bytearray(struct.pack("<QQ", seed, offset)), dtype=torch.uint8).clone()


def test_generator_state_loads_whatever_device_wrote_it():
    g = torch.Generator().manual_seed(5)
    torch.rand(3, generator=g)
    h = torch.Generator()
    load_generator_state(h, g.get_state())
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=h))
    a, b = torch.Generator(), torch.Generator()
    load_generator_state(a, cuda_generator_state(7, 4))
    load_generator_state(b, cuda_generator_state(7, 4))
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    with pytest.raises(ValueError, match="neither a CPU"):
        load_generator_state(a, torch.zeros(9, dtype=torch.uint8))


@pytest.fixture(scope="module")
def small(demo_config):
    cfg = copy.deepcopy(demo_config)
    cfg["protocol"].update(epochs_per_task=2, lr_milestones=[1], state_every=1, batch_size=32)
    return cfg


def _task(tmp, cfg, prepared, task, prev, algorithm, stop=None):
    run_one_task(
        tmp, cfg, prepared, task, prev, algorithm, stop=stop, ckpt_epochs=[], resume=str(tmp / f"resume{task}.pt")
    )
    return str(tmp / f"t{task}" / "end.pt")


def as_if_written_on_gpu(path, out):
    """The end state as a GPU run wrote it before generators were kept on the CPU: the noise
    generator's state is a CUDA state (and every tensor would load back to the GPU)."""
    state = torch.load(path, weights_only=True)
    state["noise_generator"] = cuda_generator_state(stable_seed("noise", "x") % 2**63)
    torch.save(state, out)
    return str(out)


def test_task_resumes_from_a_state_saved_on_another_device(tmp_path, small, digits):
    """Task 1 starts from a task-0 end state written on the other device type (the bug: "Expected
    a CPUGeneratorImplState of size 5056 but found 16"), deterministically."""
    end0 = _task(tmp_path / "a", small, digits, 0, None, "shrink_perturb")
    saved = torch.load(end0, weights_only=True)
    assert saved["noise_generator"].numel() == saved["generator"].numel() == CPU_STATE_BYTES
    foreign = as_if_written_on_gpu(end0, tmp_path / "gpu_end.pt")
    e1 = _task(tmp_path / "b", small, digits, 1, foreign, "shrink_perturb")
    e2 = _task(tmp_path / "c", small, digits, 1, foreign, "shrink_perturb")
    w1, w2 = (torch.load(e, weights_only=True)["model"] for e in (e1, e2))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    # and a kill + resume inside that task (resume state saved every epoch) ends bitwise the same
    with pytest.raises(Killed):
        _task(tmp_path / "d", small, digits, 1, foreign, "shrink_perturb", stop=3)
    r = torch.load(tmp_path / "d" / "resume1.pt", weights_only=False)
    assert r["noise_generator"].numel() == CPU_STATE_BYTES
    w3 = torch.load(_task(tmp_path / "d", small, digits, 1, foreign, "shrink_perturb"), weights_only=True)["model"]
    assert all(torch.equal(w1[k], w3[k]) for k in w1)


# --------------------------------------------------------------------------- initialisation
def test_reinit_draws_the_seeded_cpu_init_and_leaves_global_rng_alone():
    model = build_model("small_cnn", 10, 1, 4)
    before = torch.random.get_rng_state()
    reinit(model, 123)
    assert torch.equal(before, torch.random.get_rng_state())
    ref = build_model("small_cnn", 10, 1, 4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        init_reference(ref)
    for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q), n
    # the head alone: the same draws as the head of a fresh CPU module
    head = copy.deepcopy(model.fc)
    reinit(model.fc, 9)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)
        init_reference(head)
    assert torch.equal(model.fc.weight, head.weight)


def test_shrink_perturb_noise_seeded_from_the_cpu_generator():
    """theta' = shrink * theta + noise_std * eps with eps ~ N(0, 1): its mean and spread over
    ~10^4 weights, and one draw of the CPU generator per step."""
    model = build_model("small_cnn", 10, 1, 16)
    theta = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(3)
    step = shrink_perturb_step(model, {"shrink": 0.5, "noise_std": 0.01}, g)
    step()
    eps = torch.cat([((p.detach() - 0.5 * t) / 0.01).flatten() for p, t in zip(model.parameters(), theta, strict=True)])
    n = eps.numel()
    assert abs(float(eps.mean())) < 5 / math.sqrt(n) and abs(float(eps.std()) - 1) < 5 / math.sqrt(n)
    ref = torch.Generator().manual_seed(3)
    torch.randint(0, 2**62, (1,), generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())


def test_end_states_hold_cpu_generator_states_for_every_algorithm(tmp_path, small, digits):
    cfg = copy.deepcopy(small)
    cfg["protocol"]["epochs_per_task"] = 1
    cfg["protocol"]["lr_milestones"] = []
    for algorithm in ("base", "head_reset"):
        end0 = _task(tmp_path / algorithm, cfg, digits, 0, None, algorithm)
        end1 = _task(tmp_path / algorithm, cfg, digits, 1, end0, algorithm)
        s = torch.load(end1, weights_only=True)
        assert s["generator"].numel() == s["noise_generator"].numel() == CPU_STATE_BYTES
        assert pd.read_parquet(tmp_path / algorithm / "t1" / "m.parquet")["val_acc"].notna().all()
