"""Configuration: schema validation, cross-key checks, and the run grid.

The JSON schema (``schemas/config.schema.yaml``) checks each key on its own and fills
defaults; :func:`check_config` checks what a schema cannot (keys that constrain each other).
Both raise :class:`ConfigError` with one line naming the key, the value and the fix.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """Invalid configuration; the message names the key and the allowed values."""


def deep_update(base: dict, overlay: dict) -> dict:
    """Recursively merge ``overlay`` into a copy of ``base`` (as Snakemake merges configfiles)."""
    out = copy.deepcopy(base)
    for k, v in overlay.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def validate(config: dict) -> dict:
    """Validate against the schema (filling defaults in place), then run the cross-key checks."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as sm_validate

    try:
        sm_validate(config, str(SCHEMA), set_default=True)
    except WorkflowError as exc:
        raise ConfigError(_schema_message(exc)) from None
    check_config(config)
    return config


def _schema_message(exc) -> str:
    """One readable line from Snakemake's wrapped jsonschema error."""
    import jsonschema

    cause = exc
    while cause is not None and not isinstance(cause, jsonschema.ValidationError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return f"invalid config: {str(exc).strip().splitlines()[0]}"
    key = ".".join(str(p) for p in cause.absolute_path) or "<top level>"
    if cause.validator == "enum":
        return f"invalid config value {cause.instance!r} for '{key}': allowed values are {cause.validator_value}"
    if cause.validator == "pattern":
        hint = cause.schema.get("description", f"must match {cause.validator_value}")
        return f"invalid config value {cause.instance!r} for '{key}': {hint}"
    if cause.validator == "additionalProperties":
        return f"invalid config key under '{key}': {cause.message}"
    return f"invalid config value for '{key}': {cause.message}"


def load(*paths, overrides: dict | None = None) -> dict:
    """Load and validate config files in order (later ones overlay earlier ones)."""
    config: dict = {}
    for p in paths:
        config = deep_update(config, yaml.safe_load(Path(p).read_text()) or {})
    if overrides:
        config = deep_update(config, overrides)
    return validate(config)


def n_classes(config: dict) -> int:
    from memplast.data import n_classes_of

    return n_classes_of(config["dataset"])


def check_config(config: dict) -> None:
    """Cross-key checks the schema cannot express."""
    proto, conds = config["protocol"], config["conditions"]
    total = n_classes(config)
    cpt = proto["classes_per_task"]
    if total % cpt:
        raise ConfigError(
            f"protocol.classes_per_task={cpt} does not divide the {total} classes of {config['dataset']['name']}; "
            f"choose a divisor of {total}"
        )
    if proto["n_tasks"] * cpt > total:
        raise ConfigError(
            f"protocol.n_tasks={proto['n_tasks']} x classes_per_task={cpt} exceeds the {total} classes; "
            f"use at most {total // cpt} tasks"
        )
    bad = [m for m in proto["lr_milestones"] if m >= proto["epochs_per_task"]]
    if bad:
        raise ConfigError(f"protocol.lr_milestones {bad} must be below epochs_per_task={proto['epochs_per_task']}")
    w = config["probes"]["window"]
    if w > proto["epochs_per_task"]:
        raise ConfigError(f"probes.window={w} exceeds protocol.epochs_per_task={proto['epochs_per_task']}")
    for key, values in (
        ("filter", conds["filters"]),
        ("ordering", conds["orderings"]),
        ("weighting", conds["weightings"]),
        ("algorithm", conds["algorithms"]),
    ):
        if conds["primary"][key] not in values:
            raise ConfigError(
                f"conditions.primary.{key}={conds['primary'][key]!r} is not in conditions.{key}s {values}; add it there"
            )
    if "file" in conds["orderings"] and not config["ordering"]["file"]:
        raise ConfigError("conditions.orderings has 'file' but ordering.file is not set; give a CSV with sample_id")
    memo = config["memo"]
    if memo["score"] in ("exact_ggn", "hutchinson", "finite_difference") and memo["score"] not in memo["methods"]:
        raise ConfigError(f"memo.score={memo['score']!r} is not among memo.methods {memo['methods']}; add it")
    if memo["score"] == "feldman_zhang" and not memo["feldman_zhang"]["enabled"]:
        raise ConfigError("memo.score='feldman_zhang' needs memo.feldman_zhang.enabled: true")
    if memo["feldman_zhang"]["enabled"] and config["dataset"]["name"] != "cifar100":
        raise ConfigError("memo.feldman_zhang is published for cifar100 only; disable it for other datasets")
    if memo["scorer"]["grid_every"] > memo["scorer"]["epochs"]:
        raise ConfigError(
            f"memo.scorer.grid_every={memo['scorer']['grid_every']} exceeds memo.scorer.epochs={memo['scorer']['epochs']}"
        )


# --------------------------------------------------------------------------- run factors
FILTER_RE = re.compile(r"^(global|per_class|balanced)(_random)?-q([0-9.]+)$")


@dataclass(frozen=True)
class FilterSpec:
    mode: str  # none | global | per_class | balanced
    quantile: float | None = None
    random: bool = False  # size-matched control: the same count per class, dropped at random


def parse_filter(name: str) -> FilterSpec:
    """'none', 'MODE-qQ' or 'MODE_random-qQ' -> FilterSpec."""
    if name == "none":
        return FilterSpec("none")
    m = FILTER_RE.match(name)
    if not m or not 0 < float(m.group(3)) <= 1:
        raise ConfigError(
            f"filter {name!r}: use none or MODE-qQ / MODE_random-qQ, MODE in global|per_class|balanced, 0 < Q <= 1"
        )
    return FilterSpec(m.group(1), float(m.group(3)), m.group(2) is not None)


def random_control(name: str) -> str:
    """The size-matched random filter of memo filter ``name`` (e.g. per_class-q0.9 -> per_class_random-q0.9)."""
    mode, q = name.split("-q")
    return f"{mode}_random-q{q}"


def parse_weighting(name: str) -> float:
    """'none' -> 0.0, 'alphaA' -> A."""
    if name == "none":
        return 0.0
    m = re.fullmatch(r"alpha(-?[0-9]+(?:\.[0-9]+)?)", name)
    if not m:
        raise ConfigError(f"weighting {name!r}: use none or alphaA (e.g. alpha0.5)")
    return float(m.group(1))


FACTORS = ("filter", "ordering", "weighting", "algorithm")


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
    return "/".join(cond[f] for f in FACTORS)


# Column of the scores table that each memo.score names.
SCORE_COLUMNS = {
    "exact_ggn": "curv_exact",
    "hutchinson": "curv_hutch",
    "finite_difference": "curv_fd",
    "csl": "csl",
    "feldman_zhang": "fz_mem",
}


def score_column(config: dict) -> str:
    return SCORE_COLUMNS[config["memo"]["score"]]
