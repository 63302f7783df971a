"""Per-sample quantities of one checkpoint, and the probe table of one task boundary (design §4).

For sample i with label y_i, logits z_i and a class mask M_i (the classes the loss is taken over):

- loss_i = log sum_{j in M_i} exp z_ij - z_iy, margin, correct, confidence p_iy;
- grad_norm_i = ||d loss_i / d theta|| over all trainable parameters;
- input_grad_norm_i = ||d loss_i / d x_i||;
- dormant_prop_i(tau) (activation rates) and dormant_score_i(tau) (graded, normalised
  activations), overall and per ReLU layer;
- drift_i = ||h_e(x_i) - h_e'(x_i)|| of the penultimate features between consecutive probed
  epochs on the training path;
- align_dot_i = g_i . G, align_cos_i, pred_forget_i (end-of-task checkpoint only).

How each is computed for a whole batch at once:

- One forward pass with ``return_acts=True`` gives logits (all mask-based quantities, under both
  the eval and the native mask), ReLU outputs (dormant proportions) and features (drift).
- One backward pass of sum_i loss_i w.r.t. the *input* gives every input gradient. Hooks on every
  Conv2d / Linear / BatchNorm layer receive the layer's input a_i and output gradient b_i on the
  way and turn them into ||d loss_i / d W||^2 per sample (``memplast.grad_norms``); per-sample
  gradients exist at most for one layer (and one chunk of samples) at a time.
- With BatchNorm in eval mode samples do not interact, so d(sum_j loss_j)/d(layer output of i)
  = d loss_i / d(layer output of i): every per-sample quantity is independent of the batch.
- Alignment: one forward-mode JVP of theta -> (loss_1..loss_N) along G gives every g_i . G;
  the JVP of that JVP gives every G^T H_i G.

``bn_mode="train"`` (robustness variant) normalizes each probe batch with its own statistics
(biased variance, as train-mode BatchNorm does) and never touches the running buffers. Those
statistics are treated as constants of the batch: loss_i then depends on the other samples
only through them, and g_i is the gradient of loss_i with the normalization held fixed (with
gradients through the statistics, "the gradient of sample i" would mix every sample in the
batch). Results in this mode depend on the batch composition by construction.
"""

from __future__ import annotations

import functools
import logging
import math
import time

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, jvp

from memplast.grad_norms import GradNormHooks
from memplast.masks import in_mask, per_sample_loss, row_masks
from memplast.models import eval_mode
from memplast.progress import tqdm

log = logging.getLogger("memplast.probes")

TAUS = (0.0, 1e-3, 1e-2)
SCORE_TAUS = (0.0, 0.025, 0.1)
BN_MODES = ("eval", "train")
_BN = nn.modules.batchnorm._BatchNorm


# --------------------------------------------------------------------------- mask-based quantities
def margin(logits: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """margin_i = z_iy - max_{j in M_i, j != y_i} z_ij (NaN when M_i holds no other class)."""
    own = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device).scatter_(1, labels[:, None], True)
    other = logits.masked_fill(~masks | own, -math.inf).amax(1)
    m = logits.gather(1, labels[:, None])[:, 0] - other
    return m.masked_fill(~torch.isfinite(other), math.nan)


