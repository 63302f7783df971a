# Tuning before comparing (memplast/tuning.py), target `tune`: every point of each algorithm's grid
# (config tuning.grids) trained on the tuning class orders (tuning.seeds, disjoint from the
# evaluation orders) with the test split out of memory; the point with the best mean validation
# accuracy over tasks -> results/tuning/<algorithm>.yaml (+ .csv, the full grid table). With
# tuning.use: true the evaluation runs of a tuned algorithm read that file (rules/common.smk).
from memplast import tuning
from memplast.grid import parse_weighting

TUNE_RUN = "results/tuning/runs/{algorithm}/p{point}/order{seed}"
TUNE_SEEDS = config["tuning"]["seeds"]


def tune_inputs(wc):
    """A tuning task: the unfiltered training set of a tuning class order, the previous task's state."""
    inputs = {
        "prepared": PREPARED,
        "order": ORDER_FILE.format(seed=wc.seed),
        "kept": "results/subsets/none/kept.parquet",
    }
    if int(wc.task) > 0:
        inputs["prev_state"] = ckpt.end_state(TUNE_RUN.format(**wc), int(wc.task) - 1)
    return inputs


def tune_cfg(wc):
    """The config slice of a tuning job: the protocol with the grid point's values set."""
    proto = tuning.point_protocol(config, wc.algorithm, int(wc.point))
    keys = ("dataset", "model", "protocol", "ordering", "weighting")
    return runtime.rule_params({**config, "protocol": proto}, keys, wc.algorithm)


def tune_metrics(wc):
    """Every task's metrics of every grid point and tuning order of one algorithm."""
    n_points = len(tuning.grid_points(config["tuning"]["grids"][wc.algorithm]))
    return expand(
        f"{TUNE_RUN}/task{{task}}/metrics.parquet",
        algorithm=wc.algorithm,
        point=range(n_points),
        seed=TUNE_SEEDS,
        task=range(N_TASKS),
    )


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
        point=r"\d+",
        seed="|".join(str(s) for s in TUNE_SEEDS),
    conda:
        ENV_TORCH
    threads: job("train", "threads")
    resources:
        mem_mb=lambda wc, attempt: job("train", "mem_mb") * attempt,
        runtime=train_runtime,
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
