"""The epoch step shared by incremental training and the memorization scorer.

:func:`fit_epoch` sets the learning rate and runs one pass of SGD steps (:func:`train_epoch`);
:func:`evaluate_splits` evaluates validation and test (:func:`evaluate`, the mean of the per-sample
:func:`evaluate_samples`); :func:`log_epoch`
writes the one progress line per epoch. :func:`reestimate_bn` recomputes BatchNorm statistics
(after a non-random sample ordering, design §7).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import numpy as np
import torch
from torch import nn

from memplast.device import stable_seed, to_host
from memplast.masks import per_sample_loss, seen_classes
from memplast.models import eval_mode
from memplast.probes import margin
from memplast.train.device_data import DeviceData

log = logging.getLogger("memplast.train")


def side_generator(*parts) -> torch.Generator:
    """A CPU generator for draws outside the training stream (BN re-estimation, test augmentation),
    seeded from ``parts``, so they never shift the run's own draws and need no resume state."""
    return torch.Generator().manual_seed(stable_seed(*parts))


@torch.no_grad()
def evaluate_samples(
    model,
    data: DeviceData,
    rows: np.ndarray,
    mask: torch.Tensor,
    batch_size: int,
    generator=None,
    aug: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Per sample of ``rows`` (device tensors, eval-mode BN, logits z masked to the seen classes S):
    ``loss`` = -log softmax(z[S])_y, ``pred`` = argmax_{j in S} z_j, ``correct`` = 1[pred = y],
    ``margin`` = z_y - max_{j in S, j != y} z_j (NaN with one seen class). With ``aug`` the inputs
    are augmented from ``generator`` batch by batch (``protocol.test_augmentation``), so the same
    ``batch_size`` and generator give the same inputs. The one evaluation of the workflow:
    :func:`evaluate` reduces it to the reported loss and accuracy."""
    seen = seen_classes(mask)
    data.check_labels(rows, seen)
    idx = data.index(rows)
    out = {k: torch.empty(len(rows), dtype=dt, device=data.device) for k, dt in
           (("loss", torch.float32), ("pred", torch.long), ("correct", torch.bool), ("margin", torch.float32))}  # fmt: skip
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            x, y = data.take(idx[start : start + batch_size], generator, aug)
            logits = model(x)
            part = slice(start, start + len(y))
            out["loss"][part] = per_sample_loss(logits, y, seen)
            masked = logits.masked_fill(~seen.mask, float("-inf"))
            out["pred"][part] = masked.argmax(1)
            out["correct"][part] = out["pred"][part] == y
            out["margin"][part] = margin(logits, y, seen.mask)
    return out


def evaluate(
    model,
    data: DeviceData,
    rows: np.ndarray,
    mask: torch.Tensor,
    batch_size: int,
    generator=None,
    aug: dict | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy over ``rows`` (:func:`evaluate_samples`); with ``aug`` the inputs are
    augmented from ``generator`` (``protocol.test_augmentation``). Sums stay on the device and are read once.
    No rows (a tuning job has no test split): NaN."""
    if len(rows) == 0:
        return float("nan"), float("nan")
    out = evaluate_samples(model, data, rows, mask, batch_size, generator, aug)
    total_loss, correct = to_host(out["loss"].double().sum(), out["correct"].sum())
    n = len(rows)
    return float(total_loss) / n, int(correct) / n


def log_epoch(where: str, row: dict, n_epochs: int, eta_seconds: float) -> None:
    """One progress line per epoch: task-epoch, train loss/acc, val acc, lr, images/s, ETA of the task."""
    log.info(
        "%s: epoch %d/%d train loss %.4f acc %.4f | val acc %.4f | lr %.3g | %.0f img/s | ETA %s",
        where,
        row["task_epoch"],
        n_epochs,
        row["train_loss"],
        row["train_acc"],
        row["val_acc"],
        row["lr"],
        row["images_per_sec"],
        _hms(eta_seconds),
    )


def _hms(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


AUTOCAST = {"bf16": torch.bfloat16}  # protocol.autocast -> dtype ("none": full float32)


def autocast(device: torch.device, mode: str | None):
    """The training step's forward under ``protocol.autocast``: bf16 autocast (matmuls and
    convolutions in bfloat16, losses and reductions in float32, weights and optimizer in float32),
    or full float32 (``none``/None: no context at all). Evaluation, probes and curvature never use it."""
    if mode in (None, "none"):
        return contextlib.nullcontext()
    if mode not in AUTOCAST:
        raise ValueError(f"protocol.autocast {mode!r}: use none or {' | '.join(AUTOCAST)}")
    return torch.autocast(device.type, dtype=AUTOCAST[mode])


class NonFiniteLoss(FloatingPointError):
    pass


class EpochInterrupted(Exception):
    """``stop()`` asked :func:`train_epoch` to stop after a step; ``cursor`` is where the epoch stands
    (``batch``: the next batch; ``losses``, ``batch_loss``, ``correct``: the sums so far, on the CPU),
    to pass back as ``cursor`` to continue the epoch exactly."""

    def __init__(self, cursor: dict):
        super().__init__(f"stopped before batch {cursor['batch']}")
        self.cursor = cursor


def train_epoch(
    model,
    optimizer,
    data: DeviceData,
    rows: np.ndarray,
    mask,
    batch_size: int,
    generator,
    aug: dict | None,
    weights: torch.Tensor | None = None,
    after_step=None,
    where: str = "",
    wants_acts: bool = False,
    cursor: dict | None = None,
    stop=None,
    amp: str | None = None,
):
    """One pass over ``rows`` in the given order. Loss per batch = mean_i w_i * loss_i.
    ``amp``: ``protocol.autocast`` of the forward (:func:`autocast`; None: float32).

    ``stop()`` is asked after every optimizer step but the last: True raises :class:`EpochInterrupted`
    with the epoch's position; that ``cursor`` continues the epoch from its next batch.

    ``after_step`` runs after every optimizer step; with ``wants_acts`` (the algorithm's flag) it
    receives the batch's ReLU outputs (continual backprop). The step
    never waits for the device: rows go to the device once, the mask is an index tensor, and losses, accuracy and the finite-loss check
    are read once, after the epoch (a non-finite loss raises then, before any state is saved).
    Returns (per-sample losses in ``rows`` order as a numpy array, accuracy).
    """
    model.train()
    seen = seen_classes(mask)
    data.check_labels(rows, seen)
    idx = data.index(rows)
    losses = torch.empty(len(rows), device=data.device)
    batch_loss = torch.empty(math.ceil(len(rows) / batch_size), device=data.device)
    correct = torch.zeros((), dtype=torch.long, device=data.device)
    if cursor is not None:
        for mine, saved in ((losses, "losses"), (batch_loss, "batch_loss"), (correct, "correct")):
            mine.copy_(cursor[saved])
    first = 0 if cursor is None else cursor["batch"]
    for b, start in enumerate(range(0, len(rows), batch_size)):
        if b < first:
            continue
        x, y = data.take(idx[start : start + batch_size], generator, aug)
        with autocast(data.device, amp):
            out = model(x, return_acts=True) if wants_acts else model(x)
            logits = out.logits if wants_acts else out
            loss_i = per_sample_loss(logits, y, seen)
        w = weights[start : start + batch_size] if weights is not None else None
        loss = (loss_i * w).mean() if w is not None else loss_i.mean()
        batch_loss[b] = loss.detach()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if wants_acts:
            after_step(out.acts)
        elif after_step is not None:
            after_step()
        losses[start : start + y.shape[0]] = loss_i.detach()
        correct += (logits.detach().masked_fill(~seen.mask, float("-inf")).argmax(1) == y).sum()
        if stop is not None and b + 1 < len(batch_loss) and stop():
            raise EpochInterrupted({"batch": b + 1, **{k: v.cpu() for k, v in
                                    (("losses", losses), ("batch_loss", batch_loss), ("correct", correct))}})  # fmt: skip
    losses, batch_loss, correct = to_host(losses, batch_loss, correct)
    bad = np.flatnonzero(~np.isfinite(batch_loss))
    if len(bad):
        raise NonFiniteLoss(
            f"non-finite loss ({batch_loss[bad[0]]}) in {where}, batch starting at {bad[0] * batch_size}; "
            "lower protocol.lr or check the data"
        )
    return losses, int(correct) / max(len(rows), 1)


def fit_epoch(
    model,
    optimizer,
    data: DeviceData,
    rows: np.ndarray,
    mask,
    lr: float,
    batch_size: int,
    generator,
    aug: dict | None,
    weights=None,
    after_step=None,
    where: str = "",
    wants_acts: bool = False,
    cursor: dict | None = None,
    stop=None,
    amp: str | None = None,
):
    """Set the learning rate to ``lr`` and train one epoch over ``rows`` in this order
    (:func:`train_epoch`, with its ``cursor``, ``stop`` and ``amp``). Returns (per-sample losses, accuracy, seconds)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    t0 = time.perf_counter()
    losses, acc = train_epoch(
        model, optimizer, data, rows, mask, batch_size, generator, aug, weights, after_step, where, wants_acts,
        cursor, stop, amp,
    )  # fmt: skip
    return losses, acc, time.perf_counter() - t0


def evaluate_splits(
    model,
    data: DeviceData,
    mask,
    batch_size: int,
    val_rows,
    test_rows,
    test_generator=None,
    test_aug: dict | None = None,
) -> dict:
    """val_loss, val_acc, test_loss, test_acc (test inputs augmented with ``test_aug``, if given)."""
    val_loss, val_acc = evaluate(model, data, val_rows, mask, batch_size)
    test_loss, test_acc = evaluate(model, data, test_rows, mask, batch_size, test_generator, test_aug)
    return {"val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc}


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches) -> int:
    """Replace every BatchNorm's running statistics by their exact average over ``batches``
    (an iterable of input tensors, in train mode, no gradients); returns the number of samples.
    Running means/variances are the equal-weight average of the per-batch statistics
    (``momentum=None``), so the last batches of a sorted epoch no longer dominate them."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    saved = [(m, m.momentum) for m in bns]
    flags = [(m, m.training) for m in model.modules()]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    n = 0
    try:
        for x in batches:
            model(x)
            n += len(x)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        for m, training in flags:
            m.training = training
    return n
