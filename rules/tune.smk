# Tuning before comparing (memplast/tuning.py), target `tune`: every point of each algorithm's grid
# (config tuning.grids) trained on the tuning class orders (tuning.seeds, disjoint from the
# evaluation orders) with the test split out of memory; the point with the best mean validation
# accuracy over tasks -> results/tuning/<algorithm>.yaml (+ .csv, the full grid table). With
# tuning.use: true the evaluation runs of a tuned algorithm read that file (rules/common.smk).
from memplast.grid import parse_weighting


rule tune:
    input:
        expand(
            "results/tuning/{algorithm}.yaml",
            algorithm=tuning.tuned_algorithms(config),
        ),


rule tune_task:
    input:
        unpack(tune_inputs),
    output:
        end=ckpt.end_state(TUNE_RUN, "{task}"),
        metrics=f"{TUNE_RUN}/task{{task}}/metrics.parquet",
        order_log=f"{TUNE_RUN}/task{{task}}/order_log.parquet",
    log:
        log_path("tune/{algorithm}/p{point}/order{seed}/task{task}"),
    benchmark:
        bench_path("tune/{algorithm}/p{point}/order{seed}/task{task}")
    wildcard_constraints:
        algorithm="|".join(tuning.tuned_algorithms(config)),
        point=r"\d+",
        seed="|".join(str(s) for s in TUNE_SEEDS),
    conda:
        ENV_TORCH
    threads: job("train", "threads")
    resources:
        mem_mb=lambda wc, attempt: job("train", "mem_mb") * attempt,
        runtime=gpu_runtime("tune_task"),
        gpu=job("train", "gpu"),
    params:
        run=lambda wc: f"tuning/{wc.algorithm}/p{wc.point}/order{wc.seed}",
        seed=lambda wc: int(wc.seed),
        task=lambda wc: int(wc.task),
        ordering="random",
        alpha=parse_weighting("none"),
        algorithm=lambda wc: wc.algorithm,
        checkpoints=[],
        ckpt_task_epochs=[],
        resume=lambda wc: f"results/resume/tuning/{wc.algorithm}/p{wc.point}/order{wc.seed}/task{wc.task}.pt",
        score_col=score_column(config),
        drop_test=True,
        cfg=tune_cfg,
    script:
        "../scripts/train_task.py"


rule tune_select:
    input:
        metrics=tune_metrics,
    output:
        selection="results/tuning/{algorithm}.yaml",
        table="results/tuning/{algorithm}.csv",
    log:
        log_path("tune/{algorithm}_select"),
    wildcard_constraints:
        algorithm="|".join(tuning.tuned_algorithms(config)),
    conda:
        ENV_STATS
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    params:
        algorithm=lambda wc: wc.algorithm,
        grid=lambda wc: config["tuning"]["grids"][wc.algorithm],
        cfg=lambda wc: {
            "tuning": config["tuning"],
            "class_orders": config["class_orders"],
        },
    script:
        "../scripts/tune_select.py"
