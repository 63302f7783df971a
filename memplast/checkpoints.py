"""Checkpoints of a run: where they live, how they are written and read (the one owner).

A run directory ``results/runs/<run>`` holds per task ``t`` (paths from the functions below; the
rules build their outputs from them, with Snakemake wildcards as ``run`` / ``task``):

- ``task<t>/end.pt``: the end-of-task *state* (model, optimizer, generators, algorithm state):
  the next task starts from it;
- ``task<t>/ckpt/te<e>.pt``: weights at task-epoch ``e`` (the after-window of the boundary before
  the task, the task's end checkpoint, extra epochs);
- ``task<t>/ckpt/best-<j>.pt``: the before-window of the boundary after the task, on the training
  path: slot ``j`` holds the weights of epoch B - j (B = the best-validation epoch whose weights end
  the task, or the last epoch without early stopping). A slot before the task's first epoch holds
  an empty marker (``meta["empty"]``);
- ``task<t>/ckpt/live.pt``: the live last epoch that restoring B discarded.

Every checkpoint is a torch file ``{"model": state_dict, "meta": {...}, "provenance_json": str}``;
``meta`` has arch, width, num_classes, in_channels (to rebuild the model), epoch, task, seen
classes, and for window files slot / best_epoch / live. Writes are atomic (``io.atomic_path``).

Integrity (``memplast.integrity``): every file is verified right after it is written (before it
replaces its destination) and wherever it is read: the archive's CRC-32 checksums and a load. A
damaged file raises :class:`DamagedFileError`, one line naming the file and the recovery.

No torch import at module level: the rules import this module to name their outputs.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass

from memplast.integrity import DamagedFileError, check_archive

WRITE_RECOVERY = "it was damaged while being written and is not kept (check the disk: space, errors); rerun the job"


# --------------------------------------------------------------------------- paths
def end_state(run: str, task) -> str:
    return f"{run}/task{task}/end.pt"


def epoch_checkpoint(run: str, task, task_epoch) -> str:
    return f"{run}/task{task}/ckpt/te{task_epoch}.pt"


def window_slot(run: str, task, slot) -> str:
    return f"{run}/task{task}/ckpt/best-{slot}.pt"


def live_checkpoint(run: str, task) -> str:
    return f"{run}/task{task}/ckpt/live.pt"


def window_slots(run: str, task, window: int) -> list[str]:
    """The before-window slots 0 .. window-1 of the boundary after ``task``."""
    return [window_slot(run, task, j) for j in range(window)]


def boundary_checkpoints(run: str, boundary: int, window: int) -> list[str]:
    """What probing boundary k reads: task k's before-window slots, its live last epoch, and the
    first ``window`` task-epochs of task k+1 (the after-window), in this order."""
    after = [epoch_checkpoint(run, boundary + 1, te) for te in range(1, window + 1)]
    return [*window_slots(run, boundary, window), live_checkpoint(run, boundary), *after]


# --------------------------------------------------------------------------- writing
def model_meta(arch: str, width: int, num_classes: int, in_channels: int) -> dict:
    """What :func:`load_checkpoint` needs to rebuild the network."""
    return {"arch": arch, "width": width, "num_classes": num_classes, "in_channels": in_channels}


def _provenance_json(provenance: dict) -> str:
    return json.dumps(provenance, default=str)


def save_state(path, payload: dict) -> None:
    """Write a torch payload atomically (end states, resume states, checkpoints).

    torch names the archive's records after the file name it is given (here the temporary name
    of ``io.atomic_path``); saved through a file object they are named ``archive/`` instead, so the
    same payload always gives the same bytes and a rerun changes nothing downstream."""
    import torch

    from memplast.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
        verify(tmp, name=path, recovery=WRITE_RECOVERY, weights_only=False)


def save_checkpoint(path, model, meta: dict, provenance: dict, **extra) -> None:
    """Weights (with BN buffers) plus what is needed to rebuild the model, atomically."""
    payload = {"model": model.state_dict(), "meta": meta, "provenance_json": _provenance_json(provenance)}
    payload.update(extra)
    save_state(path, payload)


def save_empty_slot(path, meta: dict) -> None:
    """A before-window slot whose epoch precedes the task's first epoch (not on this task's path)."""
    save_state(path, {"meta": {**meta, "epoch": None, "empty": True}})


class BeforeWindow:
    """The before-window kept in memory while a task trains: the (epoch, CPU weights) of the last
    ``size`` epochs, and a copy of it at every new best epoch (the window that ends at B)."""

    def __init__(self, size: int, recent=()):
        self.recent = collections.deque(recent, maxlen=size)

    @property
    def size(self) -> int:
        return self.recent.maxlen

    def push(self, epoch: int, model) -> None:
        if self.size:
            self.recent.append((epoch, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}))

    def snapshot(self) -> list:
        return list(self.recent)

    @staticmethod
    def write(paths, window: list, model, meta: dict, provenance: dict) -> None:
        """Write ``window`` (the snapshot ending at B, oldest first) to ``paths`` (slot j = B - j),
        loading each state into ``model`` in turn (the caller restores its weights afterwards)."""
        for j, path in enumerate(paths):
            if j < len(window):
                epoch, weights = window[-1 - j]
                model.load_state_dict(weights)
                save_checkpoint(path, model, {**meta, "epoch": epoch, "slot": j}, provenance)
            else:
                save_empty_slot(path, {**meta, "slot": j})


# --------------------------------------------------------------------------- reading
def verify(path, device="cpu", *, name=None, recovery=None, weights_only=True):
    """Check the archive's checksums, then load it; returns the payload. A damaged file (or one
    that does not load) raises :class:`DamagedFileError` naming ``name`` (default ``path``)."""
    import pickle

    import torch

    name = path if name is None else name
    check_archive(path, recovery, name)
    try:
        return torch.load(path, map_location=device, weights_only=weights_only)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise DamagedFileError(name, f"does not load ({type(exc).__name__}: {exc})", recovery) from None


def load_payload(path, device="cpu") -> dict:
    """A verified checkpoint or state (weights-only load)."""
    return verify(path, device)


def load_checkpoint(path, device="cpu"):
    """Rebuild the model of a checkpoint written by :func:`save_checkpoint`; returns (model, meta)
    in eval mode, or (None, meta) for an empty before-window slot."""
    from memplast.models import build_model

    payload = load_payload(path, device)
    meta = payload["meta"]
    if meta.get("empty"):
        return None, meta
    model = build_model(meta["arch"], meta["num_classes"], meta["in_channels"], meta["width"]).to(device)
    model.load_state_dict(payload["model"])
    model.eval()
    return model, meta


@dataclass
class Boundary:
    """The checkpoints around one boundary, decoded: models and their seen classes by epoch (the
    training path: before-window B-w+1..B and after-window), the best epoch B, and the live last
    epoch (model, seen) or None."""

    models: dict
    seen: dict
    best_epoch: int
    live: tuple | None


def read_boundary(paths, device, boundary: int) -> Boundary:
    """Decode the files of :func:`boundary_checkpoints` (empty slots skipped)."""
    models, seen, live, best = {}, {}, None, None
    for path in paths:
        model, meta = load_checkpoint(path, device)
        if model is None:
            continue
        if meta.get("live"):
            live = (model, meta["seen"])
            continue
        models[meta["epoch"]], seen[meta["epoch"]] = model, meta["seen"]
        if meta.get("slot") == 0:
            best = int(meta["best_epoch"])
    if best is None:
        raise ValueError(
            f"boundary {boundary}: no before-window slot 0 among the checkpoints {list(map(str, paths))}; "
            f"retrain task {boundary}"
        )
    return Boundary(models, seen, best, live)
