"""memplast: does per-sample memorization predict per-sample loss of plasticity?

The library behind the Snakemake workflow. One module per concept:
grid (run factors, the run grid, epoch arithmetic, table names: what the DAG is built from,
standard library only), config (schema and cross-key checks), data (datasets, splits, label noise,
class orders), io (tables with provenance), models, augment (batched input pipeline), train (the
incremental protocol), subsets (memo filters), orderings, curvature (memorization scores), probes
(per-sample checkpoint quantities), model_metrics, deltas (boundary deltas), stats, plots.
"""

__version__ = "0.1.0"