def correct(logits: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """correct_i = 1[argmax_{j in M_i} z_ij = y_i] (as 0.0 / 1.0)."""
    return (logits.masked_fill(~masks, -math.inf).argmax(1) == labels).to(logits.dtype)


def confidence(loss: torch.Tensor) -> torch.Tensor:
    """confidence_i = p_iy = softmax over M_i of z_i at y_i = exp(-loss_i)."""
    return torch.exp(-loss)


def mask_quantities(logits: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, suffix: str = "") -> dict:
    """loss, margin, correct, confidence of every sample under its mask; NaN where y_i is not in M_i."""
    loss = per_sample_loss(logits, labels, masks)
    out = {"loss": loss, "margin": margin(logits, labels, masks), "correct": correct(logits, labels, masks)}
    out["confidence"] = confidence(loss)
    undefined = ~in_mask(labels, masks)
    return {f"{k}{suffix}": v.masked_fill(undefined, math.nan) for k, v in out.items()}


# --------------------------------------------------------------------------- dormant units, drift
def activation_rates(acts: list) -> list:
    """Activation rate of every unit on every sample, one N x units tensor per ReLU layer:
    conv channel c: r_ic = mean over spatial positions of 1[h_ic(p) > 0]; fc unit: r_ik = 1[h_ik > 0]."""
    return [(a > 0).flatten(2).sum(2).double() / a[0, 0].numel() if a.dim() > 2 else (a > 0).double() for a in acts]


def dormant_props(acts: list, taus=TAUS) -> dict:
    """dormant_t{tau}_i = #{units u over all ReLU layers: r_iu <= tau} / #units, and per layer j
    (0-based, forward order) dormant_t{tau}_L{j}_i = the same fraction within layer j."""
    return _fractions_at_or_below(activation_rates(acts), taus, "dormant_t")


def _fractions_at_or_below(values: list, taus, prefix: str) -> dict:
    """{prefix}{tau}_i = #{units u over all layers: v_iu <= tau} / #units, and per layer j
    {prefix}{tau}_L{j}_i = the same fraction within layer j (``values``: N x units per layer)."""
    n_units = sum(v.shape[1] for v in values)
    overall, per_layer = {}, {}
    for tau in taus:
        counts = [(v <= tau).sum(1) for v in values]
        overall[f"{prefix}{tau:g}"] = torch.stack(counts).sum(0).double() / n_units
        for j, (c, v) in enumerate(zip(counts, values, strict=True)):
            per_layer[f"{prefix}{tau:g}_L{j}"] = c.double() / v.shape[1]
    return {**overall, **per_layer}


def normalized_activations(acts: list) -> list:
    """s_iu = a_iu / mean_{u' in layer} a_iu' per ReLU layer (N x units each), a_iu = spatial mean
    of the post-ReLU map of unit u on sample i (the unit's value for pooled features); s = 0 for
    every unit of a layer that is silent on the sample (mean 0)."""
    out = []
    for h in acts:
        a = h.double().flatten(2).mean(2) if h.dim() > 2 else h.double()
        mean = a.mean(1, keepdim=True)
        out.append(torch.where(mean > 0, a / mean.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(a)))
    return out


def dormant_scores(acts: list, taus=SCORE_TAUS) -> dict:
    """dormant_score_t{tau}_i = #{units u over all ReLU layers: s_iu <= tau} / #units (s from
    :func:`normalized_activations`; Sokar et al. 2023's tau-dormancy, per sample), and per layer j
    dormant_score_t{tau}_L{j}_i = the same fraction within layer j."""
    return _fractions_at_or_below(normalized_activations(acts), taus, "dormant_score_t")


def degenerate_thresholds(table: pd.DataFrame) -> list[str]:
    """Threshold pairs that give identical columns: for each family (dormant_t, dormant_score_t)
    and each layer (and overall), 'col_a == col_b' for consecutive thresholds equal on every row."""
    found = []
    for family in ("dormant_t", "dormant_score_t"):
        groups: dict[str, list] = {}
        for c in table.columns:
            if not c.startswith(family) or (family == "dormant_t" and c.startswith("dormant_score")):
                continue
            tau, _, layer = c[len(family) :].partition("_L")
            groups.setdefault(layer, []).append((float(tau), c))
        for cols in groups.values():
            cols = [c for _, c in sorted(cols)]
            found += [f"{a} == {b}" for a, b in zip(cols, cols[1:]) if table[a].equals(table[b])]
    return found


def warn_degenerate(table: pd.DataFrame, where: str = "") -> list[str]:
    """Log one warning listing every degenerate threshold pair of ``table``; returns the list."""
    found = degenerate_thresholds(table)
    if found:
        log.warning(
            "%sdormancy thresholds that give identical columns (they measure the same thing here): %s",
            f"{where}: " if where else "",
            "; ".join(found),
        )
    return found


def feature_drift(features: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """drift_i = ||h_e(x_i) - h_e'(x_i)||_2, e' the previous probed epoch (NaN without one)."""
    if previous is None:
        return torch.full((features.shape[0],), math.nan, dtype=torch.float64)
    return (features.double() - previous.double()).norm(dim=1)


# --------------------------------------------------------------------------- model plumbing


def split_state(model: nn.Module, device) -> tuple:
    """(trainable params, frozen params, buffers) as detached tensors on ``device``; the model is
    only ever run through ``functional_call`` with these, so it is never modified."""
    trainable, frozen = {}, {}
    for n, p in model.named_parameters():
        (trainable if p.requires_grad else frozen)[n] = p.detach().to(device)
    buffers = {n: b.detach().to(device) for n, b in model.named_buffers()}
    return trainable, frozen, buffers


def batch_stat_buffers(model: nn.Module, state: dict, buffers: dict, x: torch.Tensor) -> dict:
    """Copies of ``buffers`` whose BatchNorm running mean/var are the statistics of batch ``x``
    (mean and biased variance over batch and positions, layer by layer as train-mode BatchNorm
    sees them), so an eval-mode forward with them normalizes exactly like train mode."""
    new = {k: v.clone() for k, v in buffers.items()}
    handles = []

    def pre_hook(name, mod, inputs):
        a = inputs[0]
        dims = [0] + list(range(2, a.dim()))
        new[f"{name}.running_mean"].copy_(a.mean(dims))
        new[f"{name}.running_var"].copy_(a.var(dims, unbiased=False))

    for name, mod in model.named_modules():
        if isinstance(mod, _BN):
            handles.append(mod.register_forward_pre_hook(functools.partial(pre_hook, name)))
    try:
        with torch.no_grad():
            functional_call(model, {**state, **new}, (x,))
    finally:
        for h in handles:
            h.remove()
    return new


def _batch_buffers(model, params, buffers, x, bn_mode):
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    return buffers if bn_mode == "eval" else batch_stat_buffers(model, params, buffers, x)


def _as_tensor(a, dtype=None) -> torch.Tensor:
    return a.detach().cpu() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a), dtype=dtype)


