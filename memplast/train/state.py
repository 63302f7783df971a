"""What a training job carries from one epoch to the next, and its one save/restore path.

Both trainers use it: a task of an incremental run (``task.py``) and the memo scorer
(``scorer.py``). :class:`TaskState` is what the next task, a resume and the end state share: the
model, the optimizer, the algorithm's own state and the run's two CPU generators (data order and
augmentation; the algorithm's noise; the scorer has neither algorithm nor noise).
:class:`Progress` is what only a resume adds: the epochs done, their metrics and order log, the
best epoch so far and the before-window in memory (a task), the cumulative sample loss (the
scorer). :class:`ResumeFile` writes and reads them; :func:`sigterm_flag` and :func:`trainer_lock`
make a job save on SIGTERM and train alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from memplast.algorithms import Algorithm, make_algorithm
from memplast.checkpoints import WRITE_RECOVERY, BeforeWindow, save_state, verify
from memplast.device import cpu_generator, load_generator_state, stable_seed
from memplast.integrity import DamagedFileError, OneLineError, check_archive
from memplast.io import move_file
from memplast.models import build_model, reinit

log = logging.getLogger("memplast.train")

RESTART_RECOVERY = "its resume state is discarded: rerun the job (it restarts from its first epoch)"


@dataclass
class TaskState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    algorithm: Algorithm | None  # None: the memo scorer (plain SGD)
    generator: torch.Generator  # data order and augmentation
    noise_generator: torch.Generator | None  # the algorithm's perturbations (None: the scorer)

    @classmethod
    def new(cls, meta: dict, algorithm: str, protocol: dict, order_seed: int, device) -> TaskState:
        """A freshly initialised run. Common random numbers: init and streams depend on the class-order
        seed only, so every run of a class order (any algorithm or data condition) shares them."""
        model = build_model(meta["arch"], meta["num_classes"], meta["in_channels"], meta["width"])
        reinit(model, stable_seed("init", order_seed))
        model.to(device)
        algo = make_algorithm(algorithm, protocol, order_seed)
        optimizer = algo.make_optimizer(model)
        generator = cpu_generator(stable_seed("run", order_seed))
        noise = cpu_generator(stable_seed("noise", order_seed))  # CPU whatever the device (saved states)
        return cls(model, optimizer, algo, generator, noise)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "noise_generator": None if self.noise_generator is None else self.noise_generator.get_state(),
            "algorithm": None if self.algorithm is None else self.algorithm.state_dict(),
        }

    def load_state_dict(self, state: dict, source: str) -> None:
        """Restore from a previous task's end state or a resume state read from ``source``."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        load_generator_state(self.generator, state["generator"], f"{source}: generator")
        if self.noise_generator is not None:
            load_generator_state(self.noise_generator, state["noise_generator"], f"{source}: noise_generator")
        if "algorithm" not in state:
            raise ValueError(f"{source}: a state written before the algorithm interface (no 'algorithm' entry); "
                             "delete it and retrain that task")  # fmt: skip
        if state["algorithm"] is not None:
            self.algorithm.load_state_dict(state["algorithm"])


@dataclass
class Progress:
    """The epoch loop's own state: ``epoch`` epochs of the job done (0-based next epoch), the
    ordering's base order, metrics and order-log rows, the best epoch (val_acc, epoch, weights, its
    window), an epoch stopped mid-way, and the scorer's cumulative sample loss so far."""

    base: np.ndarray | None = None  # None: the scorer (a fresh permutation every epoch)
    window: BeforeWindow = field(default_factory=lambda: BeforeWindow(0))
    best: dict | None = None
    rows: list = field(default_factory=list)
    orders: list = field(default_factory=list)
    epoch: int = 0
    partial: dict | None = None  # an epoch stopped mid-way: epoch, order, train_epoch's cursor
    csl: dict | None = None  # the scorer's CSLAccumulator.state_dict()

    @property
    def best_acc(self) -> float:
        return self.best["val_acc"] if self.best else -float("inf")


def job_runtime(provenance: dict, device) -> tuple[dict, dict]:
    """The runtime facts a resume must match (threads, device, torch version) and ``provenance``
    with them under ``runtime`` (what the job's checkpoints record)."""
    runtime = {"threads": torch.get_num_threads(), "device": str(device), "torch": torch.__version__}
    return runtime, {**provenance, "runtime": {**provenance.get("runtime", {}), **runtime}}


