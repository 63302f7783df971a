"""The run grid and the facts the workflow's DAG is built from (standard library only).

One owner for each of: the run factors and the vocabulary of each (filters, orderings,
weightings, algorithms), the parsers of filter and weighting names and the wildcard patterns
generated from the same vocabulary (so a name the rules accept is a name the parsers accept),
the run grid of a config (:func:`conditions`), a run's path (:data:`RUN_ID`), the epoch
arithmetic of the protocol, the datasets' class and image counts, and the names of the
statistics tables.

Nothing here imports numpy, torch, scipy or statsmodels: the Snakefile and ``rules/*.smk``
import this module when they build the DAG (tests/test_dag.py checks it).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass


class ConfigError(ValueError):
    """Invalid configuration; the message names the key and the allowed values."""


# --------------------------------------------------------------------------- datasets
# name -> (number of classes, image shape C x H x W); synthetic is configured
DATASETS = {
    "cifar100": (100, (3, 32, 32)),
    "cifar10": (10, (3, 32, 32)),
    "digits": (10, (1, 8, 8)),
}
DATASET_NAMES = (*DATASETS, "synthetic")
# training images per class in the source files (before the validation split)
SOURCE_TRAIN_PER_CLASS = {"cifar100": 500, "cifar10": 5000}
SOURCE_TEST_PER_CLASS = {"cifar100": 100, "cifar10": 1000}  # the official test set
DIGITS_PER_CLASS = 180  # sklearn's digits: about 180 images per class, split by split_fractions


def n_classes(dataset_cfg: dict) -> int:
    """Number of classes of the dataset of config section ``dataset``."""
    name = dataset_cfg["name"]
    if name == "synthetic":
        return int(dataset_cfg["synthetic"]["n_classes"])
    return DATASETS[name][0]


def image_shape(dataset_cfg: dict) -> tuple[int, int, int]:
    """Shape C x H x W of one image of the dataset of config section ``dataset``."""
    name = dataset_cfg["name"]
    if name == "synthetic":
        return tuple(int(n) for n in dataset_cfg["synthetic"]["shape"])
    return DATASETS[name][1]


def images_per_class(dataset_cfg: dict) -> int:
    """Training images per class of config section ``dataset`` (for runtime and disk estimates;
    no data needed)."""
    name = dataset_cfg["name"]
    if name == "cifar100" and dataset_cfg.get("generated"):
        return dataset_cfg["generated"]["train_per_class"] - dataset_cfg["n_val_per_class"]
    if name in SOURCE_TRAIN_PER_CLASS:
        return SOURCE_TRAIN_PER_CLASS[name] - dataset_cfg["n_val_per_class"]
    per_class = DIGITS_PER_CLASS if name == "digits" else dataset_cfg["synthetic"]["n_per_class"]
    fractions = dataset_cfg["split_fractions"]
    return int(per_class * (1 - fractions["val"] - fractions["test"]))


def split_sizes(dataset_cfg: dict) -> dict:
    """Images per class of each split (train, val, test) of config section ``dataset``, for cost
    estimates (no data needed; digits and synthetic split by fraction, so these are approximate)."""
    name = dataset_cfg["name"]
    train = images_per_class(dataset_cfg)
    if name == "cifar100" and dataset_cfg.get("generated"):  # the locally generated archive's own split
        return {
            "train": train,
            "val": dataset_cfg["n_val_per_class"],
            "test": dataset_cfg["generated"]["test_per_class"],
        }
    if name in SOURCE_TRAIN_PER_CLASS:
        return {"train": train, "val": dataset_cfg["n_val_per_class"], "test": SOURCE_TEST_PER_CLASS[name]}
    per_class = DIGITS_PER_CLASS if name == "digits" else dataset_cfg["synthetic"]["n_per_class"]
    fractions = dataset_cfg["split_fractions"]
    return {"train": train, "val": int(per_class * fractions["val"]), "test": int(per_class * fractions["test"])}


# --------------------------------------------------------------------------- run factors
FACTORS = ("filter", "ordering", "weighting", "algorithm")
FILTER_MODES = ("global", "per_class", "balanced")
ORDERINGS = ("random", "fixed", "ascending", "descending", "stratified", "file")
# orderings that need memo scores (so their runs wait for the memo stage)
MEMO_ORDERINGS = ("ascending", "descending", "stratified")
ALGORITHMS = ("base", "retrained", "head_reset", "shrink_perturb", "cbp", "upgd", "upgd_cbp")


def upgd_lr(protocol: dict) -> float:
    """UPGD's base learning rate: ``protocol.upgd.lr.<variant>``; for ``sgd`` null means
    ``protocol.lr`` (the same schedule as base), for ``adam`` it must be given (Adam at SGD's 0.1
    would silently diverge from every published setting)."""
    upgd = protocol["upgd"]
    lr = upgd["lr"][upgd["variant"]]
    if lr is not None:
        return lr
    if upgd["variant"] == "adam":
        raise ConfigError(
            "protocol.upgd.lr.adam is null while protocol.upgd.variant is adam: Adam would inherit "
            f"protocol.lr={protocol['lr']}; set protocol.upgd.lr.adam (or run tune)"
        )
    return protocol["lr"]


def upgd_weight_decay(protocol: dict) -> float:
    """UPGD's decoupled weight decay: ``protocol.upgd.weight_decay`` (null = ``protocol.weight_decay``)."""
    wd = protocol["upgd"]["weight_decay"]
    return protocol["weight_decay"] if wd is None else wd


