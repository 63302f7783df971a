"""memplast: does per-sample memorization predict per-sample loss of plasticity?

The library behind the Snakemake workflow, one module per concept (docs/design.md §9):

- grid: run factors and their names, the run grid, wildcard patterns, epoch arithmetic, table
  names (standard library only: what the DAG is built from)
- config: config schema, defaults and cross-key checks
- runtime: runtime settings (how a job runs, never what it computes)
- cli: the command line / Snakemake entry point of every script (`--target`)
- data, feldman_zhang: datasets, splits, label noise, class orders, prepared data
- io, checksums: files with provenance; content checksums of a results tree
- device, gpu_slots: devices, seeds, generators, host-device traffic; one GPU per job
- models: networks and their init
- masks: class masks and the one class-masked loss
- checkpoints: checkpoint paths, writer, reader, the before-window format
- augment: the batched input pipeline
- algorithms: plasticity algorithms behind one interface
- train/ (task, state, epoch, device_data, scorer): training: one task of a run, the state it
  carries, the shared epoch step, the memo scorer
- subsets, orderings, weighting: run factors' data side: memo filters, sample orderings, loss weights
- curvature, memo_validation: memorization scores and their validation
- probes, grad_norms: per-sample probes; per-sample gradient norms
- model_metrics: model-level metrics (dormant units, ranks, weight magnitude)
- deltas: boundary deltas
- stats/: statistics
- plasticity: accuracy relative to `retrained`; the algorithm comparison table
- tuning: tuning before comparing (grids on disjoint class orders, selection by validation accuracy)
- heldout, dependence, heldout_analysis: held-out samples per checkpoint; which depend on
  memorized training samples; the slice analysis
- curves, plots, plots_headline, report: training curves, figures, report landing page
- budget, progress: budget of a target; progress bars through logging
- cost, stats_cost, calibrate, gpu_check: the measured cost model behind every runtime request
  (per-image costs x counted work), its calibration on a device, the pre-submission GPU check

The Snakefile and rules import only grid, config, runtime, cost, stats_cost, checkpoints, report and
tuning (no torch, scipy or statsmodels at DAG-build time; tests/test_dag.py).
"""

__version__ = "0.1.0"
