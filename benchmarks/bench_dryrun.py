"""Paper-scale DAG build time: `snakemake -n --quiet rules` on config.yaml.

Runs in an empty temporary directory, so results/ of the repository cannot mark jobs as done;
prints the job count per rule and the wall time of each dry run (best of --repeats), and ends
with one summary line against the --limit budget. Usage: python benchmarks/bench_dryrun.py
(`make dryrun-paper`). Exits 1 if the dry run fails, not if it is over budget.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def job_counts(stdout: str) -> dict[str, int]:
    """Rule -> job count from Snakemake's 'Job stats' table (the 'total' row included)."""
    counts, in_table = {}, False
    for line in stdout.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
        elif in_table and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
            if parts[0] == "total":
                break
    return counts


def dry_run(configfiles) -> tuple[float, dict[str, int]]:
    with tempfile.TemporaryDirectory(prefix="memplast-dryrun-") as workdir:
        cmd = [
            str(SNAKEMAKE),
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            workdir,
            "-n",
            "--quiet",
            "rules",
            "--configfile",
            *map(str, configfiles),
        ]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        sys.exit(f"bench_dryrun.py: the dry run failed: {last}")
    counts = job_counts(out.stdout)
    if "total" not in counts:
        sys.exit("bench_dryrun.py: no 'Job stats' table in Snakemake's output; is --quiet rules supported?")
    return seconds, counts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--configfile",
        nargs="+",
        type=Path,
        default=[ROOT / "config.yaml"],
        help="config files overlaid in order (default: config.yaml, the paper scale)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="dry runs to time; the best counts (default 1)")
    ap.add_argument("--limit", type=float, default=30.0, help="budget in seconds for the summary (default 30)")
    args = ap.parse_args(argv)
    for f in args.configfile:
        if not f.is_file():
            sys.exit(f"bench_dryrun.py: config file {f} not found; pass existing files to --configfile")
    if args.repeats < 1:
        sys.exit("bench_dryrun.py: --repeats must be >= 1")

    times = []
    for i in range(args.repeats):
        seconds, counts = dry_run(args.configfile)
        times.append(seconds)
        print(f"dry run {i + 1}: {seconds:.1f} s")
    best = min(times)
    width = max(map(len, counts))
    print(f"\n{'rule':<{width}} {'jobs':>6}")
    for rule, n in counts.items():
        print(f"{rule:<{width}} {n:>6}")
    print(
        f"summary: paper-scale dry run {counts['total']} jobs in {best:.1f} s (limit {args.limit:g} s) "
        f"= {best / args.limit:.2f}x budget"
    )


if __name__ == "__main__":
    main()
