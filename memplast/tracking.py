"""Optional experiment tracking: training jobs reported to Weights & Biases.

Config ``logging.wandb`` (a runtime setting, never a rule parameter: changing it reruns nothing)::

    logging:
      wandb: {enabled: false, project: memplast, entity: null, mode: offline, dir: logs}

:func:`open_tracker` gives one W&B run per (run, task) job, named ``<run>/task<t>`` and grouped by
the run name, with the job's config slice as its config. ``log_epoch(row)`` logs a training
epoch's metrics (the values of the epoch log line, and the other numbers of the metrics row) at
step = the global epoch; ``log_summary(row)`` puts the task's end row (restored weights) into the
run summary as ``end/<metric>``; ``close()`` finishes the run.

Disabled (the default), the tracker is a no-op and ``wandb`` is never imported. Enabled, ``wandb``
is imported lazily, and every call into it is guarded: an import error, a service that cannot be
reached or any other failure logs one warning and turns the tracker into a no-op: tracking never
fails a training job. ``mode: offline`` writes the run under ``<dir>/wandb/offline-run-*`` without
network; ``wandb sync <dir>/wandb/offline-run-*`` uploads it later (README).
:func:`read_offline_run` reads such a run back (W&B's own protobuf records).
"""

from __future__ import annotations

import logging
import math
import struct
from pathlib import Path

log = logging.getLogger("memplast.tracking")

DEFAULTS = {"enabled": False, "project": "memplast", "entity": None, "mode": "offline", "dir": "logs"}
# metrics row columns that are identifiers or flags, not metrics
NOT_METRICS = ("kind", "run", "task", "epoch")


def _numbers(row: dict) -> dict:
    """The finite numeric values of a metrics row (bools as 0/1), identifiers left out."""
    out = {}
    for k, v in row.items():
        if k in NOT_METRICS or isinstance(v, str):
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            out[k] = int(v) if isinstance(v, bool) else v
    return out


class Tracker:
    """No-op tracker (tracking disabled, or failed): every method does nothing."""

    enabled = False

    def log_epoch(self, row: dict) -> None:
        pass

    def log_summary(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class WandbTracker(Tracker):
    """One W&B run; any exception from wandb logs a warning and disables the tracker."""

    enabled = True

    def __init__(self, wandb_cfg: dict, run_name: str, task: int, config_slice: dict):
        self.where = f"run {run_name}, task {task}"
        self.run = None
        self._guard(self._open, wandb_cfg, run_name, task, config_slice)

    def _guard(self, fn, *args) -> None:
        if not self.enabled:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 -- tracking must never fail a training job
            log.warning("%s: W&B tracking disabled for this job (%s: %s)", self.where, type(exc).__name__, exc)
            self.enabled = False
            self._finish_quietly()

    def _finish_quietly(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:  # noqa: BLE001
                pass

    def _open(self, cfg: dict, run_name: str, task: int, config_slice: dict) -> None:
        try:
            import wandb  # lazily: only an enabled tracker imports it
        except ImportError as exc:
            raise ImportError(f"{exc}; install the extra: pip install -e '.[wandb]'") from None

        Path(cfg["dir"]).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg["project"],
            entity=cfg["entity"],
            mode=cfg["mode"],
            dir=cfg["dir"],
            group=run_name,
            name=f"{run_name}/task{task}",
            job_type="train_task",
            config={"run": run_name, "task": task, **config_slice},
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, init_timeout=60),
        )
        log.info("%s: W&B run %s (%s mode) in %s", self.where, self.run.id, cfg["mode"], cfg["dir"])

    def log_epoch(self, row: dict) -> None:
        self._guard(lambda: self.run.log(_numbers(row), step=int(row["epoch"])))

    def log_summary(self, row: dict) -> None:
        def put():
            for k, v in _numbers(row).items():
                self.run.summary[f"end/{k}"] = v

        self._guard(put)

    def close(self) -> None:
        def finish():
            run, self.run = self.run, None
            run.finish()

        self._guard(finish)
        self.enabled = False


def wandb_settings(logging_cfg: dict | None) -> dict:
    """``logging.wandb`` of a config with the defaults filled in."""
    return {**DEFAULTS, **((logging_cfg or {}).get("wandb") or {})}


def open_tracker(logging_cfg: dict | None, run_name: str, task: int, config_slice: dict) -> Tracker:
    """The tracker of one (run, task) job: a W&B run when ``logging_cfg['wandb']['enabled']``,
    else a no-op (``wandb`` not imported)."""
    cfg = wandb_settings(logging_cfg)
    if not cfg["enabled"]:
        return Tracker()
    return WandbTracker(cfg, run_name, task, config_slice)


# --------------------------------------------------------------------------- reading offline runs
_BLOCK, _HEADER = 32768, 7  # the .wandb transaction log: LevelDB log format, 7-byte "W&B" file header


def _records(path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[1:4] != b"W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    pos, buf, out = _HEADER, b"", []
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding up to the block end
            pos += left
            continue
        buf += data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 4):  # full record, or the last chunk of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def read_offline_run(run_dir) -> dict:
    """An offline run directory (``.../wandb/offline-run-*``) as a dict: ``name``, ``group``,
    ``project``, ``config`` (dict), ``history`` (list of logged dicts with ``_step``) and
    ``summary`` (the keys set through ``run.summary``)."""
    import json

    (path,) = Path(run_dir).glob("run-*.wandb")
    out = {"history": [], "summary": {}, "config": {}}
    for rec in _records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out |= {"name": rec.run.display_name, "group": rec.run.run_group, "project": rec.run.project}
            out["config"] = {u.key: json.loads(u.value_json) for u in rec.run.config.update if u.key != "_wandb"}
        elif kind == "history":
            out["history"].append(
                {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            )
        elif kind == "summary":
            out["summary"] |= {u.key: json.loads(u.value_json) for u in rec.summary.update if u.key}
    return out
