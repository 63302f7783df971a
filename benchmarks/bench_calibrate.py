"""Is `make calibrate`'s call budget long enough? The per-image cost of an operation timed with the
default budget (memplast.calibrate.CALL_SECONDS per call, so fewer images per call on a slow device)
against the same operation timed with 4x the budget (up to 4x the images), side by side in this
process, at the configured shapes (default: the paper's, config.yaml: ResNet-18 width 64, 3x32x32,
100 classes). A ratio near 1 means the short calls already measure the per-image cost.

Usage: python benchmarks/bench_calibrate.py [--configfile config.yaml ...] [--repeats 3]
(It replaced a test that asserted this ratio: timing belongs in a benchmark, not in a test.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memplast import calibrate  # noqa: E402
from memplast import config as mpconfig  # noqa: E402


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", nargs="+", default=[str(ROOT / "config.yaml")])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    cfg = mpconfig.load(*args.configfile)
    bench = calibrate.Bench(cfg, torch.device("cpu"))
    calibrate._threads(cfg, "train")  # as `make calibrate` times the training step
    bs = cfg["protocol"]["batch_size"]
    ratios = []
    for r in range(args.repeats):
        row = {}
        for label, budget in (("default", calibrate.CALL_SECONDS), ("4x", 4 * calibrate.CALL_SECONDS)):
            timer = calibrate.Timer(bench.device, budget, "cpu")
            per_image = timer.per_image("train_step", bench.train_call("base", bs)[0], 2 * bs)
            row[label] = (per_image, timer.log["train_step"]["images"])
        ratio = row["default"][0] / row["4x"][0]
        ratios.append(ratio)
        print(
            f"repeat {r}: train_step default budget {1000 * row['default'][0]:.2f} ms/image on "
            f"{row['default'][1]} images per call, 4x budget {1000 * row['4x'][0]:.2f} ms/image on "
            f"{row['4x'][1]} images; ratio {ratio:.2f}"
        )
    summary = (
        f"summary: train_step per-image cost, default call budget / 4x budget: median {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)} repeats)"
    )
    print(summary)
    return summary


if __name__ == "__main__":
    main()