# A filter is none, MODE-qQ or MODE_random-qQ with 0 < Q <= 1 (schemas/config.schema.yaml has the same).
QUANTILE = r"0\.[0-9]*[1-9][0-9]*|1|1\.0+"
FILTER_RE = re.compile(rf"(?P<mode>{'|'.join(FILTER_MODES)})(?P<random>_random)?-q(?P<q>{QUANTILE})")
# A weighting is none or alphaA with A a decimal number (possibly negative).
WEIGHTING_RE = re.compile(r"alpha(?P<alpha>-?[0-9]+(?:\.[0-9]+)?)")


def _uncaptured(regex: re.Pattern) -> str:
    """The pattern of ``regex`` without its named groups (for a Snakemake wildcard constraint)."""
    return re.sub(r"\(\?P<\w+>", "(?:", regex.pattern)


# Wildcard constraints of the rules, from the same vocabulary as the parsers.
WILDCARDS = {
    "dataset": "|".join(DATASET_NAMES),
    "seed": r"\d+",
    "task": r"\d+",
    "boundary": r"\d+",
    "epoch": r"\d+",
    "te": r"\d+",
    "filter": f"none|{_uncaptured(FILTER_RE)}",
    "ordering": "|".join(ORDERINGS),
    "weighting": f"none|{_uncaptured(WEIGHTING_RE)}",
    "algorithm": "|".join(ALGORITHMS),
}

# A run's directory under results/runs (and its logs): the class order, then one level per factor.
RUN_ID = "order{seed}/" + "/".join(f"{{{f}}}" for f in FACTORS)


@dataclass(frozen=True)
class FilterSpec:
    mode: str  # none | global | per_class | balanced
    quantile: float | None = None
    random: bool = False  # size-matched control: the same count per class, dropped at random


def parse_filter(name: str) -> FilterSpec:
    """'none', 'MODE-qQ' or 'MODE_random-qQ' -> FilterSpec."""
    if name == "none":
        return FilterSpec("none")
    m = FILTER_RE.fullmatch(name)
    if not m:
        raise ConfigError(
            f"filter {name!r}: use none or MODE-qQ / MODE_random-qQ, MODE in {'|'.join(FILTER_MODES)}, 0 < Q <= 1"
        )
    return FilterSpec(m["mode"], float(m["q"]), m["random"] is not None)


def random_control(name: str) -> str:
    """The size-matched random filter of memo filter ``name`` (e.g. per_class-q0.9 -> per_class_random-q0.9)."""
    mode, q = name.split("-q")
    return f"{mode}_random-q{q}"


