"""Statistics at paper scale (before/after issue 25), and the calibration table.

``scale`` mode: a synthetic deltas table of the paper's size (45,000 samples = 100 classes x 450,
19 boundaries, 5 class orders, 2 kinds, the config's 6 outcomes; ``memplast.stats.synthetic_deltas``;
4.3 M old-class rows) through the sample-bootstrap tables (headline/pooled/per_boundary/trend).
Each measurement runs in a fresh process (its own peak RSS; BLAS pinned to one thread, so
``threads`` is the statistics' own thread pool) that reads the old-class rows from a parquet file:

- ``before``: the draw functions of the previous implementation (benchmarks/stats_before.py,
  patched in), ``after``: the library's;
- per process: fixed cost (``--n-boot`` 2, no null: cells, estimates, pooling), then ``N``
  bootstrap + ``N`` null draws; per-draw CPU and wall = the bootstrap and null phases as
  ``resample`` times them (``Resampled.timing``) / N; 1 thread, and 2 threads for the scaling;
- ``--primary``: then the whole ``stats_primary`` computation (``run_all`` on the whole deltas
  table, new-class rows included, read as scripts/stats_primary.py reads it: every table) with
  ``--primary-draws`` bootstrap and null draws on 2 threads, wall and CPU time, peak RSS (after only).

Ends with one summary line of the after/before ratios.

``calibration`` mode: ``memplast.stats.calibration`` over ``--reps`` replicates of three
scenarios (planted effects; null within class with a class-level confound; null with between-order
heterogeneity), printing coverage and rejection rate per reported quantity with Monte Carlo SEs.

Usage: python benchmarks/bench_stats.py scale [--scale 1.0] [--draws-before 20] [--draws-after 100] [--primary | --primary-only]
       python benchmarks/bench_stats.py calibration [--reps 500]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow

from memplast import io, stats
from memplast.stats import calibration, tables
from memplast.stats.tables import association_tables

SCENARIOS = {
    "planted": dict(beta=0.3, trend=0.1, shift=0.15),
    "null": dict(beta=0.0, trend=0.0, shift=0.0),
    "heterogeneous_null": dict(beta=0.0, trend=0.0, sd_order=0.3, shift=None),
}


def paper_table(scale: float) -> pd.DataFrame:
    n_per_class = max(10, int(450 * scale))
    return stats.synthetic_deltas(
        n_orders=5, n_classes=100, classes_per_task=5, n_per_class=n_per_class, nan_fraction=0.01, seed=0
    )


CFG = {"seed": 0, "ci_level": 0.95, "epochs_per_task": 30, "window": 5}


def peak_rss_mib() -> float:
    """This process's peak RSS since exec (VmHWM; ru_maxrss would include the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, parts: dict, name: str):
    def timed(*a, **k):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn(*a, **k)
        parts[name] = (time.perf_counter() - t0, time.process_time() - c0)
        return result

    return timed


_BEFORE = None