# --------------------------------------------------------------------------- alignment
def mean_gradient(
    model: nn.Module, images, labels, mask, batch_size: int = 256, device="cpu", bn_mode: str = "eval"
) -> dict:
    """G = (1/N) sum_i grad_theta loss_i (mask ``mask``) over the given samples, as a dict over
    the trainable parameters (BatchNorm per ``bn_mode``)."""
    images, labels = _as_tensor(images), _as_tensor(labels, torch.long)
    trainable, frozen, buffers = split_state(model, device)
    dtype = next(iter(trainable.values())).dtype
    total = {k: torch.zeros_like(v) for k, v in trainable.items()}
    with eval_mode(model):
        for s in range(0, len(labels), batch_size):
            x = images[s : s + batch_size].to(device, dtype)
            y = labels[s : s + batch_size].to(device)
            bufs = _batch_buffers(model, {**trainable, **frozen}, buffers, x, bn_mode)
            params = {k: v.clone().requires_grad_() for k, v in trainable.items()}
            logits = functional_call(model, {**params, **frozen, **bufs}, (x,))
            masks = row_masks(mask.to(device), len(y))
            if not bool(in_mask(y, masks).all()):
                raise ValueError("mean_gradient: a label is outside the class mask")
            grads = torch.autograd.grad(per_sample_loss(logits, y, masks).sum(), list(params.values()))
            for k, g in zip(params, grads, strict=True):
                total[k] += g
    return {k: v / len(labels) for k, v in total.items()}


def directional_terms(loss_fn, params: dict, direction: dict, second_order: bool = False) -> tuple:
    """For the per-sample loss vector L(theta) = (loss_1..loss_N) and direction G:
    dot_i = g_i . G = d/de loss_i(theta + e G)|_0, one forward-mode JVP for all samples; and with
    ``second_order`` curv_i = G^T H_i G = d^2/de^2 loss_i(theta + e G)|_0, the JVP of that JVP."""
    if not second_order:
        return jvp(loss_fn, (params,), (direction,))[1], None
    return jvp(lambda p: jvp(loss_fn, (p,), (direction,))[1], (params,), (direction,))


