"""Class masks and the class-masked cross-entropy: the one loss of the workflow.

Logits are masked to the classes seen so far ("native mask", design §4): unseen classes take no
part in the softmax and receive no gradient. A mask is given as
- :class:`SeenClasses` (built once per task: index tensors, no host synchronisation; training),
- a boolean vector over the output units (one mask for every sample), or
- an N x C boolean matrix (one mask per sample: probes compare old and new masks across a boundary).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


def class_mask(seen_classes, num_classes: int, device=None) -> torch.Tensor:
    """Boolean mask over the output units: True for the classes seen so far."""
    mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
    mask[torch.as_tensor(list(seen_classes), dtype=torch.long, device=device)] = True
    return mask


class SeenClasses(NamedTuple):
    """The seen classes as the training step uses them, built once per task (:func:`seen_classes`):
    index tensors instead of a boolean mask, so selecting logits needs no host synchronisation."""

    mask: torch.Tensor  # bool over output units
    index: torch.Tensor  # long: the seen classes in increasing order (the kept logit columns)
    position: torch.Tensor  # long over output units: column of each seen class, -1 if unseen
    classes: np.ndarray  # the seen classes on the host (label checks without touching the device)


def seen_classes(mask_or_classes, num_classes: int | None = None, device=None) -> SeenClasses:
    """:class:`SeenClasses` from a boolean mask (one synchronisation on a GPU) or from class ids."""
    if isinstance(mask_or_classes, SeenClasses):
        return mask_or_classes
    if isinstance(mask_or_classes, torch.Tensor) and mask_or_classes.dtype == torch.bool:
        mask = mask_or_classes
        classes = np.flatnonzero(mask.cpu().numpy())
    else:
        classes = np.unique(np.asarray(list(mask_or_classes), dtype=np.int64))
        mask = class_mask(classes, num_classes, device)
    position = np.full(len(mask), -1, dtype=np.int64)
    position[classes] = np.arange(len(classes))
    index = torch.as_tensor(classes, dtype=torch.long).to(mask.device)
    return SeenClasses(mask, index, torch.as_tensor(position).to(mask.device), classes)


def masked_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits of the seen classes only (N x n_seen), in class-index order."""
    if isinstance(mask, SeenClasses):
        return logits.index_select(1, mask.index)
    return logits[:, mask]


def masked_labels(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Labels re-indexed into the seen-class columns of :func:`masked_logits`. With a boolean
    mask, raises if a label is unseen (a host synchronisation); with :class:`SeenClasses` the
    caller checks labels on the host once (an unseen label maps to -1, which cross-entropy rejects)."""
    if isinstance(mask, SeenClasses):
        return mask.position[labels]
    position = torch.cumsum(mask.long(), 0) - 1
    if not bool(mask[labels].all()):
        raise ValueError("a label is outside the class mask: the sample's class has not been seen")
    return position[labels]


def row_masks(mask: torch.Tensor, n: int) -> torch.Tensor:
    """A class mask per sample (N x C, bool) from one mask (C) or per-sample masks (N x C)."""
    mask = torch.as_tensor(mask, dtype=torch.bool)
    return mask.expand(n, -1) if mask.dim() == 1 else mask


def in_mask(labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """valid_i = 1[y_i in M_i]: the loss of sample i is defined under its mask."""
    return masks.gather(1, labels[:, None])[:, 0]


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, mask) -> torch.Tensor:
    """loss_i = log sum_{j in M_i} exp z_ij - z_iy = -log softmax(z_i[M_i])_{y_i}, not averaged.

    Classes outside M_i take no part and receive no gradient. With one mask for all samples
    (:class:`SeenClasses` or a boolean vector) it is cross-entropy over the kept logit columns;
    with per-sample masks (N x C) the log-sum-exp over each row's classes. Rows with y_i outside
    M_i are meaningless there (the caller sets them to NaN; see :func:`in_mask`)."""
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        lse = torch.logsumexp(logits.masked_fill(~mask, -math.inf), 1)
        return lse - logits.gather(1, labels[:, None])[:, 0]
    return F.cross_entropy(masked_logits(logits, mask), masked_labels(labels, mask), reduction="none")
