# Paths, the run grid and small helpers shared by every rule family.
import math

from memplast import runtime
from memplast.config import FACTORS, condition_path, conditions, n_classes
from memplast.report import figure_caption
from memplast.train import probe_epochs

DATASET = config["dataset"]["name"]
ORDER_SEEDS = config["class_orders"]["seeds"]
CONDITIONS = conditions(config)
PRIMARY = CONDITIONS[0]
PROTO = config["protocol"]
N_TASKS = PROTO["n_tasks"]
E = PROTO["epochs_per_task"]
W = config["probes"]["window"]
# Task-epochs (1-based, the same in every task) whose weights a training job saves.
CKPT_TASK_EPOCHS = probe_epochs(0, E, W, config["probes"]["extra_epochs"])
BOUNDARIES = list(range(N_TASKS - 1))


def _images_per_class():
    """Training images per class, for runtime estimates (no data needed at DAG time)."""
    ds = config["dataset"]
    if ds["name"] in ("cifar100", "cifar10"):
        return (500 if ds["name"] == "cifar100" else 5000) - ds["n_val_per_class"]
    per_class = 180 if ds["name"] == "digits" else ds["synthetic"]["n_per_class"]
    return int(
        per_class * (1 - ds["split_fractions"]["val"] - ds["split_fractions"]["test"])
    )


IMAGES_PER_CLASS = _images_per_class()

PREPARED = f"data/{DATASET}/prepared.npz"
SAMPLES = f"data/{DATASET}/samples.parquet"
ORDER_FILE = "results/class_orders/order{seed}.csv"
SCORES = "results/memo/scores.parquet"
RUN_ID = "order{seed}/{filter}/{ordering}/{weighting}/{algorithm}"
RUN = f"results/runs/{RUN_ID}"
SUBSET = "results/subsets/{filter}"

# Orderings that need memo scores (so their runs wait for the memo stage).
MEMO_ORDERINGS = ("ascending", "descending", "stratified")

ENV_TORCH = "../envs/torch.yaml"
ENV_STATS = "../envs/stats.yaml"


wildcard_constraints:
    dataset="cifar100|cifar10|digits|synthetic",
    seed=r"\d+",
    task=r"\d+",
    boundary=r"\d+",
    epoch=r"\d+",
    te=r"\d+",
    filter=r"none|(global|per_class|balanced)(_random)?-q[0-9.]+",
    ordering="random|fixed|ascending|descending|stratified|file",
    weighting=r"none|alpha-?[0-9.]+",
    algorithm="base|retrained|head_reset|shrink_perturb|cbp|upgd|upgd_cbp",


def log_path(name):
    """Log file of a job: logs/<rule family>/<name>.log."""
    return f"logs/{name}.log"


def bench_path(name):
    """Snakemake benchmark file of a heavy job."""
    return f"logs/benchmarks/{name}.tsv"


def cfg_slice(*keys, algorithm=None):
    """The config sections a rule depends on, passed as params (changes trigger reruns).
    Runtime settings (device, eval/probe batch sizes, state_every) are left out: the scripts
    read them from the config (memplast/runtime.py), so changing them reruns nothing. An
    algorithm's hyper-parameters (protocol.cbp, ...) are kept only for that ``algorithm``'s runs.
    """
    return runtime.rule_params(config, keys, algorithm)


def run_cfg_slice(*keys):
    """cfg_slice for the jobs of one run (the {algorithm} wildcard): tuning one algorithm
    reruns only that algorithm's runs."""
    return lambda wildcards: cfg_slice(*keys, algorithm=wildcards.algorithm)


def class_order_slice():
    """What a class order depends on: the dataset (its classes), lop_compatible, classes_per_task
    (not the list of seeds, so adding class orders reruns no existing one)."""
    return {
        "dataset": runtime.science("dataset", config["dataset"]),
        "class_orders": {"lop_compatible": config["class_orders"]["lop_compatible"]},
        "protocol": {"classes_per_task": PROTO["classes_per_task"]},
    }


def maybe_temp(paths):
    """Window checkpoints: temp() when probes.keep_checkpoints is false (deleted after use)."""
    return paths if config["probes"]["keep_checkpoints"] else temp(paths)


def job(family, key):
    """A resource value of a rule family from config['resources']."""
    return config["resources"][family][key]


