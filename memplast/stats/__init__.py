"""Statistics: does per-sample memorization predict per-sample loss of plasticity? (design §6)

The unit of inference is the sample. Modules by concern:

- ``common``: run keys, input checks, seeding, Benjamini-Hochberg, bootstrap p and CI;
- ``resampling``: the class-stratified sample-id bootstrap and within-class permutations, drawn
  once per replicate and applied to every cell (order x kind x boundary) as weights;
- ``pooling``: per-cell, pooled (fixed / HKSJ random), trend and condition-difference rows;
- ``models``: OLS of the outcome on memo's within-cell rank with fixed effects, clustered by sample;
- ``correlation``: one-sample correlations and the legacy windowed table;
- ``effects``: deciles, tails, mediation, cross-sample; ``conditions``: accuracy differences;
- ``tables``: the orchestration (``run_all``, ``compare_conditions``) and BH families;
- ``synthetic`` / ``calibration``: generators with planted effects, and calibration runs.
"""

from memplast.grid import TABLES  # noqa: F401  (the table names: memplast.grid owns them)
from memplast.stats.common import (  # noqa: F401
    CONDITION_KEYS,
    DEFAULT_OUTCOMES,
    ESTIMATORS,
    KINDS,
    MIN_N,
    POOLED_COLUMNS,
    PRIMARY,
    RUN_KEYS,
    add_bh,
    bh,
    bootstrap_p,
    outcomes_of,
    require,
)
from memplast.stats.conditions import accuracy_differences  # noqa: F401
from memplast.stats.correlation import (  # noqa: F401
    CORRELATION_COLUMNS,
    correlations,
    partial_spearman,
    windowed_correlation_columns,
    windowed_correlation_results,
)
from memplast.stats.effects import (  # noqa: F401
    CROSS_SAMPLE_COLUMNS,
    DECILE_COLUMNS,
    MEDIATION_COLUMNS,
    TAIL_COLUMNS,
    bootstrap_medians,
    cross_sample,
    decile_effects,
    mediation,
    tails,
)
from memplast.stats.models import ols_rank_fe  # noqa: F401
from memplast.stats.pooling import NULL_COLUMNS, random_effects  # noqa: F401
from memplast.stats.resampling import resample  # noqa: F401
from memplast.stats.synthetic import synthetic_deltas, synthetic_summary  # noqa: F401
from memplast.stats.tables import ROW_COLUMNS, boundary_stride, compare_conditions, run_all  # noqa: F401
