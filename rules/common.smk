# Paths, the run grid and small helpers shared by every rule family.
from memplast import checkpoints as ckpt
from memplast import cost, runtime, stats_cost, tuning
from memplast.data import local_path
from memplast.report import figure_caption
from memplast.grid import (
    MEMO_ORDERINGS,
    RUN_ID,
    WILDCARDS,
    condition_path,
    conditions,
    images_per_class,
    probe_epochs,
)

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
# Training images per class, for runtime estimates (no data needed at DAG time).
IMAGES_PER_CLASS = images_per_class(config["dataset"])

PREPARED = f"data/{DATASET}/prepared.npz"
SAMPLES = f"data/{DATASET}/samples.parquet"
ORDER_FILE = "results/class_orders/order{seed}.csv"
SCORES = "results/memo/scores.parquet"
RUN = f"results/runs/{RUN_ID}"
SUBSET = "results/subsets/{filter}"
# the rehearsal's locally generated CIFAR-100-format archive (dataset.generated), served by file: URL
GENERATED_ARCHIVE = "data/cifar100/mirror/cifar-100-python.tar.gz"

ENV_TORCH = "../envs/torch.yaml"
ENV_STATS = "../envs/stats.yaml"


# the run factors' vocabulary (memplast/grid.py): a name the rules accept is one the parsers accept
wildcard_constraints:
    **WILDCARDS,


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
        "heldout_slices",
    ]
    # accuracy relative to the retrained reference (rules/plasticity.smk)
    if "retrained" in config["conditions"]["algorithms"]:
        figures.append("plasticity_gap")
    # the algorithm comparison, when mitigations are compared with base and retrained
    if {"base", "retrained"} < set(config["conditions"]["algorithms"]):
        figures.append("algorithms")
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
def download_inputs(wc):
    """A file: URL names a local mirror: the download waits for it (rule generate_archive makes
    the rehearsal's)."""
    url = config["dataset"]["url"]
    return {"mirror": str(local_path(url))} if url and url.startswith("file:") else {}


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


def heldout_dependence_inputs(wc):
    """The scorer's last checkpoint and the memo scores; Feldman-Zhang's influence file and
    mappings with memo.feldman_zhang.enabled."""
    inputs = {
        "prepared": PREPARED,
        "checkpoint": f"results/memo/scorer/e{SCORER_GRID[-1]}.pt",
        "scores": SCORES,
    }
    fz = MEMO["feldman_zhang"]
    if fz["enabled"]:
        inputs["fz_npz"] = "data/feldman_zhang/cifar100_infl_matrix.npz"
        inputs["fz_mapping"] = fz["mapping"] or "MISSING-memo.feldman_zhang.mapping"
        if fz["test_mapping"]:
            inputs["fz_test_mapping"] = fz["test_mapping"]
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
        inputs["prev_state"] = ckpt.end_state(RUN.format(**wc), task - 1)
    if config["tuning"]["use"] and wc.algorithm in config["tuning"]["algorithms"]:
        # tuned hyper-parameters (rules/tune.smk) replace the config's in this run
        inputs["tuning"] = f"results/tuning/{wc.algorithm}.yaml"
    return inputs


# The cost model of the GPU rules (memplast/cost.py): resources.calibration's per-image costs (or
# the documented default) x each job's work; a job requests resources.safety_factor x its estimate.
COST = cost.CostModel(config, root=workflow.basedir)


def gpu_runtime(rule):
    """Minutes a job of ``rule`` requests: the safety factor x its estimated seconds, doubled per retry."""
    return lambda wc, attempt: COST.minutes(rule, dict(wc.items()), attempt)


def stats_job(runs, key, effects=True):
    """mem_mb / runtime for the statistics of RUNS from the measured cost model
    (memplast/stats_cost.py) at stats.n_boot / n_permutations, at least resources.stats.
    """
    rows = stats_cost.old_rows(
        len(runs), PROTO["classes_per_task"], N_TASKS, IMAGES_PER_CLASS
    )
    threads = job("stats", "threads")
    if key == "mem_mb":
        return max(job("stats", "mem_mb"), stats_cost.mem_mb(rows, threads))
    n_perm = config["stats"]["n_permutations"] if effects else 0
    minutes = stats_cost.runtime_minutes(
        rows, config["stats"]["n_boot"], n_perm, threads, effects
    )
    return max(job("stats", "runtime"), minutes)


def boundary_checkpoints(wc):
    """The before-window slots of task k (epochs B_k, B_k-1, .., B_k-w+1 on the training path),
    its live last epoch, and E_k+1 .. E_k+w (start of task k+1): memplast.checkpoints.
    """
    return ckpt.boundary_checkpoints(RUN.format(**wc), int(wc.boundary), W)


def run_boundary_checkpoints(wc):
    """Every boundary's checkpoints (boundary_checkpoints), one boundary after another."""
    run = RUN.format(**wc)
    return [path for k in BOUNDARIES for path in ckpt.boundary_checkpoints(run, k, W)]


def heldout_checkpoints(wc):
    """Every checkpoint a run keeps (memplast.checkpoints): per task its saved task-epochs (the
    end checkpoint among them), before-window slots and live epoch; `retrained` keeps only the ends.
    """
    run = RUN.format(**wc)
    if wc.algorithm == "retrained":
        return [ckpt.epoch_checkpoint(run, t, E) for t in range(N_TASKS)]
    return [
        path
        for t in range(N_TASKS)
        for path in [
            *(ckpt.epoch_checkpoint(run, t, te) for te in CKPT_TASK_EPOCHS),
            *ckpt.window_slots(run, t, W),
            ckpt.live_checkpoint(run, t),
        ]
    ]


def report_caption(name, **extra):
    """A report figure's caption: report/<name>.rst with the figure's main number appended
    (memplast.report.figure_caption, read from the results when they exist)."""
    return figure_caption(
        f"{workflow.basedir}/report/{name}.rst",
        ci_level=config["stats"]["ci_level"],
        **extra,
    )


# --------------------------------------------------------------------------- tuning (rules/tune.smk)
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


def algorithm_tunings(wc=None):
    """The tuning files the evaluation runs used (tuning.use), for the comparison's provenance."""
    if not config["tuning"]["use"]:
        return []
    tuned = set(config["tuning"]["algorithms"]) & set(
        config["conditions"]["algorithms"]
    )
    return [f"results/tuning/{a}.yaml" for a in sorted(tuned)]