def measure(args) -> None:
    """One fresh process: fixed cost, per-draw CPU of bootstrap and null, peak RSS (JSON on stdout)."""
    if args.impl == "before":
        sys.path.insert(0, str(Path(__file__).parent))
        import stats_before

        global _BEFORE  # keep the context alive: a collected generator would run its finally (unpatch)
        _BEFORE = stats_before.patched()
        _BEFORE.__enter__()
    if args.primary_run:  # as scripts/stats_primary.py: the whole deltas table through run_all
        deltas = io.read_parquet(args.deltas)
        pyarrow.default_memory_pool().release_unused()
        draws = {"n_boot": args.primary_run, "n_permutations": args.primary_run}
        parts = {}  # wall and CPU seconds of run_all's three stages
        for name in ("association_tables", "model_table", "effect_tables"):
            setattr(tables, name, _timed(getattr(tables, name), parts, name))
        t0, c0 = time.perf_counter(), time.process_time()
        stats.run_all(deltas, {**CFG, "threads": args.threads, **draws})
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"primary_wall": wall, "primary_cpu": cpu, "parts": parts, "max_rss_mib": peak_rss_mib()}))
        return
    old = pd.read_parquet(args.table)
    pyarrow.default_memory_pool().release_unused()  # as scripts/stats_primary.py: the read's buffers
    outcomes, kinds = list(stats.DEFAULT_OUTCOMES), list(stats.KINDS)
    out = {"impl": args.impl, "threads": args.threads, "rows": len(old)}

    timings = []  # the draw phases of each resample, timed inside it (no difference of two noisy runs)
    inner = tables.resample
    tables.resample = lambda *a, **k: timings.append(inner(*a, **k)) or timings[-1]

    def run(n_boot, n_null):
        cfg = {**CFG, "threads": args.threads, "n_boot": n_boot, "n_permutations": n_null}
        t0, c0 = time.perf_counter(), time.process_time()
        association_tables(old, cfg, outcomes, kinds)
        return time.perf_counter() - t0, time.process_time() - c0

    n = args.n_boot
    out["fixed_wall"], out["fixed_cpu"] = run(2, 0)  # cells, estimates, pooling (and 2 draws)
    out["full_wall"], out["full_cpu"] = run(n, n)
    t = timings[-1].timing
    out["boot_cpu"], out["null_cpu"] = t["boot_cpu"] / n, t["null_cpu"] / n  # all threads' CPU
    out["draw_wall"] = (t["boot_wall"] + t["null_wall"]) / n  # one bootstrap + one null draw
    out["max_rss_mib"] = peak_rss_mib()
    print(json.dumps(out))


