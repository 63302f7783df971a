# Per-sample probes on the checkpoints around every task boundary, boundary deltas per run, every
# held-out sample at every checkpoint of a run, and the run summary (accuracy and model-level metrics).
#
# probes.jobs chooses who writes a run's probe tables (the same files, the same tables):
#   boundary (default): rule probe, one job per run and boundary (SLURM: grouped, group "probes");
#   run: rule probe_run, one job per run, one process probing its boundaries in turn.
# Both rules exist; the ruleorder picks the configured one.

# a run's probe tables, one per boundary (what deltas reads, whichever rule writes them)
RUN_PROBES = expand(
    f"{RUN}/probes/boundary{{boundary}}.parquet",
    boundary=BOUNDARIES,
    allow_missing=True,
)

if config["probes"]["jobs"] == "run":

    ruleorder: probe_run > probe

else:

    ruleorder: probe > probe_run


rule probe:
    input:
        prepared=PREPARED,
        order=ORDER_FILE,
        kept=f"{SUBSET}/kept.parquet",
        checkpoints=boundary_checkpoints,
    output:
        probes=f"{RUN}/probes/boundary{{boundary}}.parquet",
    log:
        log_path(f"probe/{RUN_ID}/boundary{{boundary}}"),
    benchmark:
        bench_path(f"probe/{RUN_ID}/boundary{{boundary}}")
    group:
        "probes"
    conda:
        ENV_TORCH
    threads: job("probe", "threads")
    resources:
        mem_mb=lambda wc, attempt: job("probe", "mem_mb") * attempt,
        runtime=gpu_runtime("probe"),
        gpu=job("probe", "gpu"),
        # grouped jobs run one at a time in a SLURM submission (profiles/slurm: serial=1)
        serial=1,
    params:
        boundary=lambda wc: int(wc.boundary),
        cfg=run_cfg_slice("protocol", "probes", "memo"),
    script:
        "../scripts/probe.py"


rule probe_run:
    input:
        prepared=PREPARED,
        order=ORDER_FILE,
        kept=f"{SUBSET}/kept.parquet",
        checkpoints=run_boundary_checkpoints,
    output:
        probes=RUN_PROBES,
    log:
        log_path(f"probe/{RUN_ID}/boundaries"),
    benchmark:
        bench_path(f"probe/{RUN_ID}/boundaries")
    conda:
        ENV_TORCH
    threads: job("probe", "threads")
    resources:
        mem_mb=lambda wc, attempt: job("probe", "mem_mb") * attempt,
        # the sum of its boundaries' probe jobs, the start-up once (memplast/cost.py)
        runtime=gpu_runtime("probe_run"),
        gpu=job("probe", "gpu"),
    params:
        boundary=BOUNDARIES,
        cfg=run_cfg_slice("protocol", "probes", "memo"),
    script:
        "../scripts/probe.py"


rule deltas:
    input:
        probes=RUN_PROBES,
        scores=SCORES,
    output:
        deltas=f"{RUN}/deltas.parquet",
        legacy=f"{RUN}/windowed_plasticity_data.csv",
    log:
        log_path(f"probe/{RUN_ID}/deltas"),
    conda:
        ENV_TORCH
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    params:
        run=lambda wc: dict(wc.items()),
        score_col=score_column(config),
        cfg=run_cfg_slice("protocol", "probes", "memo"),
    script:
        "../scripts/deltas.py"


rule heldout:
    input:
        prepared=PREPARED,
        checkpoints=heldout_checkpoints,
    output:
        heldout=f"{RUN}/heldout.parquet",
        samples=f"{RUN}/heldout_samples.parquet",
    log:
        log_path(f"probe/{RUN_ID}/heldout"),
    benchmark:
        bench_path(f"probe/{RUN_ID}/heldout")
    conda:
        ENV_TORCH
    threads: job("probe", "threads")
    resources:
        mem_mb=job("probe", "mem_mb"),
        runtime=gpu_runtime("heldout"),
        gpu=job("probe", "gpu"),
    params:
        run=lambda wc: dict(wc.items()),
        cfg=run_cfg_slice("dataset", "protocol"),
    script:
        "../scripts/heldout.py"


rule run_summary:
    input:
        prepared=PREPARED,
        ends=expand(
            ckpt.epoch_checkpoint(RUN, "{task}", E),
            task=range(N_TASKS),
            allow_missing=True,
        ),
        metrics=expand(
            f"{RUN}/task{{task}}/metrics.parquet",
            task=range(N_TASKS),
            allow_missing=True,
        ),
    output:
        summary=f"{RUN}/summary.parquet",
        per_class=f"{RUN}/per_class_accuracy.parquet",
    log:
        log_path(f"probe/{RUN_ID}/summary"),
    benchmark:
        bench_path(f"probe/{RUN_ID}/summary")
    conda:
        ENV_TORCH
    threads: job("probe", "threads")
    resources:
        mem_mb=job("probe", "mem_mb"),
        runtime=gpu_runtime("run_summary"),
        gpu=job("probe", "gpu"),
    params:
        run=lambda wc: dict(wc.items()),
        cfg=run_cfg_slice("protocol", "probes"),
    script:
        "../scripts/run_summary.py"
