# Loss of plasticity as Dohare et al. measure it: test accuracy of every algorithm relative to
# the retrained reference, paired over class orders (memplast/plasticity.py).


rule figure_plasticity_gap:
    input:
        summary="results/stats/run_summaries.parquet",
    output:
        gaps="results/stats/plasticity_gap.csv",
        signature="results/stats/plasticity_signature.csv",
        trends="results/stats/plasticity_trend.csv",
        pdf=report(
            "results/figures/plasticity_gap.pdf",
            caption=report_caption("plasticity_gap"),
            category="Conditions",
        ),
        png="results/figures/plasticity_gap.png",
    log:
        log_path("figures/plasticity_gap"),
    conda:
        ENV_STATS
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    params:
        cfg=STATS_CFG,
    script:
        "../scripts/plasticity_gap.py"


# The algorithm comparison: every algorithm of the primary data condition side by side, with the
# hyper-parameters it trained with and whether they were tuned (rules/tune.smk).
rule figure_algorithms:
    input:
        summary="results/stats/run_summaries.parquet",
        tunings=algorithm_tunings(),
    output:
        table="results/stats/algorithms.csv",
        pdf=report(
            "results/figures/algorithms.pdf",
            caption=report_caption("algorithms"),
            category="Algorithms",
        ),
        png="results/figures/algorithms.png",
    log:
        log_path("figures/algorithms"),
    conda:
        ENV_STATS
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    params:
        cfg=STATS_CFG,
        protocol=PROTO,
    script:
        "../scripts/algorithms_table.py"
