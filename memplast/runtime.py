"""Runtime settings: how a job runs, never what it computes.

The device, the batch sizes used only for evaluation and probing (eval-mode BatchNorm, so the
numbers do not depend on them), the resume interval and the ``logging`` section (experiment
tracking) live in the config next to the science,
but they are kept out of the rules' ``params`` (which Snakemake tracks for reruns) and out of the
resume key: :func:`science` strips them from a config section, :func:`settings` collects them,
and the scripts receive them as a ``runtime`` argument read from ``snakemake.config``.

No heavy imports here: the Snakefile imports this module at DAG-build time.
"""

from __future__ import annotations

import os
import sys

# config section -> keys that are runtime settings in it
RUNTIME_KEYS = {
    "protocol": ("device", "eval_batch_size", "state_every"),
    # keep_checkpoints: disk only (rules/train.smk); jobs: how the probes are split into jobs (rules/probe.smk)
    "probes": ("batch_size", "keep_checkpoints", "jobs"),
}
# rule -> its family under config `resources:` (for the fix named by check_gpu)
RULE_FAMILY = {
    "train_task": "train",
    "tune_task": "train",
    "memo_scorer": "memo_scorer",
    "memo_curvature": "curvature",
    "probe": "probe",
    "probe_run": "probe",
    "run_summary": "probe",
}
DEFAULTS = {"device": "auto", "eval_batch_size": 1000, "state_every": 10, "probe_batch_size": 500}


class NoGPUError(RuntimeError):
    """A job that requested a GPU sees none."""


def _runtime_keys(section: str, values: dict) -> tuple[str, ...]:
    keys = RUNTIME_KEYS.get(section, ())
    if section == "probes" and values.get("bn_mode") == "train":
        # train-mode BatchNorm normalizes with batch statistics: the batch size changes the numbers
        keys = tuple(k for k in keys if k != "batch_size")
    return keys


# science keys added after results existed -> their off value: a key at it is left out of params and
# resume keys, so that adding the knob reruns nothing finished (a params change reruns a job)
OFF_VALUES = {"protocol": {"autocast": "none"}}


def science(section: str, values):
    """``values`` of config ``section`` without its runtime settings (what params and resume keys
    see), and without the knobs of :data:`OFF_VALUES` that are off."""
    if not isinstance(values, dict):
        return values
    drop = _runtime_keys(section, values)
    off = OFF_VALUES.get(section, {})
    return {k: v for k, v in values.items() if k not in drop and not (k in off and v == off[k])}


# protocol keys that are one algorithm's hyper-parameters -> the algorithms that read them
ALGORITHM_KEYS = {"shrink_perturb": ("shrink_perturb",), "cbp": ("cbp", "upgd_cbp"), "upgd": ("upgd", "upgd_cbp")}


def for_algorithm(protocol: dict, algorithm: str | None) -> dict:
    """The protocol section as one algorithm's runs see it (``None``: a job that trains no
    algorithm): without the other algorithms' hyper-parameters, so that changing, say,
    ``cbp.replacement_rate`` reruns only the cbp runs."""
    return {k: v for k, v in protocol.items() if algorithm in ALGORITHM_KEYS.get(k, (algorithm,))}


def rule_params(config: dict, sections, algorithm: str | None = None) -> dict:
    """What a rule's ``cfg`` params hold (rules/common.smk ``cfg_slice``): the science of config
    ``sections``, the protocol as ``algorithm``'s runs see it (:func:`for_algorithm`)."""
    out = {k: science(k, config[k]) for k in sections}
    if "protocol" in out:
        out["protocol"] = for_algorithm(out["protocol"], algorithm)
    return out


def settings(config: dict) -> dict:
    """The runtime settings of a (validated) config: device, eval_batch_size, state_every,
    probe_batch_size (defaults for keys a partial config lacks) and ``logging`` (the whole section:
    experiment tracking, memplast/tracking.py; no rule has it among its params)."""
    proto, probes = config.get("protocol", {}), config.get("probes", {})
    return {
        "logging": config.get("logging", {}),
        "device": proto.get("device", DEFAULTS["device"]),
        "eval_batch_size": proto.get("eval_batch_size", DEFAULTS["eval_batch_size"]),
        "state_every": proto.get("state_every", DEFAULTS["state_every"]),
        "probe_batch_size": probes.get("batch_size", DEFAULTS["probe_batch_size"]),
    }


def with_runtime(protocol: dict, runtime: dict | None) -> dict:
    """The protocol section as the training code reads it: science keys plus the runtime ones
    (and ``logging``, the config's experiment-tracking section: memplast/tracking.py)."""
    rt = {**DEFAULTS, **(runtime or {})}
    return {**protocol, **{k: rt[k] for k in RUNTIME_KEYS["protocol"]}, "logging": rt.get("logging", {})}


def check_gpu(job: str, family: str | None, gpu: int, device: str, cuda_available=None) -> None:
    """Stop a job that requested ``gpu`` > 0 GPUs but sees no CUDA device, unless ``device`` is cpu.

    ``family`` is the config key under ``resources:`` that sized the job (train, probe, ...).
    Raises :class:`NoGPUError` with one line naming the fix.
    """
    if not gpu or gpu <= 0 or device == "cpu":
        return
    if cuda_available is None:
        torch = sys.modules.get("torch")
        if torch is None:  # the job's script never imported torch: it cannot use a GPU anyway
            return
        cuda_available = torch.cuda.is_available()
    if cuda_available:
        return
    key = f"resources.{family}.gpu" if family else "resources.<job>.gpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    raise NoGPUError(
        f"{job} requested gpu={gpu} but sees no CUDA device{where}; run it on a GPU node, or set "
        f"{key}: 0 and protocol.device: cpu in the config to train on CPU"
    )


def resolve(cfg: dict, runtime: dict | None = None) -> dict:
    """A script's runtime settings: those Snakemake passed (``runtime``) over any found in ``cfg``
    (a full config given on the command line), over the defaults."""
    return {**settings(cfg), **(runtime or {})}
