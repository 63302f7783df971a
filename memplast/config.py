"""Configuration: schema validation and cross-key checks (the run grid is in :mod:`memplast.grid`).

The JSON schema (``schemas/config.schema.yaml``) checks each key on its own and fills
defaults; :func:`check_config` checks what a schema cannot (keys that constrain each other).
Both raise :class:`ConfigError` with one line naming the key, the value and the fix.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from memplast.grid import ConfigError, n_classes, upgd_lr

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "config.schema.yaml"


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


def read_yaml(path) -> dict:
    """A config file's mapping; a YAML syntax error raises :class:`ConfigError` naming the file, the
    line and the column (Snakemake's own message names neither)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{path}{where}: YAML syntax error: {problem}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file holds a mapping of keys, not a {type(data).__name__}")
    return data or {}


def load(*paths, overrides: dict | None = None) -> dict:
    """Load and validate config files in order (later ones overlay earlier ones, merged as
    Snakemake merges ``--configfile`` overlays), then ``overrides``."""
    from snakemake.utils import update_config

    config: dict = {}
    for p in paths:
        update_config(config, read_yaml(p))
    if overrides:
        update_config(config, copy.deepcopy(overrides))
    return validate(config)


def check_config(config: dict) -> None:
    """Cross-key checks the schema cannot express."""
    proto, conds = config["protocol"], config["conditions"]
    total = n_classes(config["dataset"])
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
    _check_training(config)
    if {"upgd", "upgd_cbp"} & set(conds["algorithms"]):
        upgd_lr(proto)  # an Adam UPGD needs its own learning rate
    from memplast.tuning import check_tuning

    check_tuning(config)
    if memo["scorer"]["grid_every"] > memo["scorer"]["epochs"]:
        raise ConfigError(
            f"memo.scorer.grid_every={memo['scorer']['grid_every']} exceeds memo.scorer.epochs={memo['scorer']['epochs']}"
        )


def _check_training(config: dict) -> None:
    """Weighting bounds, the resume interval and the outcomes the stats analyse (before any job runs)."""
    lo, hi = config["weighting"]["lo"], config["weighting"]["hi"]
    if lo >= hi:
        raise ConfigError(
            f"weighting.lo={lo} must be below weighting.hi={hi}: weights clipped to [lo, hi] would all be equal "
            "and the weighting conditions would train exactly as 'none'"
        )
    E, every = config["protocol"]["epochs_per_task"], config["protocol"]["state_every"]
    if E > 1 and every >= E:
        raise ConfigError(
            f"protocol.state_every={every} is not below protocol.epochs_per_task={E}: no resume state would "
            f"ever be saved and a killed task would restart from its first epoch; use at most {E - 1}"
        )
    from memplast.deltas import outcome_columns

    probes = config["probes"]
    known = outcome_columns(probes["taus"], probes["score_taus"])
    if bad := [o for o in config["stats"]["outcomes"] if o not in known]:
        raise ConfigError(
            f"stats.outcomes {bad}: not an outcome column of the deltas tables (with probes.taus "
            f"{probes['taus']} and probes.score_taus {probes['score_taus']}); choose among {known}"
        )


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


def main(argv=None) -> int:
    """``python -m memplast.config [OVERLAY ..]``: check config.yaml and the overlays (YAML syntax with
    file and line, schema, cross-key checks) as ``snakemake --configfile config.yaml OVERLAY ..`` would
    read them; one line, exit status 1 on an error."""
    import sys

    overlays = sys.argv[1:] if argv is None else argv
    try:
        load(ROOT / "config.yaml", *overlays)
    except (ConfigError, OSError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 1
    print(f"config OK: {', '.join(['config.yaml', *map(str, overlays)])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
