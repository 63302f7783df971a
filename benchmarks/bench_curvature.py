"""Cost of the curvature estimators on ResNet-18 with a CIFAR-shaped batch (CPU).

For each width, times one batch of:
  fwd+bwd      one plain forward + backward (to the parameters) of the summed loss, eval mode
  loop         Hutchinson with a per-sample loop: for each sample its own double-backward graph,
               then one HVP per probe (the graph is reused across probes, as in the batched code)
  hutch_db     batched Hutchinson, double backward (memplast default)
  hutch_fwr    batched Hutchinson, forward-over-reverse (torch.func.jvp over torch.func.grad)
  fd           finite differences (Garg et al.), one extra gradient per probe
  exact_ggn    exact Tr(H^2), one VJP per seen class (no probes; divided by n_probes for the
               per-probe column only so that rows are comparable per score)
and prints seconds per batch, seconds per probe and ratios, then one summary line.

    .venv/bin/python benchmarks/bench_curvature.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from memplast import curvature as cv
from memplast.masks import class_mask, per_sample_loss
from memplast.models import ResNet18

CLOCK = time.process_time  # main() switches to wall time when torch uses more than one thread


def best_time(fn, repeats: int) -> float:
    """Minimum time over ``repeats`` calls. With one thread this is the process's CPU time, which
    other jobs on a shared machine do not inflate (wall time there varies by 2x and more)."""
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return min(times)


def loop_hutchinson(model, x, y, mask, ids, n_probes, seed=0):
    """Reference: Hutchinson one sample at a time (batch of 1), double backward."""
    out = []
    with cv.eval_mode(model):
        for i in range(len(x)):
            xi = x[i : i + 1].detach().requires_grad_(True)
            (g,) = torch.autograd.grad(per_sample_loss(model(xi), y[i : i + 1], mask).sum(), xi, create_graph=True)
            total = 0.0
            for j in range(n_probes):
                v = cv.rademacher(ids[i : i + 1], j, x.shape[1:], seed, x.device, x.dtype)
                (hv,) = torch.autograd.grad(g, xi, grad_outputs=v, retain_graph=True)
                total += hv.pow(2).sum()
            out.append(total / n_probes)
    return torch.stack(out)


def forward_backward(model, x, y, mask):
    with cv.eval_mode(model):
        model.zero_grad(set_to_none=True)
        per_sample_loss(model(x), y, mask).sum().backward()
    model.zero_grad(set_to_none=True)


def bench_width(width, batch, n_probes, n_classes_seen, repeats):
    torch.manual_seed(0)
    model = ResNet18(num_classes=100, width=width)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.arange(batch) % n_classes_seen
    mask = class_mask(range(n_classes_seen), 100)
    ids = list(range(batch))

    # warm-up and sanity check in one: the loop and both batched modes agree
    ref = loop_hutchinson(model, x[:2], y[:2], mask, ids[:2], 2)
    for mode in cv.HVP_MODES:
        got = cv.hutchinson(model, x[:2], y[:2], mask, ids[:2], n_probes=2, hvp=mode)["curv_hutch"]
        assert torch.allclose(ref, got, rtol=1e-3), (mode, ref, got)
    forward_backward(model, x, y, mask)
    cv.finite_difference(model, x[:2], y[:2], mask, ids[:2], n_probes=1)

    runs = {
        "fwd+bwd": lambda: forward_backward(model, x, y, mask),
        "loop": lambda: loop_hutchinson(model, x, y, mask, ids, n_probes),
        "hutch_db": lambda: cv.hutchinson(model, x, y, mask, ids, n_probes, hvp="double_backward"),
        "hutch_fwr": lambda: cv.hutchinson(model, x, y, mask, ids, n_probes, hvp="forward_over_reverse"),
        "fd": lambda: cv.finite_difference(model, x, y, mask, ids, n_probes),
        "exact_ggn": lambda: cv.exact_ggn(model, x, y, mask),
    }
    seconds = {}
    for name, fn in runs.items():
        seconds[name] = best_time(fn, repeats if name == "fwd+bwd" else 1)
        print(f"  w{width} {name:<10} {seconds[name]:8.3f} s/batch", flush=True)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller batches, 3 probes")
    parser.add_argument("--classes", type=int, default=100, help="seen classes (exact_ggn does one VJP per class)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared CPU, 2 threads + other jobs = wild timings)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.threads == 1 else time.perf_counter
    n_probes, repeats = (3, 2) if args.quick else (10, 3)
    configs = [(16, 16 if args.quick else 32), (64, 4 if args.quick else 8)]
    clock = "CPU" if CLOCK is time.process_time else "wall"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads ({clock} seconds), n_probes={n_probes}, "
        f"seen classes={args.classes}"
    )

    table = []
    for width, batch in configs:
        s = bench_width(width, batch, n_probes, args.classes, repeats)
        table.append((width, batch, s))

    print()
    print(
        f"{'width':>5} {'batch':>5} {'method':<10} {'s/batch':>9} {'s/probe':>9} {'probe/fwdbwd':>13} {'loop/method':>12}"
    )
    for width, batch, s in table:
        for name, sec in s.items():
            per_probe = sec if name == "fwd+bwd" else sec / n_probes
            loop_ratio = s["loop"] / sec
            print(
                f"{width:>5} {batch:>5} {name:<10} {sec:9.3f} {per_probe:9.4f} {per_probe / s['fwd+bwd']:12.2f}x {loop_ratio:11.2f}x"
            )
    for width, _, s in table:
        per_probe = s["hutch_db"] / n_probes / s["fwd+bwd"]
        speedup = s["loop"] / s["hutch_db"]
        print(
            f"goals w{width}: hutch per probe <= 2x fwd+bwd: {'met' if per_probe <= 2 else 'NOT met'} ({per_probe:.2f}x); "
            f"batched >= 4x faster than loop: {'met' if speedup >= 4 else 'NOT met'} ({speedup:.2f}x)"
        )
    parts = []
    for width, _, s in table:
        parts.append(
            f"hutch/fwdbwd={s['hutch_db'] / n_probes / s['fwd+bwd']:.1f}x "
            f"fwr/fwdbwd={s['hutch_fwr'] / n_probes / s['fwd+bwd']:.1f}x "
            f"loop/hutch={s['loop'] / s['hutch_db']:.1f}x "
            f"exact/hutch={s['exact_ggn'] / s['hutch_db']:.1f}x (w{width})"
        )
    print("summary: " + "; ".join(parts))


if __name__ == "__main__":
    main()
