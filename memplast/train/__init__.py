"""Training: the incremental protocol (Dohare et al. 2024), one task per job, and the memo scorer.

- ``task``: :func:`run_task` (one task of one run), :class:`RunSpec`, :class:`TaskPaths`;
- ``state``: :class:`TaskState` (model, optimizer, algorithm, generators: one save/restore path
  for the previous task, a resume and the end state), :class:`Progress`, :class:`ResumeFile`;
- ``epoch``: the epoch step shared by both trainers (:func:`fit_epoch`, :func:`evaluate_splits`),
  BatchNorm re-estimation, the per-epoch log line;
- ``device_data``: the prepared dataset on the device; ``scorer``: :func:`train_scorer` (resumable
  and SIGTERM-safe with the same ``state`` machinery).

The algorithms (``memplast.algorithms``) plug in through one interface; checkpoint files and the
window format belong to ``memplast.checkpoints``; epoch arithmetic to ``memplast.grid``.
"""

from memplast.train.device_data import DeviceData
from memplast.train.epoch import NonFiniteLoss, evaluate, reestimate_bn, train_epoch
from memplast.train.scorer import ScorerPaths, train_scorer
from memplast.train.task import RunSpec, TaskPaths, run_task

__all__ = [
    "DeviceData",
    "NonFiniteLoss",
    "RunSpec",
    "ScorerPaths",
    "TaskPaths",
    "evaluate",
    "reestimate_bn",
    "run_task",
    "train_epoch",
    "train_scorer",
]
