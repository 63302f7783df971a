# Incremental training: the memo filter of each condition (rule subset), then one job per
# (run, task). A run's path names it: results/runs/order<seed>/<filter>/<ordering>/<weighting>/<algorithm>.
from memplast.grid import ALGORITHMS, parse_weighting


rule subset:
    input:
        unpack(subset_inputs),
    output:
        kept=f"{SUBSET}/kept.parquet",
        balance=f"{SUBSET}/class_balance.csv",
    log:
        log_path("train/subset_{filter}"),
    conda:
        ENV_TORCH
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    params:
        name=lambda wc: wc.filter,
        score_col=score_column(config),
        cfg=cfg_slice("subset", "memo"),
    script:
        "../scripts/subset.py"


rule train_task:
    input:
        unpack(train_inputs),
    output:
        end=ckpt.end_state(RUN, "{task}"),
        checkpoints=maybe_temp(
            [ckpt.epoch_checkpoint(RUN, "{task}", te) for te in CKPT_TASK_EPOCHS]
        ),
        # before-window of the boundary after this task: slot j = epoch (best - j), known only
        # after training; live = the last epoch before the best weights are restored
        window=ckpt.window_slots(RUN, "{task}", W),
        live=ckpt.live_checkpoint(RUN, "{task}"),
        metrics=f"{RUN}/task{{task}}/metrics.parquet",
        order_log=f"{RUN}/task{{task}}/order_log.parquet",
    log:
        log_path(f"train/{RUN_ID}/task{{task}}"),
    benchmark:
        bench_path(f"train/{RUN_ID}/task{{task}}")
    wildcard_constraints:
        # retrained: rule train_task_reference
        algorithm="|".join(a for a in ALGORITHMS if a != "retrained"),
    conda:
        ENV_TORCH
    threads: job("train", "threads")
    resources:
        mem_mb=lambda wc, attempt: job("train", "mem_mb") * attempt,
        runtime=gpu_runtime("train_task"),
        gpu=job("train", "gpu"),
    params:
        run=lambda wc: RUN_ID.format(**wc),
        seed=lambda wc: int(wc.seed),
        task=lambda wc: int(wc.task),
        ordering=lambda wc: wc.ordering,
        alpha=lambda wc: parse_weighting(wc.weighting),
        algorithm=lambda wc: wc.algorithm,
        ckpt_task_epochs=CKPT_TASK_EPOCHS,
        resume=lambda wc: f"results/resume/{RUN_ID}/task{{task}}.pt".format(**wc),
        score_col=score_column(config),
        cfg=run_cfg_slice("dataset", "model", "protocol", "ordering", "weighting"),
    script:
        "../scripts/train_task.py"


# The `retrained` accuracy references are never probed: they save only the end-of-task checkpoint
# (for their summary), not the probe windows.
use rule train_task as train_task_reference with:
    output:
        end=ckpt.end_state(RUN, "{task}"),
        checkpoints=maybe_temp([ckpt.epoch_checkpoint(RUN, "{task}", E)]),
        metrics=f"{RUN}/task{{task}}/metrics.parquet",
        order_log=f"{RUN}/task{{task}}/order_log.parquet",
    wildcard_constraints:
        algorithm="retrained",
    params:
        run=lambda wc: RUN_ID.format(**wc),
        seed=lambda wc: int(wc.seed),
        task=lambda wc: int(wc.task),
        ordering=lambda wc: wc.ordering,
        alpha=lambda wc: parse_weighting(wc.weighting),
        algorithm=lambda wc: wc.algorithm,
        ckpt_task_epochs=[E],
        resume=lambda wc: f"results/resume/{RUN_ID}/task{{task}}.pt".format(**wc),
        score_col=score_column(config),
        cfg=run_cfg_slice("dataset", "model", "protocol", "ordering", "weighting"),
