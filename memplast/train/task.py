"""One task of one incremental run: :func:`run_task`.

Task t trains on every kept training sample of the first (t+1) * classes_per_task classes of the
run's class order, logits and labels masked to those classes. The learning rate restarts every
task and is multiplied by ``lr_gamma`` at the task-epochs in ``lr_milestones``. At the end of the
task the best-validation weights (strict improvement) are restored; that model is the task's end
state and the next task starts from it (with the optimizer, algorithm and generator states).
The before-window of the boundary after the task lies on that path (``checkpoints.BeforeWindow``);
the live last epoch, which the restore discards, is written too.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from memplast import orderings
from memplast.checkpoints import BeforeWindow, load_payload, model_meta, save_checkpoint, save_state
from memplast.data import Prepared
from memplast.device import resolve_device, to_device
from memplast.grid import lr_at, task_classes
from memplast.io import science_key, write_parquet
from memplast.masks import seen_classes
from memplast.tracking import open_tracker
from memplast.train.device_data import DeviceData
from memplast.train.epoch import EpochInterrupted, evaluate_splits, fit_epoch, log_epoch, reestimate_bn, side_generator
from memplast.train.state import Preempted, Progress, ResumeFile, TaskState, job_runtime, sigterm_flag, trainer_lock
from memplast.weighting import memo_weights

log = logging.getLogger("memplast.train")


@dataclass
class RunSpec:
    """Everything that identifies a run and its task job."""

    name: str  # run path, e.g. order0/none/random/none/base
    order_seed: int  # seeds init, data order, augmentation and noise: shared by all runs of the order
    class_order: np.ndarray
    task: int
    kept_ids: np.ndarray  # training sample ids kept by the filter
    ordering: str
    weighting_alpha: float
    algorithm: str
    memo: pd.Series | None = None  # memo score by sample_id (orderings, weighting)
    file_order: np.ndarray | None = None


@dataclass
class TaskPaths:
    """A task job's files (``checkpoints``: global epoch -> path; ``window[j]``: slot j)."""

    end: str
    checkpoints: dict
    metrics: str
    order_log: str
    resume: str
    prev_state: str | None = None
    window: list = field(default_factory=list)
    live: str | None = None


@dataclass
class TaskData:
    """What task t trains and evaluates on, on the device."""

    data: DeviceData
    seen: list  # classes seen at this task
    mask: object  # masks.SeenClasses
    train_ids: np.ndarray  # kept training sample ids, in dataset order
    row_of: pd.Series  # sample id -> row of the prepared arrays
    val_rows: np.ndarray
    test_rows: np.ndarray
    aug: dict | None  # training augmentation (None: off)
    test_aug: dict | None  # ``protocol.test_augmentation: reference``: test inputs augmented too
    weight_of: pd.Series | None  # memo loss weight by sample id (weighting factor)
    bn_reestimate: bool  # BatchNorm statistics from a shuffled pass before every evaluation

    @classmethod
    def build(cls, spec: RunSpec, prepared: Prepared, cfg: dict, device) -> TaskData:
        protocol, aug_cfg = cfg["protocol"], cfg["dataset"]["augmentation"]
        data = DeviceData(prepared, device)
        seen = np.asarray(task_classes(spec.class_order, spec.task, protocol["classes_per_task"]))
        kept = np.isin(prepared.labels, seen) & (prepared.split == "train") & np.isin(prepared.sample_id, spec.kept_ids)
        train_rows = np.flatnonzero(kept)
        train_ids = prepared.sample_id[train_rows]
        aug = aug_cfg if any([aug_cfg["crop_padding"], aug_cfg["flip"], aug_cfg["rotation_degrees"]]) else None
        weight_of = None
        if spec.weighting_alpha != 0.0:
            lo, hi = cfg["weighting"]["lo"], cfg["weighting"]["hi"]
            weight_of = pd.Series(
                memo_weights(spec.memo.loc[train_ids].to_numpy(), spec.weighting_alpha, lo, hi), train_ids
            )
        return cls(
            data=data,
            seen=seen.tolist(),
            mask=seen_classes(seen, prepared.n_classes, device),  # index tensors, built once per task
            train_ids=train_ids,
            row_of=pd.Series(train_rows, index=train_ids),
            val_rows=data.rows("val", seen),
            test_rows=data.rows("test", seen),
            aug=aug,
            test_aug=aug if protocol["test_augmentation"] == "reference" else None,
            weight_of=weight_of,
            bn_reestimate=cfg["ordering"]["bn_reestimate"] and spec.ordering != "random",
        )


