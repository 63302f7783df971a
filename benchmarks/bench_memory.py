"""Peak memory per job kind at the paper defaults, measured on the CPU (for docs/gpu.md).

Each row runs in a fresh process: ResNet-18 width 64 (100 outputs) on CIFAR-100-shaped synthetic
data, one short piece of the job at its config.yaml batch size, and reports the growth of the
process's peak resident memory over the same process right after ``import torch`` (so model,
data, optimizer state, activations, gradients and allocator slack count; the interpreter does not).
On a GPU the same tensors live in device memory, plus the CUDA context and cuDNN workspaces.

- ``train``: the CIFAR-100 images on the device (60,000 x 3 x 32 x 32 uint8), one SGD step at
  protocol.batch_size (90, augmented), one evaluation batch at protocol.eval_batch_size (1000).
- ``memo_scorer``: one SGD step at memo.scorer.batch_size (128).
- ``curvature`` and ``probe``: memplast.curvature.curvature_scores (all memo.methods) and
  memplast.probes.probe_checkpoint at two small batch sizes, extrapolated linearly to
  memo.batch_size (250) and probes.batch_size (500) (memory grows linearly with the batch).
Usage: python benchmarks/bench_memory.py [--rows train,memo_scorer,curvature,probe]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

CHILD = r"""
import json, resource, sys
import torch
torch.set_num_threads(1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import numpy as np
from memplast.models import ResNet18
from memplast.masks import class_mask
kind, batch = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(0)
model = ResNet18(100, 3, 64)
x = torch.randn(batch, 3, 32, 32, generator=g)
y = torch.randint(0, 100, (batch,), generator=g)
mask = class_mask(range(100), 100)
if kind == "train":
    from memplast.data import Prepared
    from memplast.train import DeviceData, evaluate, train_epoch
    n = 60000
    images = np.random.default_rng(0).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(n) % 100
    p = Prepared(name="s", images=images, labels=labels, orig_labels=labels, noisy=np.zeros(n, bool),
                 sample_id=np.arange(n), source=np.full(n, "train"), split=np.full(n, "train"),
                 mean=[0.5] * 3, std=[0.25] * 3, n_classes=100)
    data = DeviceData(p, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    aug = {"crop_padding": 4, "flip": True, "rotation_degrees": 15.0}
    train_epoch(model, opt, data, np.arange(batch), mask, batch, g, aug)
    evaluate(model, data, np.arange(1000), mask, 1000)
elif kind == "memo_scorer":
    from memplast.masks import per_sample_loss
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    per_sample_loss(model(x), y, mask).mean().backward()
    opt.step()
elif kind == "curvature":
    from memplast.curvature import curvature_scores
    curvature_scores(model, x, y, np.arange(batch), mask, ["exact_ggn", "hutchinson", "finite_difference"],
                     n_probes=10, batch_size=batch)
elif kind == "probe":
    from memplast.probes import probe_checkpoint
    probe_checkpoint(model, x, y, mask, mask, batch_size=batch)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mb": (peak - base) / 1024}))
"""

ROWS = {  # kind -> (batch sizes measured, paper batch size)
    "train": ([90], 90),
    "memo_scorer": ([128], 128),
    "curvature": ([8, 16], 250),
    "probe": ([16, 32], 500),
}


def measure(kind: str, batch: int) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(batch)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["mb"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(ROWS))
    args = ap.parse_args(argv)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0
    results = {}
    for kind in args.rows.split(","):
        sizes, paper = ROWS[kind]
        mbs = [measure(kind, b) for b in sizes]
        if len(sizes) == 1:
            est, how = mbs[0], f"measured at batch {sizes[0]}"
        else:
            slope = (mbs[1] - mbs[0]) / (sizes[1] - sizes[0])
            est, how = (
                mbs[0] + slope * (paper - sizes[0]),
                (
                    f"{mbs[0]:.0f} / {mbs[1]:.0f} MB at batch {sizes[0]} / "
                    f"{sizes[1]}, {slope:.1f} MB per sample, extrapolated"
                ),
            )
        results[kind] = est
        print(f"{kind:<12} batch {paper:>4}: {est / 1024:6.2f} GB  ({how})")
    heaviest = max(results, key=results.get)
    print(
        "summary: peak tensor memory per job at paper batch sizes (CPU-measured): "
        + ", ".join(f"{k} {v / 1024:.2f} GB" for k, v in results.items())
        + f"; heaviest: {heaviest}"
    )


if __name__ == "__main__":
    main()
