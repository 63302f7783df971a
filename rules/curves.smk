# Training curves of the whole study: every run's per-epoch metrics joined into one table, runs
# with non-finite or diverging loss flagged, and a learning-curve figure in the report.


rule training_curves:
    input:
        metrics=[
            f"{r}/task{t}/metrics.parquet" for r in run_dirs() for t in range(N_TASKS)
        ],
    output:
        curves="results/stats/training_curves.parquet",
        flags="results/stats/training_flags.csv",
        pdf=report(
            "results/figures/training_curves.pdf",
            caption=report_caption("training_curves"),
            category="Training",
        ),
        png="results/figures/training_curves.png",
    log:
        log_path("figures/training_curves"),
    conda:
        ENV_STATS
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    params:
        cfg=cfg_slice("protocol"),
    script:
        "../scripts/training_curves.py"
