"""Images per second of the batched input pipeline against a reference-style torchvision pipeline.

Rows (CIFAR-shaped synthetic uint8 images from memplast.data.make_synthetic, batch 90, the same
cores for every row: --threads, default torch's thread count):

- ``reference``: the Dohare et al. style pipeline: a Dataset returning one normalized float image
  at a time through torchvision's RandomCrop(32, padding=4, padding_mode="reflect"),
  RandomHorizontalFlip and RandomRotation((0, 15)), batched by a shuffling DataLoader. Timed with
  ``num_workers=0`` and with one worker per core; the faster of the two is the reference (ratio 1).
- ``memplast``: memplast.train.DeviceData.batch: index the uint8 tensor, memplast.augment.normalize,
  then memplast.augment.augment on the whole batch (one sampling grid per batch).
- ``train epoch``: one epoch of ResNet-18 width 16 (memplast.models.ResNet18, 100 outputs) through
  memplast.train.train_epoch with the memplast pipeline: how fast training consumes images, and how
  much of the epoch the input pipeline takes.

Goal: memplast >= 10x the reference's images/s. Usage: python benchmarks/bench_input_pipeline.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from memplast.data import Prepared, synthetic_train_set
from memplast.masks import class_mask
from memplast.models import ResNet18
from memplast.train import DeviceData, train_epoch

BATCH = 90
N_CLASSES = 100
AUG = {"crop_padding": 4, "flip": True, "rotation_degrees": 15.0}
GOAL = 10.0


class ReferenceDataset(Dataset):
    """One image at a time, as the reference: uint8 tensor -> float in [0, 1] -> torchvision Normalize,
    RandomCrop, RandomHorizontalFlip, RandomRotation."""

    def __init__(self, p: Prepared):
        self.images = torch.as_tensor(p.images)
        self.labels = torch.as_tensor(p.labels)
        self.transform = transforms.Compose(
            [
                transforms.Normalize(p.mean, p.std),
                transforms.RandomCrop(32, padding=AUG["crop_padding"], padding_mode="reflect"),
                transforms.RandomHorizontalFlip(),
                transforms.RandomRotation((0, AUG["rotation_degrees"])),
            ]
        )

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i].float() / 255.0), self.labels[i]


def reference_pass(p: Prepared, workers: int):
    """A function timing one pass over a shuffling DataLoader; its workers start (and make one
    batch) here, outside the timing, and persist between passes."""
    torch.manual_seed(0)
    loader = DataLoader(
        ReferenceDataset(p), batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    next(iter(loader))

    def one_pass() -> float:
        t0 = time.perf_counter()
        n = sum(len(y) for _, y in loader)
        return n / (time.perf_counter() - t0)

    return one_pass


def memplast_pass(p: Prepared):
    """A function timing one pass of DeviceData.batch with augmentation over shuffled rows."""
    data = DeviceData(p, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    rows = np.random.default_rng(0).permutation(len(p.labels))
    data.batch(rows[:BATCH], gen, AUG)  # warm-up

    def one_pass() -> float:
        t0 = time.perf_counter()
        n = sum(len(data.batch(rows[s : s + BATCH], gen, AUG)[1]) for s in range(0, len(rows), BATCH))
        return n / (time.perf_counter() - t0)

    return one_pass


def time_epoch(p: Prepared) -> float:
    """Images/s of one train_epoch of ResNet-18 width 16 (after one warm-up batch)."""
    torch.manual_seed(0)
    model = ResNet18(N_CLASSES, 3, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    data = DeviceData(p, torch.device("cpu"))
    mask = class_mask(range(N_CLASSES), N_CLASSES)
    gen = torch.Generator().manual_seed(0)
    rows = np.random.default_rng(0).permutation(len(p.labels))
    train_epoch(model, optimizer, data, rows[:BATCH], mask, BATCH, gen, AUG)  # warm-up
    t0 = time.perf_counter()
    train_epoch(model, optimizer, data, rows, mask, BATCH, gen, AUG, where="benchmark")
    return len(rows) / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images and rounds (about 20 s instead of about 1 min)")
    ap.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="cores for every row: torch threads, and DataLoader workers of the reference "
        "(default: torch's default, %(default)s)",
    )
    args = ap.parse_args(argv)
    if args.threads < 1:
        raise SystemExit("bench_input_pipeline.py: --threads must be >= 1")
    n_pipeline, n_epoch, rounds = (900, 270, 3) if args.quick else (1800, 900, 5)
    cores = args.threads
    torch.set_num_threads(cores)
    print(
        f"torch {torch.__version__}, {cores} threads; batch {BATCH}; pipelines: best of {rounds} "
        f"passes over {n_pipeline} images; epoch: {n_epoch} images"
    )
    load = os.getloadavg()[0]
    if load > 0.5:
        print(
            f"note: load average {load:.1f} on {os.cpu_count()} cores before the run; other processes "
            "slow multi-threaded rows (OpenMP) most, so ratios are pessimistic"
        )

    p = synthetic_train_set(N_CLASSES, (3, 32, 32), n_pipeline)
    passes = {
        "reference, workers=0": reference_pass(p, 0),
        f"reference, workers={cores}": reference_pass(p, cores),
        "memplast (normalize+augment)": memplast_pass(p),
    }
    rates = dict.fromkeys(passes, 0.0)
    for _ in range(rounds):  # interleaved, so a burst of load from elsewhere hurts every row alike
        for name, one_pass in passes.items():
            rates[name] = max(rates[name], one_pass())
    del passes  # stops the reference's workers before training
    rates["train epoch, ResNet-18 w16"] = time_epoch(synthetic_train_set(N_CLASSES, (3, 32, 32), n_epoch))

    reference = max(rates["reference, workers=0"], rates[f"reference, workers={cores}"])
    width = max(map(len, rates))
    print(f"\n{'pipeline':<{width}} {'images/s':>10} {'x reference':>12}")
    for name, rate in rates.items():
        print(f"{name:<{width}} {rate:>10.0f} {rate / reference:>12.2f}")

    ours, epoch = rates["memplast (normalize+augment)"], rates["train epoch, ResNet-18 w16"]
    ratio = ours / reference
    print(
        f"summary: batched augmentation {ours:.0f} images/s = {ratio:.1f}x the torchvision reference "
        f"({reference:.0f} images/s; goal >= {GOAL:g}x: {'met' if ratio >= GOAL else 'NOT met'}); "
        f"a ResNet-18 w16 epoch runs at {epoch:.0f} images/s, of which the input pipeline takes "
        f"{100 * epoch / ours:.1f}%"
    )


if __name__ == "__main__":
    main()
