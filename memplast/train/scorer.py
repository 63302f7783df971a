"""The memorization scorer: the same network trained on all classes at once (Garg et al.'s protocol),
with the incremental runs' epoch step (:func:`epoch.fit_epoch`, :func:`epoch.evaluate_splits`) and
their resume machinery (:mod:`memplast.train.state`): a resume state every ``state_every`` epochs
and on SIGTERM, checkpoints staged beside it until the job ends, one scorer process at a time."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from memplast.checkpoints import model_meta, save_checkpoint
from memplast.curvature import CSLAccumulator
from memplast.data import Prepared
from memplast.device import cpu_generator, resolve_device, stable_seed
from memplast.grid import lr_at
from memplast.io import science_key, write_parquet
from memplast.masks import seen_classes
from memplast.models import build_model, reinit
from memplast.train.device_data import DeviceData
from memplast.train.epoch import EpochInterrupted, evaluate_splits, fit_epoch, log_epoch
from memplast.train.state import (
    Preempted,
    Progress,
    ResumeFile,
    TaskState,
    job_runtime,
    sigterm_flag,
    trainer_lock,
)

log = logging.getLogger("memplast.train")
WHERE = "memo scorer"
RESUME = "results/resume/memo/scorer.pt"  # the workflow's scorer resume state (relative to its directory)


@dataclass
class ScorerPaths:
    """The scorer job's files (``checkpoints``: epoch -> path)."""

    checkpoints: dict
    metrics: str
    csl: str
    resume: str


class ScorerRun:
    """The scorer job: its data, state, progress and files; :func:`train_scorer` drives it."""

    def __init__(self, prepared: Prepared, cfg: dict, paths: ScorerPaths, provenance: dict, runtime: dict):
        scorer, seed = cfg["memo"]["scorer"], cfg["memo"]["seed"]
        self.scorer, self.paths, self.rt, self.ids = scorer, paths, runtime, prepared.sample_id
        device = resolve_device(runtime["device"])
        self.data = DeviceData(prepared, device)
        classes = np.arange(prepared.n_classes)
        self.mask = seen_classes(classes, prepared.n_classes, device)
        self.train_rows, self.val_rows, self.test_rows = (self.data.rows(s, classes) for s in ("train", "val", "test"))
        self.meta = model_meta(scorer["arch"], scorer["width"], prepared.n_classes, prepared.images.shape[1])
        model = build_model(self.meta["arch"], self.meta["num_classes"], self.meta["in_channels"], self.meta["width"])
        reinit(model, stable_seed("scorer", seed))
        model.to(device)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=scorer["lr"], momentum=scorer["momentum"], weight_decay=scorer["weight_decay"]
        )
        self.state = TaskState(model, optimizer, None, cpu_generator(stable_seed("scorer-run", seed)), None)
        self.aug = cfg["dataset"]["augmentation"] if scorer["augment"] else None
        self.milestones = [math.floor(f * scorer["epochs"]) for f in scorer["milestones_frac"]]
        runtime_facts, self.provenance = job_runtime(provenance, device)
        self.resume = ResumeFile(paths.resume, WHERE, None, science_key(self.provenance), runtime_facts, "epoch")
        deterministic = cfg["protocol"].get("deterministic", True)
        self.progress = self.resume.load(self.state, Progress(), deterministic, WHERE)
        self.csl = CSLAccumulator()
        if self.progress.csl is not None:
            self.csl.load_state_dict(self.progress.csl)

    @property
    def epochs(self) -> int:
        return self.scorer["epochs"]

    def train_epoch(self, e: int, stop=None) -> dict:
        """Epoch e (0-based): a fresh permutation, SGD steps, CSL terms, evaluation, the staged
        checkpoint of a grid epoch. ``stop()`` true after a step: the resume state is saved there and
        :class:`Preempted` raised."""
        state, prog = self.state, self.progress
        lr = lr_at(e, self.scorer["lr"], self.milestones, self.scorer["lr_gamma"])
        partial, prog.partial = prog.partial, None
        if partial is not None and partial["epoch"] == e:  # resumed within this epoch: its order is drawn
            order, cursor = np.asarray(partial["order"]), partial["cursor"]
        else:
            perm = torch.randperm(len(self.train_rows), generator=state.generator).numpy()
            order, cursor = self.train_rows[perm], None
        try:
            losses, train_acc, seconds = fit_epoch(
                state.model, state.optimizer, self.data, order, self.mask, lr, self.scorer["batch_size"],
                state.generator, self.aug, where=f"{WHERE}, epoch {e + 1}", cursor=cursor, stop=stop,
            )  # fmt: skip
        except EpochInterrupted as cut:
            prog.partial = {"epoch": e, "order": order, "cursor": cut.cursor}
            raise self.preempt(e, f"within epoch {e + 1} before batch {cut.cursor['batch']}") from None
        self.csl.add(self.ids[order], losses)
        ev = evaluate_splits(state.model, self.data, self.mask, self.rt["eval_batch_size"], self.val_rows,
                             self.test_rows)  # fmt: skip
        row = {"epoch": e + 1, "lr": lr, "train_loss": float(losses.mean()), "train_acc": train_acc, **ev,
               "seconds": seconds, "images_per_sec": len(order) / seconds}  # fmt: skip
        prog.rows.append(row)
        if e + 1 in self.paths.checkpoints and e + 1 != self.epochs:
            save_checkpoint(self.resume.staged(e + 1), state.model, {**self.meta, "epoch": e + 1}, self.provenance)
        prog.epoch = e + 1
        if prog.epoch % self.rt["state_every"] == 0 and prog.epoch < self.epochs:
            self.save_resume(prog.epoch)
        return row

    def save_resume(self, done: int) -> None:
        """The resume state after ``done`` epochs (with the CSL so far and the staged checkpoints)."""
        self.progress.csl = self.csl.state_dict()
        staged = [c for c in self.paths.checkpoints if c <= done and c != self.epochs]
        self.resume.save(self.state, self.progress, staged)

    def preempt(self, done: int, at: str) -> Preempted:
        """SIGTERM: save the resume state now; the :class:`Preempted` to raise names it."""
        self.save_resume(done)
        return self.resume.preempted(WHERE, at)

    def finish(self) -> None:
        """Move the staged checkpoints onto the outputs, write the last epoch's checkpoint, the
        metrics and the CSL, and delete the resume state."""
        row = self.progress.rows[-1]
        log.info("scorer: final train acc %.4f, val acc %.4f, test acc %.4f", row["train_acc"], row["val_acc"],
                 row["test_acc"])  # fmt: skip
        self.resume.finish(self.paths.checkpoints, self.epochs)
        if self.epochs in self.paths.checkpoints:
            meta = {**self.meta, "epoch": self.epochs}
            save_checkpoint(self.paths.checkpoints[self.epochs], self.state.model, meta, self.provenance)
        write_parquet(pd.DataFrame(self.progress.rows), self.paths.metrics, self.provenance)
        write_parquet(self.csl.to_frame(), self.paths.csl, self.provenance)
        self.resume.path.unlink(missing_ok=True)


