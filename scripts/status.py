"""Per-rule progress of a workflow run: jobs done, remaining (missing or out of date) and total,
from two Snakemake dry runs (as is, and with --forceall).

Usage: python scripts/status.py [--configfile config.yaml ...] [--target T]   (`make status`)
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memplast import budget  # noqa: E402


def counts(configfiles, target, force) -> Counter:
    jobs = budget.dry_run(configfiles, target, force=force)
    return Counter(j["rule"] for j in jobs if j["rule"] != "all")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", nargs="+", default=[str(ROOT / "config.yaml")])
    ap.add_argument("--target", default=None)
    args = ap.parse_args(argv)
    total = counts(args.configfile, args.target, force=True)
    remaining = counts(args.configfile, args.target, force=False)
    width = max([len("rule")] + list(map(len, total)))
    print(f"{'rule':<{width}} {'done':>6} {'remaining':>9} {'total':>6}")
    for rule in sorted(total, key=lambda r: (remaining[r] == 0, r)):
        print(f"{rule:<{width}} {total[rule] - remaining[rule]:>6} {remaining[rule]:>9} {total[rule]:>6}")
    t, r = sum(total.values()), sum(remaining.values())
    print(f"{'total':<{width}} {t - r:>6} {r:>9} {t:>6}")


if __name__ == "__main__":
    main()
