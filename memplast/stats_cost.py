"""Resources of the statistics rules (``stats_primary``, ``stats_conditions``) from their measured cost.

Torch- and pandas-free (read by rules/common.smk at DAG time). The constants are CPU seconds at the
measured size, ``ROWS_MEASURED`` old-class rows (paper size: 45,000 samples x 19 boundaries x 5 class
orders x 2 kinds, 6 outcomes), from ``python benchmarks/bench_stats.py scale --primary`` (issue 25;
the draws on a shared 2-core machine at load average ~8.5 with the compiled kernels; the whole
``--primary-only`` computation, 2,000 + 2,000 draws on 2 threads, 6.5 min wall on the idle machine,
for the thread efficiency, the effect tables and peak memory); they scale linearly in rows and draws:

- association tables (``resample`` + pooling): ``FIXED_CPU_S`` + n_boot ``BOOT_CPU_S`` + n_perm
  ``NULL_CPU_S``, on the rule's threads with ``THREAD_EFFICIENCY``;
- models and effect tables (OLS per kind and outcome; deciles, whose resample medians cost O(1) per
  draw, ``DECILE_CPU_S`` per draw in all; mediation with 200 simulations; tails; cross-sample),
  single-threaded: ``EFFECTS_CPU_S`` + n_boot ``DECILE_CPU_S``;
- peak memory: ``PEAK_MB`` (max RSS of the whole ``stats_primary`` computation at that size: the
  deltas table of every row, its old-class rows, cells and draws) plus per thread ``THREAD_MB``.

``SAFETY`` covers a slower or shared node (CPU time here was measured under load).
"""

from __future__ import annotations

import math

ROWS_MEASURED = 4_275_000
FIXED_CPU_S = 10.0  # cells, estimates, pooling (measured 9.5-9.7 s, compiled kernels cached)
BOOT_CPU_S = 0.11  # per bootstrap draw, every cell (measured 0.102 s at load ~8.5: rank_kernels.cell_sums)
NULL_CPU_S = 0.10  # per null permutation, every cell (measured 0.087 s at load ~8.5)
THREAD_EFFICIENCY = 0.9  # 2-thread speed-up / 2 of the association tables (measured 328 CPU s in 179 s wall)
DECILE_CPU_S = 0.002  # per bootstrap draw, all deciles of every run x kind x boundary x outcome (measured ~0.001)
EFFECTS_CPU_S = 205.0  # models + effect tables (measured 31 + 173 s in run_all at paper size, idle)
PEAK_MB = 4850  # max RSS of the stats_primary computation at that size (measured 4,713-4,811 MiB)
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
    single = scale * (FIXED_CPU_S + (n_boot * DECILE_CPU_S + EFFECTS_CPU_S if effects else 0))
    return draws / parallel + single


def runtime_minutes(rows: int, n_boot: int, n_perm: int, threads: int, effects: bool = True) -> int:
    """Minutes to request: ``SAFETY`` x the estimate, plus 5 for start-up and I/O."""
    return int(math.ceil(SAFETY * cpu_seconds(rows, n_boot, n_perm, threads, effects) / 60 + 5))


def mem_mb(rows: int, threads: int) -> int:
    """MB to request: ``SAFETY`` x the measured peak, scaled to ``rows``, plus per-thread buffers."""
    return int(math.ceil(SAFETY * (PEAK_MB * rows / ROWS_MEASURED + THREAD_MB * threads)))
