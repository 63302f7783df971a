"""Measure the per-image costs of the heavy jobs on this device at a config's shapes (`make calibrate`).

Writes calibration/<device>.yaml (or --out), which ``resources.calibration`` in the config points the
runtime requests and `make budget` at (memplast/cost.py; how each cost is measured: memplast/calibrate.py).

Usage: python scripts/calibrate.py [--configfile config.yaml ...] [--device auto|cpu|cuda] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from memplast import config as mpconfig  # noqa: E402


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", nargs="+", default=[str(ROOT / "config.yaml")])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    ap.add_argument("--out", default=None, help="default calibration/<device>.yaml")
    ap.add_argument(
        "--call-seconds",
        type=float,
        default=None,
        help="longest timed call (default memplast.calibrate.CALL_SECONDS); fewer images beyond it",
    )
    ap.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall time (default; always on a GPU) or CPU time (a shared CPU machine: compare with cpu_time)",
    )
    args = ap.parse_args(argv)
    from memplast import calibrate

    cfg = mpconfig.load(*args.configfile)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    print(f"calibrating {' + '.join(args.configfile)} on device {args.device}")
    cal = calibrate.calibrate(cfg, args.device, args.call_seconds or calibrate.CALL_SECONDS, args.clock)
    cal["configfiles"] = list(args.configfile)
    out = Path(args.out) if args.out else ROOT / "calibration" / calibrate.file_name(cal["device"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(cal, sort_keys=False))
    print(
        f"device {cal['device']}: wrote {out} in {time.perf_counter() - t0:.0f} wall s, "
        f"{cpu_seconds() - cpu0:.0f} CPU s (with the start-up probe's interpreter)"
    )
    print(
        "ratio to one training step per image: "
        + ", ".join(f"{k} {v:g}" for k, v in cal["ratio_to_train_step"].items())
    )
    print(f"use it: resources: {{calibration: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}}}")
    return out


if __name__ == "__main__":
    main()
