# Statistics, figures and the report. The primary condition's analysis needs only the primary
# runs (all class orders); condition comparisons need every run. Asking for one figure never
# trains more than it needs.
from memplast.grid import TABLES

PRIMARY_RUNS = run_dirs([PRIMARY])
ALL_RUNS = run_dirs()
# runs with per-sample probes (the `retrained` references have none)
PROBED_RUNS = run_dirs([c for c in CONDITIONS if c["algorithm"] != "retrained"])
PRIMARY_TABLES = list(TABLES)
FIGURE_OUTCOMES = {
    "dgrad": "d_log_grad",
    "dloss": "d_loss",
    "ddormant": f"d_dormant_t{max(config['probes']['taus']):g}",
}
STATS_CFG = {
    **config["stats"],
    "epochs_per_task": E,
    "window": W,
    "taus": config["probes"]["taus"],
    "primary": PRIMARY,
}


rule stats_primary:
    input:
        deltas=[f"{r}/deltas.parquet" for r in PRIMARY_RUNS],
    output:
        tables=[
            report(
                f"results/stats/{t}.csv",
                caption=(
                    "../report/headline_table.rst"
                    if t == "headline"
                    else "../report/stats_table.rst"
                ),
                category="Answer" if t == "headline" else "Statistical tables",
            )
            for t in PRIMARY_TABLES
        ],
        pooled="results/stats/primary_deltas.parquet",
    log:
        log_path("stats/primary"),
    benchmark:
        bench_path("stats/primary")
    conda:
        ENV_STATS
    threads: job("stats", "threads")
    resources:
        mem_mb=stats_job(PRIMARY_RUNS, "mem_mb"),
        runtime=stats_job(PRIMARY_RUNS, "runtime"),
    params:
        names=PRIMARY_TABLES,
        cfg=STATS_CFG,
    script:
        "../scripts/stats_primary.py"


rule stats_conditions:
    input:
        summaries=[f"{r}/summary.parquet" for r in ALL_RUNS],
        deltas=[f"{r}/deltas.parquet" for r in PROBED_RUNS],
    output:
        conditions="results/stats/conditions.csv",
        summary="results/stats/run_summaries.parquet",
    log:
        log_path("stats/conditions"),
    benchmark:
        bench_path("stats/conditions")
    conda:
        ENV_STATS
    threads: job("stats", "threads")
    resources:
        mem_mb=stats_job(PROBED_RUNS, "mem_mb", effects=False),
        runtime=stats_job(PROBED_RUNS, "runtime", effects=False),
    params:
        cfg=STATS_CFG,
    script:
        "../scripts/stats_conditions.py"


rule figure_memo_vs_outcome:
    input:
        per_boundary="results/stats/per_boundary.csv",
        pooled="results/stats/pooled.csv",
        deciles="results/stats/deciles.csv",
        deltas="results/stats/primary_deltas.parquet",
    output:
        pdf=report(
            "results/figures/memo_vs_{name}.pdf",
            caption=report_caption("memo_vs_outcome", outcomes=FIGURE_OUTCOMES),
            category="Memorization vs plasticity",
        ),
        png="results/figures/memo_vs_{name}.png",
    log:
        log_path("figures/memo_vs_{name}"),
    wildcard_constraints:
        name="|".join(FIGURE_OUTCOMES),
    conda:
        ENV_STATS
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    params:
        outcome=lambda wc: FIGURE_OUTCOMES[wc.name],
        cfg=STATS_CFG,
    script:
        "../scripts/figure.py"


rule figure_conditions:
    input:
        summary="results/stats/run_summaries.parquet",
    output:
        pdf=report(
            "results/figures/{name}.pdf",
            caption=report_caption("condition_figure"),
            category="Conditions",
        ),
        png="results/figures/{name}.png",
    log:
        log_path("figures/{name}"),
    wildcard_constraints:
        name="accuracy_curves|dormant_and_rank",
    conda:
        ENV_STATS
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    params:
        cfg=STATS_CFG,
    script:
        "../scripts/figure.py"