def predicted_forgetting(dot: torch.Tensor, curv: torch.Tensor, eta: float) -> torch.Tensor:
    """Second-order change of loss_i after one step theta -> theta - eta G:
    pred_forget_i = -eta g_i.G + eta^2/2 G^T H_i G."""
    return -eta * dot + 0.5 * eta**2 * curv


# --------------------------------------------------------------------------- one checkpoint
def _forward_backward(model, state, hooks, x, y, m_eval, m_native, taus, score_taus=SCORE_TAUS) -> dict:
    """One forward (logits, ReLU outputs, features) and one backward of sum_i loss_i w.r.t. the
    input, during which ``hooks`` collect the per-sample parameter-gradient norms."""
    x = x.clone().requires_grad_()
    valid = in_mask(y, m_eval)
    with hooks.active(len(y), x.dtype, x.device):
        out = functional_call(model, state, (x,), {"return_acts": True})
        loss = per_sample_loss(out.logits, y, m_eval)
        gx = torch.autograd.grad(loss[valid].sum(), x)[0] if bool(valid.any()) else torch.zeros_like(x)
    logits = out.logits.detach()
    row = {**mask_quantities(logits, y, m_eval), **mask_quantities(logits, y, m_native, "_native")}
    row["grad_norm"] = hooks.sq.sqrt()
    row["input_grad_norm"] = gx.flatten(1).norm(dim=1)
    row.update(dormant_props([a.detach() for a in out.acts], taus))
    row.update(dormant_scores([a.detach() for a in out.acts], score_taus))
    row["features"] = out.features.detach()
    return row


@torch.no_grad()
def _alignment(model, state, trainable, x, y, m_eval, direction, eta, grad_norm) -> dict:
    """align_dot, align_cos and (with ``eta``) pred_forget from forward-mode JVPs along G."""

    def loss_fn(p):
        return per_sample_loss(functional_call(model, {**state, **p}, (x,)), y, m_eval)

    dot, curv = directional_terms(loss_fn, trainable, direction, second_order=eta is not None)
    g_norm = torch.sqrt(sum(v.double().square().sum() for v in direction.values()))
    row = {"align_dot": dot, "align_cos": dot / (grad_norm * g_norm)}
    if eta is not None:
        row["pred_forget"] = predicted_forgetting(dot, curv, eta)
    return row


def probe_checkpoint(
    model: nn.Module,
    images,
    labels,
    eval_mask,
    native_mask,
    *,
    taus=TAUS,
    score_taus=SCORE_TAUS,
    batch_size: int = 256,
    device="cpu",
    bn_mode: str = "eval",
    direction: dict | None = None,
    eta: float | None = None,
    progress: bool = False,
) -> dict:
    """Every per-sample quantity of one checkpoint, as float64 CPU tensors keyed by column name.

    ``eval_mask`` is one class mask (C) or one per sample (N x C); ``native_mask`` is the mask of
    the checkpoint's task. Loss-based columns (and gradients) are NaN where the label is outside
    the mask. ``direction`` (a dict over trainable parameters, e.g. from :func:`mean_gradient`)
    adds align_dot and align_cos, and ``eta`` adds pred_forget. ``features`` holds the penultimate
    features (for drift). The model's parameters, buffers and flags are left as they were."""
    images, labels = _as_tensor(images), _as_tensor(labels, torch.long)
    n = len(labels)
    eval_masks = row_masks(_as_tensor(eval_mask), n)
    native_masks = row_masks(_as_tensor(native_mask), n)
    trainable, frozen, buffers = split_state(model, device)
    dtype = next(model.parameters()).dtype
    if direction is not None:
        direction = {k: direction[k].to(device, dtype) for k in trainable}
    hooks = GradNormHooks(model)
    cols: dict[str, list] = {}
    with eval_mode(model):
        for s in tqdm(range(0, n, batch_size), desc="batches", leave=False, mininterval=10, disable=not progress):
            rows = slice(s, s + batch_size)
            x, y = images[rows].to(device, dtype), labels[rows].to(device)
            m_eval, m_native = eval_masks[rows].to(device), native_masks[rows].to(device)
            state = {**trainable, **frozen, **_batch_buffers(model, {**trainable, **frozen}, buffers, x, bn_mode)}
            row = _forward_backward(model, state, hooks, x, y, m_eval, m_native, taus, score_taus)
            if direction is not None:
                row |= _alignment(model, state, trainable, x, y, m_eval, direction, eta, row["grad_norm"])
            valid = in_mask(y, m_eval)
            for k in ("grad_norm", "input_grad_norm", "align_dot", "align_cos", "pred_forget"):
                if k in row:  # gradients of an undefined loss are undefined
                    row[k] = row[k].masked_fill(~valid, math.nan)
            for k, v in row.items():
                cols.setdefault(k, []).append(v.to("cpu", v.dtype if k == "features" else torch.float64))
    return {k: torch.cat(v) for k, v in cols.items()}


