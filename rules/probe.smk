# Per-sample probes on the checkpoints around every task boundary (one job per run and
# boundary), boundary deltas per run, and the run summary (accuracy and model-level metrics).


def boundary_checkpoints(wc):
    """Checkpoints E_k-w+1 .. E_k (end of task k) and E_k+1 .. E_k+w (start of task k+1)."""
    k = int(wc.boundary)
    before = [(k, te) for te in range(E - W + 1, E + 1)]
    after = [(k + 1, te) for te in range(1, W + 1)]
    return [(RUN + "/task{t}/ckpt/te{te}.pt").format(**wc, t=t, te=te) for t, te in before + after]


rule probe:
    input:
        prepared=PREPARED,
        order=ORDER_FILE,
        kept=SUBSET + "/kept.parquet",
        checkpoints=boundary_checkpoints,
    output:
        probes=RUN + "/probes/boundary{boundary}.parquet",
    params:
        boundary=lambda wc: int(wc.boundary),
        cfg=cfg_slice("protocol", "probes", "memo"),
    log:
        log_path("probe/" + RUN.removeprefix("results/runs/") + "/boundary{boundary}"),
    benchmark:
        bench_path("probe/" + RUN.removeprefix("results/runs/") + "/boundary{boundary}")
    group:
        "probes"
    threads: job("probe", "threads")
    resources:
        mem_mb=lambda wc, attempt: job("probe", "mem_mb") * attempt,
        runtime=lambda wc, attempt: job("probe", "runtime") * attempt,
        gpu=job("probe", "gpu"),
    conda:
        ENV_TORCH
    script:
        "../scripts/probe.py"


rule deltas:
    input:
        probes=expand(RUN + "/probes/boundary{boundary}.parquet", boundary=BOUNDARIES, allow_missing=True),
        scores=SCORES,
    output:
        deltas=RUN + "/deltas.parquet",
        legacy=RUN + "/windowed_plasticity_data.csv",
    params:
        run=lambda wc: dict(wc.items()),
        score_col=score_column(config),
        cfg=cfg_slice("protocol", "probes", "memo"),
    log:
        log_path("probe/" + RUN.removeprefix("results/runs/") + "/deltas"),
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    conda:
        ENV_TORCH
    script:
        "../scripts/deltas.py"


rule run_summary:
    input:
        prepared=PREPARED,
        ends=expand(RUN + "/task{task}/ckpt/te{te}.pt", task=range(N_TASKS), te=E, allow_missing=True),
        metrics=expand(RUN + "/task{task}/metrics.parquet", task=range(N_TASKS), allow_missing=True),
    output:
        summary=RUN + "/summary.parquet",
        per_class=RUN + "/per_class_accuracy.parquet",
    params:
        run=lambda wc: dict(wc.items()),
        cfg=cfg_slice("protocol", "probes"),
    log:
        log_path("probe/" + RUN.removeprefix("results/runs/") + "/summary"),
    benchmark:
        bench_path("probe/" + RUN.removeprefix("results/runs/") + "/summary")
    threads: job("probe", "threads")
    resources:
        mem_mb=job("probe", "mem_mb"),
        runtime=job("probe", "runtime"),
        gpu=job("probe", "gpu"),
    conda:
        ENV_TORCH
    script:
        "../scripts/run_summary.py"