rule figure_class_balance:
    input:
        balance=expand(
            f"{SUBSET}/class_balance.csv", filter=config["conditions"]["filters"]
        ),
    output:
        pdf=report(
            "results/figures/class_balance.pdf",
            caption=report_caption("class_balance"),
            category="Conditions",
        ),
        png="results/figures/class_balance.png",
    log:
        log_path("figures/class_balance"),
    conda:
        ENV_STATS
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    params:
        cfg=cfg_slice("subset", "conditions"),
    script:
        "../scripts/figure.py"


rule order_diagnostics:
    input:
        prepared=PREPARED,
        order=ORDER_FILE.format(seed=ORDER_SEEDS[0]),
        kept=f"results/subsets/{PRIMARY['filter']}/kept.parquet",
        scores=SCORES,
    output:
        diagnostics="results/orderings/{ordering}/order_diagnostics.csv",
        gaps="results/orderings/{ordering}/gap_summary.csv",
    log:
        log_path("train/order_diagnostics_{ordering}"),
    conda:
        ENV_TORCH
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    params:
        ordering=lambda wc: wc.ordering,
        score_col=score_column(config),
        cfg=cfg_slice("protocol", "ordering"),
    script:
        "../scripts/order_diagnostics.py"


rule figure_order_diagnostics:
    input:
        diagnostics=expand(
            "results/orderings/{ordering}/order_diagnostics.csv",
            ordering=config["conditions"]["orderings"],
        ),
    output:
        pdf=report(
            "results/figures/order_diagnostics.pdf",
            caption=report_caption("order_diagnostics"),
            category="Conditions",
        ),
        png="results/figures/order_diagnostics.png",
    log:
        log_path("figures/order_diagnostics"),
    conda:
        ENV_STATS
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    params:
        cfg=cfg_slice("ordering", "conditions"),
    script:
        "../scripts/figure.py"


rule heldout_analysis:
    input:
        heldout=[f"{r}/heldout.parquet" for r in ALL_RUNS],
        samples=[f"{r}/heldout_samples.parquet" for r in ALL_RUNS],
        heldout_dependence="results/memo/heldout_dependence.parquet",
    output:
        measures="results/stats/heldout_slices.csv",
        comparison=report(
            "results/stats/heldout_comparison.csv",
            caption="../report/stats_table.rst",
            category="Held-out samples",
        ),
        association="results/stats/heldout_association.csv",
        answer="results/stats/heldout_answer.csv",
        pdf=report(
            "results/figures/heldout_slices.pdf",
            caption=report_caption("heldout_slices"),
            category="Held-out samples",
        ),
        png="results/figures/heldout_slices.png",
    log:
        log_path("stats/heldout"),
    benchmark:
        bench_path("stats/heldout")
    conda:
        ENV_STATS
    threads: 1
    resources:
        mem_mb=job("stats", "mem_mb"),
        runtime=job("stats", "runtime"),
    params:
        cfg=STATS_CFG,
    script:
        "../scripts/heldout_analysis.py"


rule memo_validation:
    input:
        scores=SCORES,
        prepared=PREPARED,
        heldout_dependence="results/memo/heldout_dependence.parquet",
    output:
        agreement="results/memo/agreement.csv",
        auroc="results/memo/noise_auroc.csv",
        proxy_auroc="results/memo/heldout_proxy_auroc.csv",
        pdf=report(
            "results/figures/memo_validation.pdf",
            caption=report_caption("memo_validation"),
            category="Memorization scores",
        ),
        png="results/figures/memo_validation.png",
    log:
        log_path("figures/memo_validation"),
    conda:
        ENV_STATS
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    params:
        cfg=cfg_slice("memo", "dataset", "heldout"),
    script:
        "../scripts/memo_validation.py"