class TaskRun:
    """One task job: its data, state, progress and files; :func:`run_task` drives it."""

    def __init__(self, spec: RunSpec, prepared: Prepared, cfg: dict, paths: TaskPaths, provenance: dict):
        self.spec, self.cfg, self.paths, self.p = spec, cfg, paths, cfg["protocol"]
        device = resolve_device(self.p["device"])
        self.where = f"run {spec.name}, task {spec.task}"
        self.E, self.t = self.p["epochs_per_task"], spec.task
        self.task = TaskData.build(spec, prepared, cfg, device)
        log.info("%s: %d classes seen, %d train / %d val / %d test samples, device %s", self.where,
                 len(self.task.seen), len(self.task.train_ids), len(self.task.val_rows), len(self.task.test_rows), device)  # fmt: skip
        self.meta = model_meta(
            cfg["model"]["arch"], cfg["model"]["width"], prepared.n_classes, prepared.images.shape[1]
        )
        self.state = TaskState.new(self.meta, spec.algorithm, self.p, spec.order_seed, device)
        if paths.prev_state is not None:
            self.state.load_state_dict(load_payload(paths.prev_state, device), paths.prev_state)
        self.state.algorithm.attach(self.state.model, self.state.noise_generator)
        self.state.algorithm.start_task(self.state, self.t)
        if self.p["reset_momentum"]:
            self.state.optimizer.state.clear()
        if self.task.bn_reestimate:
            log.info("%s: BatchNorm statistics re-estimated on a shuffled pass before every evaluation", self.where)
        memo = spec.memo.loc[self.task.train_ids].to_numpy() if spec.memo is not None else None
        base = orderings.base_order(spec.ordering, self.task.train_ids, memo, self.state.generator,
                                    cfg["ordering"]["strata"], spec.file_order)  # fmt: skip
        runtime, self.provenance = job_runtime(provenance, device)
        self.resume = ResumeFile(paths.resume, spec.name, self.t, science_key(self.provenance), runtime)
        fresh = Progress(base, BeforeWindow(len(paths.window)))
        self.progress = self.resume.load(self.state, fresh, self.p.get("deterministic", True), self.where)

    def ckpt_meta(self, **extra) -> dict:
        return {**self.meta, **extra, "task": self.t, "seen": self.task.seen}

    def train_epoch(self, e: int, stop=None) -> dict:
        """Task-epoch e (0-based): order, SGD steps, evaluation, best epoch, window, staged checkpoints.
        ``stop()`` true after a step: the resume state is saved there and :class:`Preempted` raised."""
        spec, task, state, prog, p = self.spec, self.task, self.state, self.progress, self.p
        g = self.t * self.E + e + 1
        lr = lr_at(e, state.algorithm.lr, p["lr_milestones"], p["lr_gamma"])
        ocfg = self.cfg["ordering"]
        partial, prog.partial = prog.partial, None
        if partial is not None and partial["epoch"] == e:  # resumed within this epoch: its order is drawn
            order, cursor = np.asarray(partial["order"]), partial["cursor"]
        else:
            order, cursor = orderings.epoch_order(prog.base, task.train_ids, state.generator, ocfg["block_size"]), None
            full = {"order": order.tolist()} if ocfg["log_full_order"] else {}
            prog.orders.append({"task": self.t, "epoch": g, "n": len(order), "hash": orderings.order_hash(order), **full})  # fmt: skip
        w = (
            None
            if task.weight_of is None
            else to_device(task.weight_of.loc[order].to_numpy(), task.data.device, torch.float32)
        )
        try:
            losses, train_acc, seconds = fit_epoch(
                state.model, state.optimizer, task.data, task.row_of.loc[order].to_numpy(), task.mask, lr,
                p["batch_size"], state.generator, task.aug, w, state.algorithm.after_step, f"{self.where}, epoch {g}",
                state.algorithm.wants_acts, cursor, stop, p.get("autocast"),
            )  # fmt: skip
        except EpochInterrupted as cut:
            prog.partial = {"epoch": e, "order": order, "cursor": cut.cursor}
            raise self.preempt(g - 1, f"within task-epoch {e + 1} before batch {cut.cursor['batch']}") from None
        if task.bn_reestimate:
            shuffled = task.row_of.to_numpy()[torch.randperm(len(task.row_of), generator=side_generator("bn", spec.order_seed, g)).numpy()]  # fmt: skip
            reestimate_bn(state.model, task.data.batches(shuffled, p["batch_size"], side_generator("bn-aug", spec.order_seed, g), task.aug))  # fmt: skip
        ev = self.evaluate(side_generator("test-aug", spec.order_seed, g))
        row = {"kind": "epoch", "task": self.t, "task_epoch": e + 1, "epoch": g, "lr": lr,
               "train_loss": float(losses.mean()), "train_acc": train_acc, **ev, "seconds": seconds,
               "images_per_sec": len(order) / seconds, "bn_reestimated": task.bn_reestimate,
               "replaced": state.algorithm.pop_replaced()}  # fmt: skip
        prog.rows.append(row)
        prog.window.push(g, state.model)
        if ev["val_acc"] > prog.best_acc:  # strict: the earliest best epoch wins ties
            prog.best = {"val_acc": ev["val_acc"], "epoch": g, "model": copy.deepcopy(state.model.state_dict()),
                         "window": prog.window.snapshot()}  # fmt: skip
        if g in self.paths.checkpoints and g != (self.t + 1) * self.E:
            save_checkpoint(self.resume.staged(g), state.model, self.ckpt_meta(epoch=g), self.provenance)
        prog.epoch = e + 1
        if prog.epoch % p["state_every"] == 0 and prog.epoch < self.E:
            self.save_resume(g)
        return row

    def save_resume(self, done: int) -> None:
        """The resume state, with the staged checkpoints of the global epochs up to ``done``."""
        staged = [c for c in self.paths.checkpoints if c <= done and c != (self.t + 1) * self.E]
        self.resume.save(self.state, self.progress, staged)

    def preempt(self, done: int, at: str) -> Preempted:
        """SIGTERM: save the resume state now; the :class:`Preempted` to raise names it."""
        self.save_resume(done)
        return self.resume.preempted(self.where, at)

    def evaluate(self, test_generator) -> dict:
        t = self.task
        return evaluate_splits(self.state.model, t.data, t.mask, self.p["eval_batch_size"], t.val_rows, t.test_rows,
                               test_generator, t.test_aug)  # fmt: skip

    def finish(self) -> pd.DataFrame:
        """Write the live epoch and the before-window, restore the best epoch, evaluate it and write
        the end checkpoint, end state, metrics and order log."""
        model, prog, paths, prov = self.state.model, self.progress, self.paths, self.provenance
        end_epoch = (self.t + 1) * self.E
        restore = self.p["early_stopping"] and prog.best is not None
        ckpt_meta = self.ckpt_meta(best_epoch=prog.best["epoch"] if restore else end_epoch)
        if paths.live is not None:
            save_checkpoint(paths.live, model, {**ckpt_meta, "epoch": end_epoch, "live": True}, prov)
        if paths.window:
            live_state = copy.deepcopy(model.state_dict())
            BeforeWindow.write(
                paths.window, prog.best["window"] if restore else prog.window.snapshot(), model, ckpt_meta, prov
            )
            model.load_state_dict(live_state)
        if restore:
            model.load_state_dict(prog.best["model"])
            log.info("%s: restored best-validation weights of epoch %d (val acc %.4f)", self.where,
                     prog.best["epoch"], prog.best["val_acc"])  # fmt: skip
        ev = self.evaluate(side_generator("test-aug", self.spec.order_seed, "end", self.t))
        nan = float("nan")
        replaced = sum(r["replaced"] for r in prog.rows if r["kind"] == "epoch" and r["task"] == self.t)
        prog.rows.append({"kind": "end", "task": self.t, "task_epoch": self.E, "epoch": end_epoch, "lr": nan,
                          "train_loss": nan, "train_acc": nan, **ev, "seconds": nan, "images_per_sec": nan,
                          "best_epoch": prog.best["epoch"] if prog.best else end_epoch,
                          "bn_reestimated": self.task.bn_reestimate, "replaced": int(replaced)})  # fmt: skip
        self.resume.finish(paths.checkpoints, end_epoch)
        end_meta = self.ckpt_meta(epoch=end_epoch)
        if end_epoch in paths.checkpoints:
            save_checkpoint(paths.checkpoints[end_epoch], model, end_meta, prov)
        save_state(
            paths.end, {**self.state.state_dict(), "meta": end_meta, "provenance_json": json.dumps(prov, default=str)}
        )
        metrics = pd.DataFrame(prog.rows)
        write_parquet(metrics.assign(run=self.spec.name), paths.metrics, prov)
        write_parquet(pd.DataFrame(prog.orders), paths.order_log, prov)
        self.resume.path.unlink(missing_ok=True)
        log.info("%s: end test acc %.4f, val acc %.4f", self.where, ev["test_acc"], ev["val_acc"])
        return metrics


