"""Model-level metrics of one checkpoint, as in the reference loss-of-plasticity analysis.

On all samples of the evaluated classes, BatchNorm in eval mode (running statistics), or with
``faithful=True`` as the reference analysis does it: one seeded random batch of 1000 samples
through train-mode BatchNorm (batch statistics; the running buffers are never updated).

- dormant units: unit u of a ReLU layer has activation rate r_u = mean over samples (and, for a
  conv channel, spatial positions) of 1[h_u > 0]; it is dormant if r_u < 0.01. Reported as the
  fraction of all units and per layer (``dormant_frac``, ``dormant_frac_L{j}``, j 0-based).
- ranks of the penultimate feature matrix Phi (N x D, not centred) with singular values s:
  see :func:`rank_measures`.
- mean |weight| over every parameter entry; accuracy and loss under the class mask.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call

from memplast.masks import per_sample_loss, row_masks
from memplast.models import eval_mode
from memplast.probes import _as_tensor, batch_stat_buffers, split_state

DORMANT_RATE = 0.01
FAITHFUL_BATCH = 1000


def effective_rank(s: torch.Tensor) -> float:
    """exp(H(p)), p_k = s_k / sum_j s_j, H the Shannon entropy (0 log 0 = 0) (Roy & Vetterli 2007;
    the "effective rank" of Dohare et al.)."""
    p = s / s.sum()
    return math.exp(-float(torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum()))


def rank99(s: torch.Tensor, prop: float = 0.99) -> int:
    """Smallest k with s_1 + .. + s_k >= prop * sum_j s_j (s sorted descending): the number of
    singular values that make up 99% of their sum (with the default ``prop``). Dohare et al. (2024)
    call it "stable rank" (after Kumar et al. 2021's approximate rank); it is not the classical
    stable rank (:func:`stable_rank`)."""
    cum = torch.cumsum(s, 0)
    return int((cum < prop * cum[-1]).sum()) + 1


def stable_rank(s: torch.Tensor) -> float:
    """sum_k s_k^2 / max_k s_k^2 = ||Phi||_F^2 / ||Phi||_2^2 (the classical stable rank)."""
    return float(s.square().sum() / s.max().square())


def rank_measures(features: torch.Tensor) -> dict:
    """effective_rank, rank99 and stable_rank of a feature matrix (rows = samples), from its
    singular values in float64."""
    s = torch.linalg.svdvals(features.double())
    if float(s.max()) == 0.0:
        return {"effective_rank": math.nan, "rank99": 0, "stable_rank": math.nan}
    return {"effective_rank": effective_rank(s), "rank99": rank99(s), "stable_rank": stable_rank(s)}


def mean_abs_weight(model: nn.Module) -> float:
    """sum over all parameter entries of |theta| / number of entries."""
    total = sum(float(p.detach().abs().double().sum()) for p in model.parameters())
    return total / sum(p.numel() for p in model.parameters())


def _forward_batches(model, images, batch_size, device, faithful, seed):
    """Yield (index, Forward) over the evaluated samples in batches: all samples with the running
    statistics, or (faithful) one seeded random batch of FAITHFUL_BATCH samples normalized with its
    own statistics (computed on the whole batch first, then applied chunk by chunk)."""
    trainable, frozen, buffers = split_state(model, device)
    state = {**trainable, **frozen}
    dtype = next(iter(state.values())).dtype
    idx = torch.arange(len(images))
    if faithful:
        idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:FAITHFUL_BATCH].sort().values
        buffers = batch_stat_buffers(model, state, buffers, images[idx].to(device, dtype))
    for chunk in idx.split(batch_size):
        yield (
            chunk,
            functional_call(model, {**state, **buffers}, (images[chunk].to(device, dtype),), {"return_acts": True}),
        )


@torch.no_grad()
def model_metrics(
    model: nn.Module, images, labels, mask, batch_size: int = 500, device="cpu", faithful: bool = False, seed: int = 0
) -> dict:
    """Dormant units, feature ranks, mean |weight|, accuracy and mean loss (under ``mask``) on the
    given samples (see the module docstring). The model is left untouched."""
    images, labels = _as_tensor(images), _as_tensor(labels, torch.long)
    mask = _as_tensor(mask).bool()
    if not bool(mask[labels].all()):
        raise ValueError("model_metrics: a label is outside the class mask")
    active, observed, feats, hits, losses = 0, 0, [], [], []
    with eval_mode(model):
        for idx, out in _forward_batches(model, images, batch_size, device, faithful, seed):
            # per unit: number of (sample, position) pairs with h > 0, and number of pairs seen
            active = active + torch.cat([(a > 0).sum([0, *range(2, a.dim())]).cpu() for a in out.acts])
            observed = observed + torch.cat([torch.full((a.shape[1],), a.numel() // a.shape[1]) for a in out.acts])
            y = labels[idx].to(device)
            masks = row_masks(mask.to(device), len(y))
            feats.append(out.features.cpu())
            hits.append((out.logits.masked_fill(~masks, -math.inf).argmax(1) == y).cpu())
            losses.append(per_sample_loss(out.logits, y, masks).double().cpu())
    dormant = (active.double() / observed < DORMANT_RATE).split([a.shape[1] for a in out.acts])
    result = {
        "n_samples": int(sum(len(h) for h in hits)),
        "faithful": bool(faithful),
        "accuracy": float(torch.cat(hits).double().mean()),
        "loss": float(torch.cat(losses).mean()),
        "dormant_frac": float(torch.cat(dormant).double().mean()),
    }
    result.update({f"dormant_frac_L{j}": float(d.double().mean()) for j, d in enumerate(dormant)})
    result.update(rank_measures(torch.cat(feats)))
    result["mean_abs_weight"] = mean_abs_weight(model)
    return result


@torch.no_grad()
def per_class_accuracy(model: nn.Module, images, labels, mask, batch_size: int = 500, device="cpu") -> pd.DataFrame:
    """Accuracy of argmax over the classes of ``mask`` per true class, eval-mode BatchNorm:
    DataFrame(class, n, accuracy), one row per class present in ``labels``."""
    images, labels = _as_tensor(images), _as_tensor(labels, torch.long)
    mask = _as_tensor(mask).bool()
    trainable, frozen, buffers = split_state(model, device)
    state = {**trainable, **frozen, **buffers}
    dtype = next(iter(trainable.values())).dtype
    preds = []
    with eval_mode(model):
        for s in range(0, len(labels), batch_size):
            logits = functional_call(model, state, (images[s : s + batch_size].to(device, dtype),))
            preds.append(logits.masked_fill(~mask.to(device), -math.inf).argmax(1).cpu())
    df = pd.DataFrame({"class": labels.numpy(), "hit": (torch.cat(preds) == labels).numpy()})
    out = df.groupby("class", sort=True)["hit"].agg(n="size", accuracy="mean").reset_index()
    return out.astype({"class": np.int64, "n": np.int64, "accuracy": np.float64})