# --------------------------------------------------------------------------- one boundary
COLUMNS = (
    "sample_id",
    "epoch",
    "role",
    "best_epoch",
    "label",
    "is_old",
    "loss",
    "margin",
    "correct",
    "confidence",
    "loss_native",
    "margin_native",
    "correct_native",
    "confidence_native",
    "grad_norm",
    "input_grad_norm",
)
TAIL = ("drift", "align_dot", "align_cos", "pred_forget")


def _check_boundary(checkpoints, boundary_epoch, best, labels, sample_ids, is_old, old_mask, native_masks, live):
    """The arguments of :func:`probe_boundary` checked; returns the mask of task k+1."""
    epochs = sorted(checkpoints)
    before = [e for e in epochs if e <= boundary_epoch]
    if best not in checkpoints:
        raise ValueError(
            f"probe_boundary: no checkpoint for the best epoch {best} of boundary epoch "
            f"{boundary_epoch} (have {epochs})"
        )
    if before != list(range(before[0], best + 1)):
        raise ValueError(
            f"probe_boundary: the before-window {before} must be consecutive epochs ending at the best epoch {best}"
        )
    if missing := [e for e in epochs if e not in native_masks]:
        raise ValueError(f"probe_boundary: no native mask for epochs {missing}")
    if live is not None and best == boundary_epoch:
        raise ValueError("probe_boundary: a live checkpoint is only meaningful when the best epoch precedes E_k")
    if not (len(labels) == len(sample_ids) == len(is_old)):
        raise ValueError("probe_boundary: images, labels, sample_ids and is_old differ in length")
    if len(np.unique(sample_ids)) != len(sample_ids):
        raise ValueError("probe_boundary: duplicate sample ids")
    if not torch.equal(old_mask[labels], is_old):
        raise ValueError("probe_boundary: is_old disagrees with old_mask (is_old must be 'label in old mask')")
    next_mask = (
        _as_tensor(native_masks[boundary_epoch + 1]).bool()
        if boundary_epoch + 1 in native_masks
        else old_mask | torch.isin(torch.arange(len(old_mask)), labels[~is_old])
    )
    if not bool(next_mask[labels].all()):
        raise ValueError("probe_boundary: a sample's class is not seen at task k+1")
    return next_mask


def _frame(cols: dict, sample_ids, epoch: int, role: str, best: int, labels, is_old) -> pd.DataFrame:
    """The rows of one probed checkpoint, columns in table order (missing ones NaN)."""
    n = len(labels)
    df = pd.DataFrame(
        {
            "sample_id": sample_ids,
            "epoch": np.full(n, epoch, dtype=np.int64),
            "role": role,
            "best_epoch": np.full(n, best, dtype=np.int64),
            "label": labels.numpy(),
            "is_old": is_old.numpy(),
        }
    )
    dormant = [k for k in cols if k.startswith("dormant_")]
    for k in COLUMNS[6:] + tuple(dormant) + TAIL:
        df[k] = cols[k].numpy() if k in cols else np.nan
    return df