def parse_weighting(name: str) -> float:
    """'none' -> 0.0, 'alphaA' -> A."""
    if name == "none":
        return 0.0
    m = WEIGHTING_RE.fullmatch(name)
    if not m:
        raise ConfigError(f"weighting {name!r}: use none or alphaA (e.g. alpha0.5)")
    return float(m["alpha"])


def conditions(config: dict) -> list[dict]:
    """The training conditions, the primary one first.

    With ``random_filter_controls`` every memo filter MODE-qQ brings its size-matched random
    control MODE_random-qQ into the filter levels.
    ``one_at_a_time``: the primary plus every other level of one factor at a time;
    ``factorial``: the full grid of all four factors; ``factorial_data``: the grid of the data
    factors (filter, ordering, weighting) with the primary algorithm, plus every other
    algorithm (e.g. the ``retrained`` reference) on the primary data condition.
    """
    conds = config["conditions"]
    levels = {f: list(conds[f + "s"]) for f in FACTORS}
    if conds["random_filter_controls"]:  # a size-matched random filter next to every memo filter
        memo_filters = [f for f in levels["filter"] if f != "none" and not parse_filter(f).random]
        levels["filter"] += [c for c in map(random_control, memo_filters) if c not in levels["filter"]]
    primary = {f: conds["primary"][f] for f in FACTORS}
    if conds["design"] == "one_at_a_time":
        grid = [primary] + [{**primary, f: level} for f in FACTORS for level in levels[f] if level != primary[f]]
    else:
        crossed = FACTORS if conds["design"] == "factorial" else FACTORS[:3]
        grid = [{**primary, **dict(zip(crossed, combo))} for combo in itertools.product(*(levels[f] for f in crossed))]
        if conds["design"] == "factorial_data":
            grid += [{**primary, "algorithm": a} for a in levels["algorithm"] if a != primary["algorithm"]]
    grid.sort(key=lambda c: c != primary)  # stable: primary first
    return grid


def condition_path(cond: dict) -> str:
    """The path of a condition below its class order: filter/ordering/weighting/algorithm."""
    return "/".join(cond[f] for f in FACTORS)


# --------------------------------------------------------------------------- epoch arithmetic
def task_epoch_range(task: int, epochs_per_task: int) -> range:
    """Global 1-based epochs of a 0-based task: t*E+1 .. (t+1)*E."""
    return range(task * epochs_per_task + 1, (task + 1) * epochs_per_task + 1)


def probe_epochs(task: int, epochs_per_task: int, window: int, extra=()) -> list[int]:
    """Epochs of ``task`` saved under their epoch number: its first ``window`` epochs (the
    after-window of the boundary before it), its end checkpoint and any extra task-epochs.
    The before-window of the boundary after it goes to the window slots (see ``run_task``)."""
    first = task * epochs_per_task
    epochs = set(range(first + 1, first + window + 1)) | {first + epochs_per_task}
    epochs |= {first + e for e in extra if 1 <= e <= epochs_per_task}
    return sorted(epochs)


def scorer_grid(epochs: int, every: int) -> list[int]:
    """Epochs (1-based) whose scorer checkpoints are scored: every ``every``-th epoch."""
    return list(range(every, epochs + 1, every))


def lr_at(task_epoch: int, lr: float, milestones, gamma: float) -> float:
    """Learning rate at 0-based ``task_epoch``: lr * gamma^(number of milestones <= task_epoch)."""
    return lr * gamma ** sum(task_epoch >= m for m in milestones)


def task_classes(order, task: int, classes_per_task: int) -> list:
    """Classes seen at ``task`` (0-based): the first (task + 1) * classes_per_task of the class order."""
    return list(order)[: (task + 1) * classes_per_task]


# --------------------------------------------------------------------------- statistics
# Tables of the primary analysis, results/stats/<name>.csv (memplast.stats.run_all writes them).
TABLES = (
    "headline",
    "pooled",
    "per_boundary",
    "trend",
    "models",
    "deciles",
    "tails",
    "mediation",
    "cross_sample",
    "windowed_correlation_results",
)
