"""Training-step time of the plasticity algorithms against the base SGD step, same process.

ResNet-18 (memplast.models.ResNet18) at width 16 and 64 on a CIFAR-shaped batch of 90 (the
protocol's batch size), train mode. One step = forward, masked cross-entropy, backward,
optimizer step and the algorithm's after-step hook:

- ``base``: SGD with momentum and weight decay (ratio 1);
- ``cbp``: base plus continual backprop (utilities of the 17 hidden layers from the step's
  activations; every unit already mature, so the eligibility/replacement path runs);
- ``upgd``: first-order UPGD (sgd variant, full gating) instead of SGD;
- ``upgd_adam``: UPGD with Adam moments;
- ``upgd_cbp``: both.

Timed as the best of ``--repeats`` interleaved rounds of ``--steps`` steps (load from other
processes hurts every row alike). On a loaded machine whole steps are noisy, so the script also
times each algorithm's own work alone (optimizer step + after-step hook on fixed gradients and
activations, best of many) and reports ``1 + (own work - SGD step) / base step`` next to the
direct ratio. Goals on CPU: cbp <= 1.15x, upgd <= 1.3x of base.
Usage: python benchmarks/bench_algorithms.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from memplast import algorithms as A
from memplast.masks import class_mask, per_sample_loss
from memplast.models import ResNet18

C, N = 100, 90
CBP = {"replacement_rate": 1e-5, "decay_rate": 0.99, "maturity_threshold": 1000, "mode": "reference"}
UPGD = {
    "gating": "full",
    "beta_utility": 0.999,
    "sigma": 1e-3,
    "variant": "sgd",
    "beta1": 0.9,
    "beta2": 0.999,
    "eps": 1e-5,
    "non_gated_scale": 0.5,
}


def make_step(kind: str, width: int, x, y, mask):
    torch.manual_seed(0)
    model = ResNet18(C, 3, width).train()
    if kind.startswith("upgd"):
        cfg = {**UPGD, "variant": "adam" if kind == "upgd_adam" else "sgd"}
        opt = A.make_upgd(model, cfg, lr=0.01, weight_decay=5e-4, seed=0)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    cbp = A.CBP(model, CBP, seed=0) if kind in ("cbp", "upgd_cbp") else None
    if cbp is not None:
        for age in cbp.age:
            age.fill_(CBP["maturity_threshold"] + 1)

    acts = []

    def step():
        out = model(x, return_acts=cbp is not None)
        logits = out.logits if cbp is not None else out
        loss = per_sample_loss(logits, y, mask).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cbp is not None:
            cbp(out.acts)
            acts[:] = [a.detach() for a in out.acts]

    def own_work():  # the algorithm's part of a step, on the last step's gradients and activations
        opt.step()
        if cbp is not None:
            cbp(acts)

    return step, own_work


def best_of(f, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def run(width: int, steps: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (N,), generator=g)
    mask = class_mask(range(10), C)
    pairs = {k: make_step(k, width, x, y, mask) for k in ("base", "cbp", "upgd", "upgd_adam", "upgd_cbp")}
    fns = {k: p[0] for k, p in pairs.items()}
    for f in fns.values():
        f()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(steps):
                f()
            best[k] = min(best[k], (time.perf_counter() - t) / steps)
    own = {k: best_of(p[1], 10) for k, p in pairs.items()}
    return best, own


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="width 16 only, fewer rounds")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    widths = [16] if args.quick else [16, 64]
    summary = []
    for w in widths:
        t, own = run(w, 2 if args.quick else args.steps, 2 if args.quick else args.repeats)
        est = {k: 1 + (own[k] - own["base"]) / t["base"] for k in t}
        print(
            f"ResNet-18 width {w}, batch {N}, {torch.get_num_threads()} threads "
            "(seconds per step, ratio to base; own work alone, ratio from it):"
        )
        for k, s in t.items():
            print(f"  {k:10s} {s:8.4f} s  {s / t['base']:5.2f}x   own {own[k]:8.4f} s  {est[k]:5.2f}x")
        summary += [
            f"w{w} {k} {t[k] / t['base']:.2f}x (from own work {est[k]:.2f}x)"
            for k in ("cbp", "upgd", "upgd_adam", "upgd_cbp")
        ]
    print("summary (goal cbp <= 1.15x, upgd <= 1.3x): " + ", ".join(summary))


if __name__ == "__main__":
    main()