def train_scorer(prepared: Prepared, cfg: dict, paths: ScorerPaths, provenance: dict, runtime: dict, on_epoch=None):
    """Train the memorization scorer on all training samples of all classes (not incremental).

    ``cfg`` holds the sections ``memo`` (its ``scorer`` and ``seed``), ``dataset`` (its
    ``augmentation``) and ``protocol`` (``deterministic``: a resume under other runtime settings
    restarts); ``runtime``: device, eval_batch_size, state_every (:func:`memplast.runtime.resolve`).
    SGD with lr dropped by ``lr_gamma`` at the ``milestones_frac`` fractions of training; saves
    the weights at the epochs in ``paths.checkpoints``, the per-epoch metrics, and the cumulative
    sample loss (sum over epochs of each sample's training loss, :class:`CSLAccumulator`).
    The resume state is saved every ``state_every``
    epochs; SIGTERM saves it after the current SGD step and raises :class:`Preempted`; a rerun
    continues from there and ends bitwise as an uninterrupted run. ``on_epoch(row)`` is called
    after every epoch, once the epoch's state is saved.
    """
    with trainer_lock(paths.resume, WHERE), sigterm_flag() as stop:
        job = ScorerRun(prepared, cfg, paths, provenance, runtime)
        t_start, first = time.perf_counter(), job.progress.epoch
        for e in range(first, job.epochs):
            row = job.train_epoch(e, stop)
            eta = (time.perf_counter() - t_start) / (e + 1 - first) * (job.epochs - e - 1)
            log_epoch(WHERE, {**row, "task_epoch": e + 1}, job.epochs, eta)
            if on_epoch is not None:
                on_epoch(row)
            if stop() and e + 1 < job.epochs:  # SIGTERM during the evaluation: stop at the epoch's end
                raise job.preempt(e + 1, f"after epoch {e + 1}")
        job.finish()