def run_dirs(conditions_=None, seeds=None):
    """Run directories for the given conditions (default: all) and class-order seeds."""
    return [
        f"results/runs/order{s}/{condition_path(c)}"
        for c in (conditions_ or CONDITIONS)
        for s in (seeds if seeds is not None else ORDER_SEEDS)
    ]


def expand_all_targets():
    """Everything `snakemake` builds by default: every figure and table of the study."""
    figures = [
        "memo_vs_dgrad",
        "memo_vs_dloss",
        "memo_vs_ddormant",
        "accuracy_curves",
        "dormant_and_rank",
        "class_balance",
        "order_diagnostics",
        "memo_validation",
        "training_curves",
    ]
    # accuracy relative to the retrained reference (rules/plasticity.smk)
    if "retrained" in config["conditions"]["algorithms"]:
        figures.append("plasticity_gap")
    return [
        *expand("results/figures/{name}.pdf", name=figures),
        "results/stats/conditions.csv",
        "results/memo/sample_class_map.csv",
        # per-sample boundary tables for every run except the `retrained` accuracy references
        *[
            f"{r}/windowed_plasticity_data.csv"
            for r in run_dirs([c for c in CONDITIONS if c["algorithm"] != "retrained"])
        ],
    ]


# --------------------------------------------------------------------------- input functions
def prepare_inputs(wc):
    """CIFAR is prepared from its downloaded archive; digits and synthetic need no input."""
    if wc.dataset in ("cifar100", "cifar10"):
        return {"archive": f"data/{wc.dataset}/raw/archive.tar.gz"}
    return {}


def memo_score_inputs(wc):
    inputs = {
        "samples": SAMPLES,
        "curvature": expand(
            "results/memo/curvature/e{epoch}.parquet", epoch=SCORER_GRID
        ),
        "csl": "results/memo/scorer/csl.parquet",
    }
    if MEMO["feldman_zhang"]["enabled"]:
        inputs["fz"] = "results/memo/feldman_zhang.parquet"
    return inputs


def subset_inputs(wc):
    """`none` keeps every sample and needs no memo scores, so the primary runs never wait for them;
    a size-matched random filter needs them for its per-class counts."""
    return {"samples": SAMPLES} | ({} if wc.filter == "none" else {"scores": SCORES})


def train_inputs(wc):
    task = int(wc.task)
    inputs = {
        "prepared": PREPARED,
        "order": ORDER_FILE.format(seed=wc.seed),
        "kept": f"results/subsets/{wc.filter}/kept.parquet",
    }
    if wc.ordering in MEMO_ORDERINGS or wc.weighting != "none":
        inputs["scores"] = SCORES
    if wc.ordering == "file":
        inputs["file_order"] = config["ordering"]["file"]
    if task > 0:
        inputs["prev_state"] = f"{RUN}/task{{prev}}/end.pt".format(**wc, prev=task - 1)
    return inputs


def train_runtime(wc, attempt):
    """Minutes: epochs x images of the task x seconds per image, +10, doubled per retry."""
    n_images = (int(wc.task) + 1) * PROTO["classes_per_task"] * IMAGES_PER_CLASS
    seconds = E * n_images * job("train", "seconds_per_image")
    return int(math.ceil(seconds / 60 + 10)) * attempt


def boundary_checkpoints(wc):
    """The before-window slots of task k (epochs B_k, B_k-1, .., B_k-w+1 on the training path),
    its live last epoch, and E_k+1 .. E_k+w (start of task k+1)."""
    k = int(wc.boundary)
    task_k = f"{RUN}/task{k}/ckpt".format(**wc)
    after = [
        f"{RUN}/task{{t}}/ckpt/te{{te}}.pt".format(**wc, t=k + 1, te=te)
        for te in range(1, W + 1)
    ]
    return [*(f"{task_k}/best-{j}.pt" for j in range(W)), f"{task_k}/live.pt", *after]


def report_caption(name, **extra):
    """A report figure's caption: report/<name>.rst with the figure's main number appended
    (memplast.report.figure_caption, read from the results when they exist)."""
    return figure_caption(
        f"{workflow.basedir}/report/{name}.rst",
        ci_level=config["stats"]["ci_level"],
        **extra,
    )
