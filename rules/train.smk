# Incremental training: the memo filter of each condition (rule subset), then one job per
# (run, task). A run's path names it: results/runs/order<seed>/<filter>/<ordering>/<weighting>/<algorithm>.
from memplast.config import parse_weighting

MEMO_ORDERINGS = ("ascending", "descending", "stratified")


def subset_inputs(wc):
    """`none` keeps every sample and needs no memo scores, so the primary runs never wait for them."""
    return {"samples": SAMPLES} | ({} if wc.filter == "none" else {"scores": SCORES})


rule subset:
    input:
        unpack(subset_inputs),
    output:
        kept=SUBSET + "/kept.parquet",
        balance=SUBSET + "/class_balance.csv",
    params:
        name=lambda wc: wc.filter,
        score_col=score_column(config),
        cfg=cfg_slice("subset", "memo"),
    log:
        log_path("train/subset_{filter}"),
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    conda:
        ENV_TORCH
    script:
        "../scripts/subset.py"


def train_inputs(wc):
    task = int(wc.task)
    inputs = {
        "prepared": PREPARED,
        "order": ORDER_FILE.format(seed=wc.seed),
        "kept": SUBSET.format(filter=wc.filter) + "/kept.parquet",
    }
    if wc.ordering in MEMO_ORDERINGS or wc.weighting != "none":
        inputs["scores"] = SCORES
    if wc.ordering == "file":
        inputs["file_order"] = config["ordering"]["file"]
    if task > 0:
        inputs["prev_state"] = (RUN + "/task{prev}/end.pt").format(**wc, prev=task - 1)
    return inputs


def train_runtime(wc, attempt):
    """Minutes: epochs x images of the task x seconds per image, +10, doubled per retry."""
    n_images = (int(wc.task) + 1) * PROTO["classes_per_task"] * IMAGES_PER_CLASS
    seconds = E * n_images * job("train", "seconds_per_image")
    return int(math.ceil(seconds / 60 + 10)) * attempt


rule train_task:
    input:
        unpack(train_inputs),
    output:
        end=RUN + "/task{task}/end.pt",
        checkpoints=expand(RUN + "/task{task}/ckpt/te{te}.pt", te=CKPT_TASK_EPOCHS, allow_missing=True),
        metrics=RUN + "/task{task}/metrics.parquet",
        order_log=RUN + "/task{task}/order_log.parquet",
    params:
        run=lambda wc: RUN.removeprefix("results/runs/").format(**wc),
        seed=lambda wc: int(wc.seed),
        task=lambda wc: int(wc.task),
        ordering=lambda wc: wc.ordering,
        alpha=lambda wc: parse_weighting(wc.weighting),
        algorithm=lambda wc: wc.algorithm,
        ckpt_task_epochs=CKPT_TASK_EPOCHS,
        resume=lambda wc: (RUN.replace("results/runs", "results/resume") + "/task{task}.pt").format(**wc),
        score_col=score_column(config),
        cfg=cfg_slice("dataset", "model", "protocol", "ordering", "weighting"),
    log:
        log_path("train/" + RUN.removeprefix("results/runs/") + "/task{task}"),
    benchmark:
        bench_path("train/" + RUN.removeprefix("results/runs/") + "/task{task}")
    threads: job("train", "threads")
    resources:
        mem_mb=lambda wc, attempt: job("train", "mem_mb") * attempt,
        runtime=train_runtime,
        gpu=job("train", "gpu"),
    conda:
        ENV_TORCH
    script:
        "../scripts/train_task.py"