def child(args, impl: str, threads: int, n_boot: int, primary: int = 0) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "_measure", "--impl", impl, "--threads", str(threads), "--n-boot", str(n_boot)]
    cmd += ["--table", args.table, "--deltas", args.deltas, "--primary-run", str(primary)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{impl}/{threads} threads failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def scale_mode(args) -> None:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        deltas = paper_table(args.scale)
        args.table, args.deltas = str(Path(tmp) / "old.parquet"), str(Path(tmp) / "deltas.parquet")
        if args.primary or args.primary_only:
            deltas.to_parquet(args.deltas)
        cols = stats.RUN_KEYS + ["sample_id", "label", "boundary", "is_old", "kind", "memo", "loss_t"]
        old = deltas.loc[deltas["is_old"], cols + list(stats.DEFAULT_OUTCOMES)].sort_values("sample_id", kind="stable")
        del deltas
        old.to_parquet(args.table)
        print(
            f"table: {len(old):,} old-class rows, {old['sample_id'].nunique():,} samples, "
            f"{old['boundary'].nunique()} boundaries, {old['order_seed'].nunique()} orders, 2 kinds, "
            f"{len(stats.DEFAULT_OUTCOMES)} outcomes (built in {time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        del old
        print("load average (1, 5, 15 min) at start: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()), flush=True)
        res = {}
        for impl, n in () if args.primary_only else (("before", args.draws_before), ("after", args.draws_after)):
            for threads in (1, 2):
                r = res[impl, threads] = child(args, impl, threads, n)
                print(
                    f"{impl:6s} {threads} thread(s), {n} draws: fixed cost {r['fixed_wall']:.1f} s wall / "
                    f"{r['fixed_cpu']:.1f} s CPU; "
                    + (
                        f"CPU per bootstrap draw {r['boot_cpu']:.3f} s, per null draw {r['null_cpu']:.3f} s, "
                        if threads == 1
                        else ""
                    )
                    + f"wall per bootstrap + null draw {r['draw_wall']:.3f} s; peak RSS {r['max_rss_mib']:.0f} MiB",
                    flush=True,
                )
        if args.primary or args.primary_only:
            r = child(args, "after", 2, args.draws_after, primary=args.primary_draws)
            print(
                f"after: stats_primary computation (run_all on the whole deltas table, every table) with "
                f"{args.primary_draws} bootstrap + {args.primary_draws} null draws on 2 threads: wall "
                f"{r['primary_wall'] / 60:.1f} min, CPU {r['primary_cpu'] / 60:.1f} min, peak RSS {r['max_rss_mib']:.0f} MiB; "
                + ", ".join(f"{k} {w:.0f} s wall / {c:.0f} s CPU" for k, (w, c) in r["parts"].items()),
                flush=True,
            )
    if args.primary_only:
        print(f"summary: scale {args.scale}, stats_primary with {args.primary_draws} + {args.primary_draws} draws "
              f"on 2 threads: {r['primary_wall'] / 60:.1f} min wall, peak RSS {r['max_rss_mib']:.0f} MiB")  # fmt: skip
        return
    b1, a1, b2, a2 = res["before", 1], res["after", 1], res["before", 2], res["after", 2]
    for impl, one, two in (("before", b1, b2), ("after", a1, a2)):
        print(
            f"{impl}: thread scaling (bootstrap + null draw, wall) 1 -> 2 threads: "
            f"{one['draw_wall']:.3f} -> {two['draw_wall']:.3f} s ({one['draw_wall'] / two['draw_wall']:.2f}x)"
        )
    for impl, r in (("before", b1), ("after", a1)):
        minutes = (r["fixed_cpu"] + 2000 * (r["boot_cpu"] + r["null_cpu"])) / 60
        print(f"{impl}: 2,000 bootstrap + 2,000 null draws ~{minutes:.0f} CPU min (association tables)")
    print("load average (1, 5, 15 min) at end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print(
        f"summary: scale {args.scale}, CPU per bootstrap draw {b1['boot_cpu']:.3f} -> {a1['boot_cpu']:.3f} s "
        f"({b1['boot_cpu'] / a1['boot_cpu']:.1f}x), per null draw {b1['null_cpu']:.3f} -> {a1['null_cpu']:.3f} s "
        f"({b1['null_cpu'] / a1['null_cpu']:.1f}x), fixed {b1['fixed_cpu']:.0f} -> {a1['fixed_cpu']:.0f} CPU s, "
        f"peak RSS {b1['max_rss_mib']:.0f} -> {a1['max_rss_mib']:.0f} MiB, 2-thread speed-up "
        f"{b1['draw_wall'] / b2['draw_wall']:.2f}x -> {a1['draw_wall'] / a2['draw_wall']:.2f}x"
    )


def calibration_mode(args) -> None:
    tables = []
    for name, scenario in SCENARIOS.items():
        t0 = time.perf_counter()
        runs = calibration.calibration_runs(scenario, args.reps, n_boot=args.n_boot, n_null=args.n_perm, seed=1)
        table = calibration.calibration_table(runs).assign(scenario=name)
        tables.append(table)
        print(f"{name}: {args.reps} replicates in {time.perf_counter() - t0:.0f} s")
    out = pd.concat(tables, ignore_index=True)
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(
            out[["scenario", "quantity", "n_rep", "truth", "coverage", "coverage_se", "rejection", "rejection_se"]]
            .round(3)
            .to_string(index=False)
        )
    null = out[(out["scenario"] == "null") & out["quantity"].str.contains("partial|ols|trend partial")]
    print(
        f"summary: null rejection of within-class quantities {null['rejection'].min():.3f}-"
        f"{null['rejection'].max():.3f}; coverage {out['coverage'].min():.3f}-{out['coverage'].max():.3f} "
        f"(all scenarios, {args.reps} replicates each)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["scale", "calibration", "_measure"])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of 450 samples per class")
    parser.add_argument("--draws-before", type=int, default=20, help="draws timed with the previous implementation")
    parser.add_argument("--draws-after", type=int, default=100, help="draws timed with the library's")
    parser.add_argument("--primary", action="store_true", help="also time run_all (every table), 2 threads")
    parser.add_argument("--primary-only", action="store_true", help="only the --primary measurement (implies it)")
    parser.add_argument("--primary-draws", type=int, default=2000)
    parser.add_argument("--n-boot", type=int, default=None)
    parser.add_argument("--n-perm", type=int, default=None)
    parser.add_argument("--reps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--impl", choices=["before", "after"], default="after")
    parser.add_argument("--table", default=None)
    parser.add_argument("--deltas", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--primary-run", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "scale":
        scale_mode(args)
    elif args.mode == "_measure":
        measure(args)
    else:
        args.n_boot = args.n_boot or 200
        args.n_perm = args.n_perm if args.n_perm is not None else 100
        calibration_mode(args)


if __name__ == "__main__":
    main()
