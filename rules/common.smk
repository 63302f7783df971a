# Paths, run grid and small helpers shared by every rule family.
from memplast.config import FACTORS, condition_path, conditions

DATASET = config["dataset"]["name"]
ORDER_SEEDS = config["class_orders"]["seeds"]
CONDITIONS = conditions(config)
PRIMARY = CONDITIONS[0]
N_TASKS = config["protocol"]["n_tasks"]

PREPARED = f"data/{DATASET}/prepared.npz"
SAMPLES = f"data/{DATASET}/samples.parquet"
ORDER_FILE = "results/class_orders/order{seed}.csv"

ENV_TORCH = "../envs/torch.yaml"
ENV_STATS = "../envs/stats.yaml"


wildcard_constraints:
    dataset="cifar100|cifar10|digits|synthetic",
    seed=r"\d+",


def log_path(name):
    """Log file of a job: logs/<rule family>/<name>.log."""
    return f"logs/{name}.log"


def bench_path(name):
    """Snakemake benchmark file of a heavy job."""
    return f"logs/benchmarks/{name}.tsv"


def cfg_slice(*keys):
    """The config sections a rule depends on, passed as params (changes trigger reruns)."""
    return {k: config[k] for k in keys}


def expand_all_targets():
    """Everything `snakemake` builds by default."""
    return [PREPARED, *expand(ORDER_FILE, seed=ORDER_SEEDS)]