def probe_boundary(
    checkpoints: dict,
    boundary_epoch: int,
    images,
    labels,
    sample_ids,
    is_old,
    old_mask,
    native_masks: dict,
    next_task_lr: float,
    taus=TAUS,
    score_taus=SCORE_TAUS,
    batch_size: int = 256,
    device="cpu",
    bn_mode: str = "eval",
    progress: bool = True,
    best_epoch: int | None = None,
    live=None,
) -> pd.DataFrame:
    """Long probe table of boundary k (task k ends at epoch E_k = ``boundary_epoch``): one row per
    (sample, probed epoch), ``role`` = before / after / live.

    ``checkpoints`` maps epoch -> model (or a zero-argument loader returning one) on the training
    path: the before-window B_k - w + 1 .. B_k (B_k = ``best_epoch``, the epoch whose weights end
    task k; default E_k; fewer epochs when B_k is early in the task) and the after-window
    E_k + 1 .. E_k + w, which starts from B_k's weights. ``live`` (optional) is the live last epoch
    E_k that the restore of B_k discarded (row epoch E_k, role live, native mask of B_k).
    ``native_masks`` maps epoch -> mask of the classes seen at that epoch's task. Samples are all
    training samples of the classes seen at task k+1; ``is_old`` marks the classes of ``old_mask``.
    Eval mask: the old mask for old samples, the native mask for new samples (so their loss is NaN
    at task-k checkpoints). drift: distance to the previous epoch on the path (NaN at the first
    one); for the live row, to B_k. At B_k only: G = mean gradient of the task-(k+1) loss (its
    native mask) over the new-class samples, align_dot = g_i . G, align_cos = g_i . G /
    (||g_i|| ||G||), pred_forget with eta = ``next_task_lr``. Logs one warning when dormancy
    thresholds coincide (:func:`warn_degenerate`)."""
    images, labels = _as_tensor(images), _as_tensor(labels, torch.long)
    sample_ids = np.asarray(sample_ids)
    is_old = torch.as_tensor(np.asarray(is_old, dtype=bool))
    old_mask = _as_tensor(old_mask).bool()
    epochs = sorted(checkpoints)
    best = int(boundary_epoch if best_epoch is None else best_epoch)
    if len(images) != len(labels):
        raise ValueError("probe_boundary: images, labels, sample_ids and is_old differ in length")
    next_mask = _check_boundary(checkpoints, boundary_epoch, best, labels, sample_ids, is_old, old_mask, native_masks,
                                live)  # fmt: skip
    frames, previous, at_best = [], None, None
    points = [(e, checkpoints[e], "before" if e <= boundary_epoch else "after") for e in epochs]
    if live is not None:
        points.append((boundary_epoch, live, "live"))
    for epoch, model, role in tqdm(
        points, desc=f"probe boundary {boundary_epoch}", mininterval=10, disable=not progress
    ):
        t0 = time.perf_counter()
        model = model if isinstance(model, nn.Module) else model()
        native = _as_tensor(native_masks[best if role == "live" else epoch]).bool()
        eval_masks = torch.where(is_old[:, None], old_mask, native)
        direction = None
        if role == "before" and epoch == best and bool((~is_old).any()):
            new = ~is_old
            direction = mean_gradient(model, images[new], labels[new], next_mask, batch_size, device, bn_mode)
        elif role == "before" and epoch == best:
            log.warning("boundary %d: no new-class samples, alignment left NaN", boundary_epoch)
        cols = probe_checkpoint(
            model,
            images,
            labels,
            eval_masks,
            native,
            taus=taus,
            score_taus=score_taus,
            batch_size=batch_size,
            device=device,
            bn_mode=bn_mode,
            direction=direction,
            eta=next_task_lr if direction is not None else None,
            progress=progress,
        )
        features = cols.pop("features")
        cols["drift"] = feature_drift(features, at_best if role == "live" else previous)
        if role != "live":
            previous = features
        if epoch == best and role == "before":
            at_best = features
        frames.append(_frame(cols, sample_ids, epoch, role, best, labels, is_old))
        log.info(
            "boundary %d: probed epoch %d (%s, %d samples) in %.1fs",
            boundary_epoch,
            epoch,
            role,
            len(labels),
            time.perf_counter() - t0,
        )
    table = pd.concat(frames, ignore_index=True)
    warn_degenerate(table, f"boundary epoch {boundary_epoch}")
    return table
