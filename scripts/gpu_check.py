"""Check a GPU node before the first real submission (`make gpu-check`; docs/gpu.md): device and the
wheel's architectures, bitwise determinism of a short task, resume of a CPU-saved state on the device,
the calibration at the config's shapes, training throughput of 1, 2 and 3 concurrent jobs.
Paste the printout into the issue of the submission. Exits non-zero when a part fails.

Usage: python scripts/gpu_check.py [--configfile config.yaml ...] [--device auto|cpu|cuda] [--steps N]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memplast import config as mpconfig  # noqa: E402


def main(argv=None) -> bool:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", nargs="+", default=[str(ROOT / "config.yaml")])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    ap.add_argument("--steps", type=int, default=50, help="training steps per throughput job")
    ap.add_argument("--call-seconds", type=float, default=2.0, help="calibration: longest timed call")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)  # the parts print their own summary lines
    from memplast import gpu_check

    cfg = mpconfig.load(*args.configfile)
    print(f"gpu-check of {' + '.join(args.configfile)} on device {args.device}")
    return gpu_check.run(cfg, args.device, args.steps, args.call_seconds)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
