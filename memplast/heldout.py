"""Held-out samples tracked per sample through a run (design §6, "Held-out samples").

At every checkpoint of a run that the workflow keeps (window checkpoints, the live last epoch of a
task, every task end), every validation and test sample of the classes seen at that checkpoint is
evaluated exactly as the reported accuracy is (:func:`memplast.train.epoch.evaluate_samples`: eval
BN, logits masked to the checkpoint's seen classes, the same test-input augmentation draws when
``protocol.test_augmentation`` is on), so the mean of ``correct`` over a split at a task end *is*
the run's reported accuracy there.

- :func:`heldout_table`: the long table, one row per (sample, checkpoint): ``split``, ``sample_id``,
  ``label``, ``epoch``, ``task``, ``role`` (``path``: on the training path; ``end``: the restored
  end-of-task model; ``live``: the last epoch that restoring the best one discarded), ``loss``,
  ``correct``, ``margin``, ``pred``.
- :func:`sample_summary`: per held-out sample across the task ends: the task its class arrives,
  the first task at whose end it is classified correctly, its forgetting events (correct at the end
  of task t-1, incorrect at the end of task t; Toneva et al. 2019 count them between epochs for
  training samples) and whether it is correct at the end of the run.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger("memplast.heldout")

SPLITS = ("val", "test")
ROLES = ("path", "end", "live")


def checkpoint_role(meta: dict, epochs_per_task: int) -> str:
    """``live`` (the discarded last epoch), ``end`` (the task's end checkpoint te<E>: the restored
    model the next task starts from) or ``path`` (any other checkpoint on the training path)."""
    if meta.get("live"):
        return "live"
    if meta.get("slot") is None and meta["epoch"] == (meta["task"] + 1) * epochs_per_task:
        return "end"
    return "path"


def test_generator(order_seed: int, role: str, epoch: int, task: int):
    """The generator of the test-input augmentation that training used for this evaluation
    (memplast.train.task: per epoch, and its own one for the end-of-task evaluation)."""
    from memplast.train.epoch import side_generator

    return (
        side_generator("test-aug", order_seed, "end", task)
        if role == "end"
        else side_generator("test-aug", order_seed, epoch)
    )


def evaluate_checkpoint(model, meta: dict, data, role: str, order_seed: int, batch_size: int, test_aug) -> pd.DataFrame:
    """The held-out rows of one checkpoint (both splits, the classes seen at it)."""
    from memplast.device import to_host
    from memplast.masks import seen_classes
    from memplast.train.epoch import evaluate_samples

    seen = seen_classes(meta["seen"], data.p.n_classes, data.device)
    parts = []
    for split in SPLITS:
        rows = data.rows(split, meta["seen"])
        aug = test_aug if split == "test" else None
        gen = None if aug is None else test_generator(order_seed, role, meta["epoch"], meta["task"])
        out = evaluate_samples(model, data, rows, seen, batch_size, gen, aug)
        loss, correct, margin, pred = to_host(out["loss"], out["correct"], out["margin"], out["pred"])
        parts.append(
            pd.DataFrame(
                {
                    "split": split,
                    "sample_id": data.p.sample_id[rows],
                    "label": data.p.labels[rows],
                    "epoch": int(meta["epoch"]),
                    "task": int(meta["task"]),
                    "role": role,
                    "loss": loss,
                    "correct": correct.astype(bool),
                    "margin": margin,
                    "pred": pred.astype(np.int64),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def heldout_table(
    paths, prepared, order_seed: int, epochs_per_task: int, batch_size: int, test_aug, device
) -> pd.DataFrame:
    """Evaluate every checkpoint in ``paths`` (empty before-window slots skipped) on the held-out
    samples of its seen classes; rows sorted by (epoch, role, split, sample_id)."""
    from memplast.checkpoints import load_checkpoint
    from memplast.progress import tqdm
    from memplast.train.device_data import DeviceData

    data = DeviceData(prepared, device)
    parts = []
    for path in tqdm(list(paths), desc="held-out samples per checkpoint"):
        model, meta = load_checkpoint(path, device)
        if model is None:
            continue
        parts.append(
            evaluate_checkpoint(
                model, meta, data, checkpoint_role(meta, epochs_per_task), order_seed, batch_size, test_aug
            )
        )
    if not parts:
        raise ValueError(f"no checkpoint with weights among {len(list(paths))} files; retrain the run")
    table = pd.concat(parts, ignore_index=True)
    table["role"] = pd.Categorical(table["role"], ROLES)
    table = table.sort_values(["epoch", "role", "split", "sample_id"]).drop_duplicates(
        ["epoch", "role", "split", "sample_id"]
    )
    table["role"] = table["role"].astype(str)
    return table.reset_index(drop=True)


def sample_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per held-out sample (split, sample_id) from the task-end rows of :func:`heldout_table`:
    ``first_task`` (its class arrives), ``first_learned_task`` (first task at whose end it is
    correct; -1: never), ``forgetting_events`` = sum_t 1[correct_{t-1} and not correct_t] over
    consecutive task ends, ``n_tasks`` (task ends it is evaluated at), ``end_correct`` / ``end_loss``
    / ``end_margin`` at the last task end of the run."""
    ends = table[table["role"] == "end"].sort_values(["split", "sample_id", "task"])
    if ends.empty:
        raise ValueError("the held-out table has no task-end rows (role 'end'); the run's end checkpoints are missing")
    key = ["split", "sample_id"]
    c = ends["correct"].to_numpy(bool)
    same = (ends[key].shift() == ends[key]).all(axis=1).to_numpy()
    prev = np.r_[False, c[:-1]]
    ends = ends.assign(forgot=same & prev & ~c, learned_task=np.where(c, ends["task"], np.iinfo(np.int64).max))
    g = ends.groupby(key, sort=True)
    last_task = int(ends["task"].max())
    out = g.agg(
        label=("label", "first"),
        first_task=("task", "min"),
        n_tasks=("task", "size"),
        first_learned_task=("learned_task", "min"),
        forgetting_events=("forgot", "sum"),
        last_task=("task", "max"),
        end_correct=("correct", "last"),
        end_loss=("loss", "last"),
        end_margin=("margin", "last"),
    ).reset_index()
    if (out["last_task"] != last_task).any():
        raise ValueError("a held-out sample is missing at the run's last task end; the table is incomplete")
    never = out["first_learned_task"] == np.iinfo(np.int64).max
    out["first_learned_task"] = out["first_learned_task"].where(~never, -1).astype(np.int64)
    out["forgetting_events"] = out["forgetting_events"].astype(np.int64)
    return out.drop(columns="last_task")


def accuracy_by_checkpoint(table: pd.DataFrame) -> pd.DataFrame:
    """Mean of ``correct`` and ``loss`` per (split, epoch, role, task): the run's accuracy curve
    recomputed from the per-sample rows."""
    return table.groupby(["split", "epoch", "role", "task"], as_index=False, observed=True).agg(
        acc=("correct", "mean"), loss=("loss", "mean"), n=("correct", "size")
    )
