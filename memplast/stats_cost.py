"""Resources of the statistics rules (``stats_primary``, ``stats_conditions``) from their measured cost.

Torch- and pandas-free (read by rules/common.smk at DAG time). The constants are CPU seconds at the
measured size, ``ROWS_MEASURED`` old-class rows (paper size: 45,000 samples x 19 boundaries x 5 class
orders x 2 kinds, 6 outcomes), one thread, from ``python benchmarks/bench_stats.py scale`` (issue 25,
a shared 2-core machine); they scale linearly in rows and draws:

- association tables (``resample`` + pooling): ``FIXED_CPU_S`` + n_boot ``BOOT_CPU_S`` + n_perm
  ``NULL_CPU_S``, on the rule's threads with ``THREAD_EFFICIENCY``;
- effect tables (deciles with n_boot draws per run x kind x boundary x outcome, mediation with 200
  simulations, tails), single-threaded: ``DECILE_CPU_S`` per draw + ``MEDIATION_CPU_S`` (measured on
  one paper-size boundary and scaled; they, not the bootstrap, dominate ``stats_primary`` at paper size);
- peak memory: ``PEAK_MB`` (max RSS of the association tables at that size) plus the effect tables'
  copies, per thread ``THREAD_MB``.

``SAFETY`` covers a slower or shared node (CPU time here was measured under load).
"""

from __future__ import annotations

import math

ROWS_MEASURED = 4_275_000
FIXED_CPU_S = 15.0  # cells, estimates, pooling (measured 12-14 s)
BOOT_CPU_S = 0.55  # per bootstrap draw: cell kernels 0.46-0.53 s + counts and pooling
NULL_CPU_S = 0.25  # per null permutation (measured 0.15-0.24 s)
THREAD_EFFICIENCY = 0.6  # 2-thread speed-up / 2 of the draws (measured on a loaded machine; conservative)
DECILE_CPU_S = 0.6  # per bootstrap draw, every run x kind x boundary x outcome
MEDIATION_CPU_S = 2200.0  # 3 mediators x 200 simulations, every run x kind x boundary
PEAK_MB = 2200  # max RSS of the association tables at that size (the table is ~1 GB of it)
THREAD_MB = 150
SAFETY = 2.0


def old_rows(n_runs: int, classes_per_task: int, n_tasks: int, per_class: int, n_kinds: int = 2) -> int:
    """Old-class rows of ``n_runs`` runs: at boundary k the k + 1 first tasks' samples, per kind."""
    return n_runs * n_kinds * classes_per_task * per_class * n_tasks * (n_tasks - 1) // 2


def cpu_seconds(rows: int, n_boot: int, n_perm: int, threads: int = 1, effects: bool = True) -> float:
    """Estimated wall seconds (CPU seconds spread over ``threads``) of a statistics rule on ``rows``."""
    scale = rows / ROWS_MEASURED
    draws = scale * (n_boot * BOOT_CPU_S + n_perm * NULL_CPU_S)
    parallel = 1 if threads <= 1 else threads * THREAD_EFFICIENCY
    single = scale * (FIXED_CPU_S + (n_boot * DECILE_CPU_S + MEDIATION_CPU_S if effects else 0))
    return draws / parallel + single


def runtime_minutes(rows: int, n_boot: int, n_perm: int, threads: int, effects: bool = True) -> int:
    """Minutes to request: ``SAFETY`` x the estimate, plus 5 for start-up and I/O."""
    return int(math.ceil(SAFETY * cpu_seconds(rows, n_boot, n_perm, threads, effects) / 60 + 5))


def mem_mb(rows: int, threads: int) -> int:
    """MB to request: ``SAFETY`` x the measured peak, scaled to ``rows``, plus per-thread buffers."""
    return int(math.ceil(SAFETY * (PEAK_MB * rows / ROWS_MEASURED + THREAD_MB * threads)))