class ResumeFile:
    """The resume state of one training job (a task: ``results/resume/<run>/task<t>.pt``; the memo
    scorer: ``results/resume/memo/scorer.pt``) and its staging directory, where checkpoints wait
    until the job ends (Snakemake deletes a killed job's outputs, not these). A resume fits only the
    same run, task (None: the scorer), science key and window size. A damaged resume state or staged
    checkpoint is discarded with a warning: the job restarts. ``unit`` names the job's epochs in its log."""

    def __init__(self, path, run: str, task: int | None, key: str, runtime: dict, unit: str = "task-epoch"):
        self.path, self.run, self.task, self.key, self.runtime = Path(path), run, task, key, runtime
        self.staging, self.unit = self.path.with_suffix(".ckpt"), unit

    def staged(self, epoch: int) -> Path:
        return self.staging / f"e{epoch}.pt"

    def save(self, state: TaskState, progress: Progress, staged: list) -> None:
        save_state(
            self.path,
            {
                "spec": self.run,
                "task": self.task,
                "config": self.key,
                "runtime": self.runtime,
                **state.state_dict(),
                "base_order": progress.base,
                "best": progress.best,
                "metrics": progress.rows,
                "orders": progress.orders,
                "epoch": progress.epoch,
                "partial": progress.partial,
                "csl": progress.csl,
                "staged": staged,
                "recent": progress.window.snapshot(),
                "window": progress.window.size,
            },
        )

    def load(self, state: TaskState, progress: Progress, deterministic: bool, where: str) -> Progress:
        """The progress to continue from: the resume file's when it fits (``state`` restored from it
        too), else ``progress`` unchanged."""
        if not self.path.exists():
            return progress
        try:
            r = verify(self.path, next(state.model.parameters()).device, weights_only=False)
            for g in r.get("staged", []):
                if self.staged(g).exists():
                    check_archive(self.staged(g))
        except DamagedFileError as exc:
            log.warning("%s: %s", where, exc)
            self.discard()
            return progress
        same = r["spec"] == self.run and r["task"] == self.task and r["config"] == self.key
        if not (same and r.get("window", 0) == progress.window.size):
            log.info("%s: ignoring stale resume file %s", where, self.path)
            return progress
        if not ("staged" in r and all(self.staged(g).exists() for g in r["staged"])):
            log.info("%s: resume file %s lacks its staged checkpoints; the job restarts", where, self.path)
            return progress
        if r.get("runtime") != self.runtime:
            # CPU reductions (convolution backward above all) depend on the thread count, GPU
            # kernels on the device: a resume under other settings is not bitwise the same run.
            change = f"saved under {r.get('runtime')}, now {self.runtime}"
            if deterministic:
                log.warning(
                    "%s: not resuming from %s (%s): protocol.deterministic promises bitwise identity, "
                    "so the job restarts from its first epoch",
                    where,
                    self.path,
                    change,
                )
                return progress
            log.warning(
                "%s: resuming from %s under other runtime settings (%s): results will differ "
                "bitwise from an uninterrupted run",
                where,
                self.path,
                change,
            )
        state.load_state_dict(r, str(self.path))
        partial = r.get("partial")
        at = f", within {self.unit} {r['epoch'] + 1} at batch {partial['cursor']['batch']}," if partial else ""
        log.info("%s: resuming after %s %d%s from %s", where, self.unit, r["epoch"], at, self.path)
        window = BeforeWindow(progress.window.size, r.get("recent", []))
        return Progress(r["base_order"], window, r["best"], r["metrics"], r["orders"], r["epoch"], partial,
                        r.get("csl"))  # fmt: skip

    def preempted(self, where: str, at: str) -> Preempted:
        """The :class:`Preempted` to raise once the resume state is saved on SIGTERM (``at``: where)."""
        return Preempted(f"{where}: SIGTERM received; resume state saved {at} in {self.path}; "
                         "exiting non-zero so that the job is resubmitted and resumes there")  # fmt: skip

    def discard(self) -> None:
        """Delete the resume state and its staged checkpoints: the job restarts from its first epoch."""
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.staging, ignore_errors=True)

    def finish(self, checkpoints: dict, end_epoch: int) -> None:
        """Move the staged checkpoints (all of ``checkpoints`` but ``end_epoch``'s) onto the job's
        outputs, each verified first (a copy across filesystems verified again). A damaged staged
        checkpoint discards the resume state: the rerun restarts."""
        moves = [(self.staged(g), Path(checkpoints[g])) for g in sorted(checkpoints) if g != end_epoch]
        for staged, _ in moves:
            try:
                check_archive(staged, RESTART_RECOVERY)
            except DamagedFileError:
                self.discard()
                raise
        for staged, out in moves:  # the outputs may lie on another filesystem (a scratch disk)
            move_file(staged, out, lambda tmp, out=out: check_archive(tmp, WRITE_RECOVERY, out))
        if self.staging.is_dir() and not any(self.staging.iterdir()):
            self.staging.rmdir()


class Preempted(OneLineError):
    """The job received SIGTERM (preemption, time limit) and saved its resume state: it exits
    non-zero so that Snakemake's retry (or the scheduler's requeue) runs it again, and it resumes."""


class StopFlag:
    """Set by SIGTERM while :func:`sigterm_flag` is active; the training loop polls it after every step."""

    def __init__(self):
        self.signal = None

    def __call__(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def sigterm_flag():
    """A :class:`StopFlag` that SIGTERM sets (instead of killing the process), in the main thread;
    elsewhere (signals cannot be handled there) a flag that is never set."""
    import signal
    import threading

    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag.signal = signum

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, old)


class TaskLockedError(OneLineError):
    """Another process trains this task (its lock names the holder's host and pid)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _holder(lock: Path) -> dict | None:
    """The lock's holder, or None when the file is unreadable (a crash between create and write)."""
    try:
        holder = json.loads(lock.read_text())
        return holder if isinstance(holder, dict) and {"host", "pid"} <= holder.keys() else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def trainer_lock(resume_path, where: str, grace: float = 10.0):
    """One trainer per task: ``<resume state>.lock`` (created exclusively) holds this host and pid
    while the task trains. A live holder stops the second process with one line naming it; a stale
    lock (a dead pid on this host, or unreadable for ``grace`` seconds) is taken over with a warning."""
    lock = Path(f"{resume_path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = _holder(lock)
            if holder is None:
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - lock.stat().st_mtime < grace:
                        time.sleep(0.2)  # being written by a process that has just created it
                        continue
            elif holder["host"] != me["host"] or _alive(int(holder["pid"])):
                raise TaskLockedError(
                    f"{where}: another trainer holds {lock} (host {holder['host']}, pid {holder['pid']}); "
                    f"wait for it or stop it; if that process is gone (a failed node), delete {lock} and rerun"
                ) from None
            log.warning("%s: taking over the stale lock %s (holder %s: no such process)", where, lock, holder)
            lock.unlink(missing_ok=True)
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    try:
        yield lock
    finally:
        if _holder(lock) == me:
            lock.unlink(missing_ok=True)
