"""Training steps per second and host synchronisations per step: the step before and after it
stopped waiting for the device (memplast.train.train_epoch), side by side in this process.

Rows (the same cores for both; --threads, default torch's thread count), each a whole epoch of
SGD steps with augmentation on CIFAR-shaped (3x32x32, 100 classes, batch 90) or digits-shaped
(1x8x8, 10 classes, batch 90) synthetic data from memplast.data.make_synthetic:

- ``before``: the earlier step (kept below as ``step_before``): batch rows and normalization
  constants copied to the device per step, a boolean class mask (boolean indexing and a label
  check per step), the finite-loss check and the accuracy read every step. (Its augmentation
  parameters also took 4 blocking copies per step; they now take one non-blocking copy, which
  both rows share, so the counts below leave those 4 out.)
- ``after``: memplast.train.train_epoch: index tensors built once per task, losses, accuracy and
  the finite-loss check accumulated on the device and read once per epoch.

On a CPU a synchronisation costs nothing, so the speed ratio is near 1; what the change buys on
a GPU (the host queueing work ahead instead of waiting at every step) shows in the sync counts,
taken with memplast.device.count_host_syncs (torch.cuda.set_sync_debug_mode semantics).
Usage: python benchmarks/bench_train_step.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from memplast import augment
from memplast.data import synthetic_train_set
from memplast.device import count_host_syncs
from memplast.masks import class_mask, per_sample_loss, seen_classes
from memplast.models import build_model
from memplast.train import DeviceData, NonFiniteLoss, train_epoch

BATCH = 90
AUG = {"crop_padding": 4, "flip": True, "rotation_degrees": 15.0}


def step_before(model, optimizer, data, rows, mask, batch_size, generator, aug):
    """The epoch loop before this change (boolean mask, three reads per step)."""
    model.train()
    losses, correct = torch.empty(len(rows), device=data.device), 0
    for start in range(0, len(rows), batch_size):
        idx = torch.tensor(np.asarray(rows[start : start + batch_size]), device=data.device)  # blocking copy
        x = augment.augment(
            augment.normalize(data.images[idx], data.mean, data.std),
            generator,
            aug["crop_padding"],
            aug["flip"],
            aug["rotation_degrees"],
        )
        y = data.labels[idx]
        logits = model(x)
        loss_i = per_sample_loss(logits, y, mask)
        loss = loss_i.mean()
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"non-finite loss ({loss.item()})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[start : start + len(y)] = loss_i.detach()
        correct += (logits.detach().masked_fill(~mask, float("-inf")).argmax(1) == y).sum().item()
    return losses.cpu().numpy(), correct / len(rows)


def setting(arch: str, width: int, n_classes: int, shape, n: int):
    p = synthetic_train_set(n_classes, shape, n)
    data = DeviceData(p, torch.device("cpu"))
    rows = np.random.default_rng(0).permutation(n)
    seen = np.arange(n_classes // 2)  # half the classes seen, as in the middle of a run
    rows = rows[np.isin(p.labels[rows], seen)]
    model = build_model(arch, n_classes, shape[0], width)
    return data, rows, model, seen


def run_epoch(kind, data, rows, model, seen, n_classes):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    if kind == "before":
        return lambda: step_before(model, optimizer, data, rows, class_mask(seen, n_classes), BATCH, gen, AUG)
    mask = seen_classes(seen, n_classes)  # once per task
    return lambda: train_epoch(model, optimizer, data, rows, mask, BATCH, gen, AUG)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    rounds = 2 if args.quick else 3
    configs = {
        "ResNet-18 w16, 3x32x32": ("resnet18", 16, 100, (3, 32, 32), 1800 if args.quick else 3600),
        "small_cnn w16, 1x8x8": ("small_cnn", 16, 10, (1, 8, 8), 3600 if args.quick else 9000),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {BATCH}; best of {rounds} epochs")
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.1f} on {os.cpu_count()} cores before the run: rates are noisy")
    results = {}
    for name, (arch, width, n_classes, shape, n) in configs.items():
        data, rows, model, seen = setting(arch, width, n_classes, shape, n)
        steps = -(-len(rows) // BATCH)
        epochs = {k: run_epoch(k, data, rows, model, seen, n_classes) for k in ("before", "after")}
        syncs = {}
        for kind, epoch in epochs.items():
            with count_host_syncs() as c:
                epoch()  # also the warm-up
            syncs[kind] = sum(c.values())
        rate = dict.fromkeys(epochs, 0.0)
        for _ in range(rounds):  # interleaved: load from elsewhere hurts both alike
            for kind, epoch in epochs.items():
                t0 = time.perf_counter()
                epoch()
                rate[kind] = max(rate[kind], steps / (time.perf_counter() - t0))
        results[name] = (rate, syncs, steps)

    print(
        f"\n{'setting':<24} {'steps':>6} {'before st/s':>12} {'after st/s':>11} {'ratio':>6} "
        f"{'syncs/epoch before':>19} {'after':>6}"
    )
    for name, (rate, syncs, steps) in results.items():
        print(
            f"{name:<24} {steps:>6} {rate['before']:>12.2f} {rate['after']:>11.2f} "
            f"{rate['after'] / rate['before']:>6.2f} {syncs['before']:>19} {syncs['after']:>6}"
        )
    parts = [
        f"{name}: {r['after'] / r['before']:.2f}x steps/s, syncs/step {s['before'] / n:.1f} -> "
        f"{s['after'] / n:.2f} ({s['after']} per epoch)"
        for name, (r, s, n) in results.items()
    ]
    print("summary: after/before on CPU: " + "; ".join(parts))


if __name__ == "__main__":
    main()
