"""TEMPORARY stand-in until the grid module lands (epoch arithmetic only)."""

from __future__ import annotations


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
    """Classes seen at ``task`` (0-based): the first (task + 1) * classes_per_task of the order."""
    return list(order)[: (task + 1) * classes_per_task]