def run_task(spec: RunSpec, prepared: Prepared, cfg: dict, paths: TaskPaths, provenance: dict, on_epoch=None):
    """Train one task of one run and write its outputs (``paths``; see rules/train.smk).

    ``cfg`` holds the sections ``protocol`` (with its runtime settings: device, eval_batch_size,
    state_every), ``model``, ``dataset`` (its ``augmentation``), ``ordering`` and ``weighting``.
    The resume state is saved every ``protocol.state_every`` epochs; a rerun continues from it and
    ends with the same weights as an uninterrupted run. ``on_epoch(row)`` is called after every
    epoch (its metrics row), once the epoch's state is saved. Returns the metrics table. One
    process at a time trains a task (:func:`memplast.train.state.trainer_lock`). SIGTERM (preemption,
    time limit) saves the resume state after the current SGD step and raises :class:`Preempted`;
    the rerun continues from that step and ends bitwise as an uninterrupted run.
    ``protocol.logging`` (a runtime setting): optional experiment tracking (memplast/tracking.py).
    """
    with trainer_lock(paths.resume, f"run {spec.name}, task {spec.task}"), sigterm_flag() as stop:
        job = TaskRun(spec, prepared, cfg, paths, provenance)
        tracker = open_tracker(cfg["protocol"].get("logging"), spec.name, spec.task, provenance.get("config", {}))
        t_start, first = time.perf_counter(), job.progress.epoch
        for e in range(first, job.E):
            row = job.train_epoch(e, stop)
            log_epoch(job.where, row, job.E, (time.perf_counter() - t_start) / (e + 1 - first) * (job.E - e - 1))
            tracker.log_epoch(row)
            if on_epoch is not None:
                on_epoch(row)
            if stop() and e + 1 < job.E:  # SIGTERM during the evaluation: stop at the epoch's end
                raise job.preempt(job.t * job.E + e + 1, f"after task-epoch {e + 1}")
        metrics = job.finish()
        tracker.log_summary(job.progress.rows[-1])
        tracker.close()
        return metrics
