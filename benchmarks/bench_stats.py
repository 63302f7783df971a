"""Statistics at paper scale, and the calibration table.

``scale`` mode: a synthetic deltas table of the paper's size (45,000 samples = 100 classes x 450,
19 boundaries, 5 class orders, 2 kinds, the config's 6 outcomes; ``memplast.stats.synthetic_deltas``)
through the sample-bootstrap tables (headline/pooled/per_boundary/trend, ``n_boot`` replicates and
``n_permutations`` null permutations) and the OLS models; wall time and peak memory (tracemalloc
of numpy/pandas allocations, and the process's max RSS). Baseline side by side: the same
pipeline with ``--n-boot`` 1 and 0 permutations (the fixed cost of building the cells), so the
ratio is the cost of the resampling itself.

``calibration`` mode: ``memplast.stats.calibration`` over ``--reps`` replicates of three
scenarios (planted effects; null within class with a class-level confound; null with between-order
heterogeneity), printing coverage and rejection rate per reported quantity with Monte Carlo SEs.

Usage: python benchmarks/bench_stats.py scale [--scale 1.0] [--n-boot 2000] [--n-perm 2000]
       python benchmarks/bench_stats.py calibration [--reps 500]
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import pandas as pd

from memplast import stats
from memplast.stats import calibration
from memplast.stats.tables import association_tables, model_table

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


def timed(fn):
    """(result, wall s, CPU s of this process, peak traced MiB of Python/numpy allocations)."""
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, seconds, cpu, peak


def scale_mode(args) -> None:
    t0 = time.perf_counter()
    deltas = paper_table(args.scale)
    old = deltas[deltas["is_old"]].sort_values("sample_id", kind="stable")
    del deltas
    print(
        f"table: {len(old):,} old-class rows, {old['sample_id'].nunique():,} samples, "
        f"{old['boundary'].nunique()} boundaries, {old['order_seed'].nunique()} orders, 2 kinds "
        f"(built in {time.perf_counter() - t0:.0f} s; {old.memory_usage(deep=True).sum() / 2**20:.0f} MiB)"
    )
    outcomes = list(stats.DEFAULT_OUTCOMES)
    kinds = list(stats.KINDS)
    base_cfg = {"seed": 0, "ci_level": 0.95, "epochs_per_task": 30, "window": 5, "threads": args.threads}
    _, t_base, c_base, m_base = timed(
        lambda: association_tables(old, {**base_cfg, "n_boot": 2, "n_permutations": 0}, outcomes, kinds)
    )
    print(
        f"baseline (cells, estimates, pooling; 2 replicates): wall {t_base:.1f} s, CPU {c_base:.1f} s, "
        f"peak traced {m_base:.0f} MiB"
    )
    cfg = {**base_cfg, "n_boot": args.n_boot, "n_permutations": args.n_perm}
    tables, t_full, c_full, m_full = timed(lambda: association_tables(old, cfg, outcomes, kinds))
    print(
        f"bootstrap {args.n_boot} + null {args.n_perm}: wall {t_full:.1f} s, CPU {c_full:.1f} s, "
        f"peak traced {m_full:.0f} MiB; {len(tables['pooled'])} pooled rows"
    )
    per_rep = (c_full - c_base) / max(1, args.n_boot - 2)
    print(
        f"CPU per bootstrap replicate (all cells, outcomes, kinds): {per_rep:.2f} s -> 2000 replicates "
        f"~{per_rep * 2000 / 60:.0f} CPU min (linear in replicates; divide by the rule's threads)"
    )
    _, t_models, c_models, m_models = timed(lambda: model_table(old, cfg, outcomes, kinds))
    print(
        f"OLS rank/FE clustered by sample ({len(outcomes) * len(kinds)} fits): wall {t_models:.1f} s, "
        f"CPU {c_models:.1f} s, peak traced {m_models:.0f} MiB"
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process max RSS {rss:.0f} MiB")
    print(
        f"summary: scale {args.scale}, {args.n_boot} bootstrap + {args.n_perm} null replicates: resampling/baseline "
        f"CPU ratio {c_full / c_base:.1f}x; association tables CPU {c_full:.0f} s, models CPU {c_models:.0f} s, "
        f"{per_rep:.2f} CPU s per replicate, max RSS {rss:.0f} MiB"
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
    parser.add_argument("mode", choices=["scale", "calibration"])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of 450 samples per class")
    parser.add_argument("--n-boot", type=int, default=None)
    parser.add_argument("--n-perm", type=int, default=None)
    parser.add_argument("--reps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.mode == "scale":
        args.n_boot = args.n_boot or 2000
        args.n_perm = args.n_perm if args.n_perm is not None else 2000
        scale_mode(args)
    else:
        args.n_boot = args.n_boot or 200
        args.n_perm = args.n_perm if args.n_perm is not None else 100
        calibration_mode(args)


if __name__ == "__main__":
    main()
