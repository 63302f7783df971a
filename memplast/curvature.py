"""Per-sample memorization scores: curvature of the loss in input space, and cumulative loss.

For sample i with normalized input x_i, label y_i and class mask m, the loss is
L_i(x) = -log softmax(z(x)[m])_{y_i} and H_i = d^2 L_i / dx^2 (one D x D matrix per sample,
D = C*H*W). Garg et al. (ICML 2024) score memorization by Tr(H_i^2). Three estimators:

- ``exact_ggn``: exact Tr(H^2) for piecewise-linear nets, from one VJP per seen class.
- ``hutchinson``: Tr(H^2) = E ||H v||^2 over Rademacher v, with exact Hessian-vector products.
- ``finite_difference``: the reference code's estimate, ||grad L(x + h v) - grad L(x)||.

Conventions shared by every function here:

- The model is scored in eval mode (BatchNorm uses its running statistics and never updates
  them); the caller's train/eval flags are restored afterwards.
- Per-sample losses are *summed* over the batch. In eval mode samples do not interact, so
  d(sum_j L_j)/dx_i = dL_i/dx_i and a sample's score never depends on its batch.
- Probe vectors come from :func:`rademacher`, a counter-based hash of (seed, sample id,
  probe index, element index): the same sample gets the same probes in any batch.
  Hutchinson and finite differences use the same probes for the same seed. Every checkpoint
  gets its own seed (:func:`checkpoint_seed`), so estimates at different checkpoints are
  independent and the standard error of their mean is honest.
- :func:`strict_numerics` turns TF32 off (and, on CUDA, turns deterministic algorithms on)
  before scoring or probing.
"""

from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from memplast.device import stable_seed
from memplast.masks import masked_labels, masked_logits, per_sample_loss
from memplast.models import eval_mode
from memplast.progress import tqdm

log = logging.getLogger("memplast.curvature")

METHODS = ("exact_ggn", "hutchinson", "finite_difference")
HVP_MODES = ("double_backward", "forward_over_reverse")
# Chosen by benchmarks/bench_curvature.py: double backward builds the gradient graph once per
# batch and reuses it for every probe, forward-over-reverse redoes forward+backward per probe.
DEFAULT_HVP = "double_backward"

# Modules whose output is not piecewise linear in their input: with any of them the input
# Hessian has a second term besides J^T A J, so ``exact_ggn`` is no longer exact.
NOT_PIECEWISE_LINEAR = (
    nn.Softplus, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.LogSigmoid, nn.ELU, nn.SELU,
    nn.CELU, nn.Softsign, nn.Tanhshrink, nn.Hardswish, nn.Softmax, nn.LogSoftmax, nn.Softmin,
    nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.LocalResponseNorm, nn.MultiheadAttention, nn.Bilinear, nn.RNNBase, nn.Upsample,
)  # fmt: skip


# --------------------------------------------------------------------------- helpers


def summed_loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_i L_i(x_i): the per-sample masked cross-entropy, summed (never averaged)."""
    return per_sample_loss(model(x), labels, mask).sum()


def input_grad(model, x, labels, mask) -> torch.Tensor:
    """Per-sample input gradients g_i = dL_i/dx_i, shape of x."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(summed_loss(model, x, labels, mask), x)
    return g


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


# --------------------------------------------------------------------------- numerics and seeds
def strict_numerics(device, deterministic: bool = True) -> dict:
    """Full float32 matmuls and convolutions (TF32 off: its ~1e-3 relative error swamps a finite
    difference at h = 1e-3); on CUDA with ``deterministic``, deterministic algorithms (warning on
    ops that have none) and CUBLAS_WORKSPACE_CONFIG. Returns the settings, for provenance."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    det = bool(deterministic) and torch.device(device).type == "cuda"
    if det:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return {
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": det,
    }


def checkpoint_seed(seed: int, epoch: int) -> int:
    """The probe seed of one checkpoint: a 63-bit hash of (seed, epoch), so every checkpoint of a
    grid draws independent probes (a shared seed makes the errors of a grid mean correlated)."""
    return stable_seed("probes", int(seed), int(epoch))


# --------------------------------------------------------------------------- probe vectors
_M64 = (1 << 64) - 1


def _i64(u: int) -> int:
    """An unsigned 64-bit constant as the signed int64 with the same bits."""
    u &= _M64
    return u - (1 << 64) if u >= (1 << 63) else u


_GOLDEN = _i64(0x9E3779B97F4A7C15)
_MIX1 = _i64(0xBF58476D1CE4E5B9)
_MIX2 = _i64(0x94D049BB133111EB)


def _srl(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64 finalizer, int64 arithmetic wrapping mod 2^64: a bijection on 64-bit words."""
    z = (z ^ _srl(z, 30)) * _MIX1
    z = (z ^ _srl(z, 27)) * _MIX2
    return z ^ _srl(z, 31)


def _absorb(h: torch.Tensor, word) -> torch.Tensor:
    """Hash state after absorbing one more 64-bit word: mix((h xor word) + golden)."""
    return _mix((h ^ word) + _GOLDEN)


def rademacher(sample_ids, probe: int, shape, seed: int = 0, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Rademacher probes v (entries +-1), shape (len(sample_ids), *shape).

    v[i, e] = +1 if the top bit of H(seed, sample_ids[i], probe, e) is 0 else -1, where e is the
    flat element index and H absorbs the four words one after the other (splitmix64 mixing).
    A pure function of its arguments, so a sample's probe never depends on its batch.
    """
    ids = torch.as_tensor(np.asarray(sample_ids, dtype=np.int64), device=device)
    n_elem = math.prod(shape)
    h = torch.zeros((), dtype=torch.int64, device=device)
    h = _absorb(h, _i64(int(seed)))
    h = _absorb(h, ids)  # (N,)
    h = _absorb(h, _i64(int(probe)))
    element = torch.arange(n_elem, dtype=torch.int64, device=device)
    bits = _absorb(h[:, None], element[None, :])  # (N, n_elem)
    signs = torch.where(bits < 0, -1.0, 1.0).to(dtype)
    return signs.reshape(len(ids), *shape)


# --------------------------------------------------------------------------- Hessian-vector products
def make_hvp(model, x, labels, mask, mode: str = DEFAULT_HVP):
    """Return hvp(v) -> per-sample H_i v_i (shape of x) for the fixed batch (x, labels).

    ``double_backward``: g = d(sum L)/dx is built once with create_graph; each call is one
    more backward, d(g . v)/dx = H v. ``forward_over_reverse``: each call is a forward-mode
    JVP of the gradient function along v (torch.func.jvp over torch.func.grad).
    The model must already be in eval mode (see :func:`input_hvp`).
    """
    if mode == "double_backward":
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(summed_loss(model, x, labels, mask), x, create_graph=True)

        def hvp(v):
            (hv,) = torch.autograd.grad(g, x, grad_outputs=v, retain_graph=True)
            return hv

        return hvp
    if mode == "forward_over_reverse":
        grad_fn = torch.func.grad(lambda inp: summed_loss(model, inp, labels, mask))
        x = x.detach()

        def hvp(v):
            with torch.no_grad():  # torch.func.grad still differentiates; no graph for the params
                return torch.func.jvp(grad_fn, (x,), (v,))[1]

        return hvp
    raise ValueError(f"unknown hvp mode {mode!r}; choose one of {HVP_MODES}")


def input_hvp(model, x, labels, mask, v, mode: str = DEFAULT_HVP) -> torch.Tensor:
    """Per-sample Hessian-vector products H_i v_i, H_i = d^2 L_i / dx_i^2, in eval mode."""
    with eval_mode(model):
        return make_hvp(model, x, labels, mask, mode)(v)


# --------------------------------------------------------------------------- estimators
def hutchinson(model, x, labels, mask, sample_ids, n_probes=10, seed=0, hvp=DEFAULT_HVP) -> dict:
    """Hutchinson estimates from n exact products u_j = H v_j, v_j Rademacher:

    curv_hutch      = (1/n) sum_j ||u_j||^2      (unbiased for Tr(H^2))
    curv_hutch_se   = std_j(||u_j||^2) / sqrt(n) (standard error over probes, ddof=1)
    curv_hutch_norm = (1/n) sum_j ||u_j||        (what the reference code stores)
    curv_hutch_vhv  = (1/n) sum_j v_j . u_j      (unbiased for Tr(H))
    """
    with eval_mode(model):
        hvp_fn = make_hvp(model, x, labels, mask, hvp)
        sq, norm, vhv = [], [], []
        for j in range(n_probes):
            v = rademacher(sample_ids, j, x.shape[1:], seed, x.device, x.dtype)
            u = hvp_fn(v).flatten(1)
            sq.append(u.pow(2).sum(1))
            norm.append(u.norm(dim=1))
            vhv.append((v.flatten(1) * u).sum(1))
    sq, norm, vhv = torch.stack(sq), torch.stack(norm), torch.stack(vhv)  # (n_probes, N)
    se = sq.std(0) / math.sqrt(n_probes) if n_probes > 1 else torch.full_like(sq[0], float("nan"))
    return {
        "curv_hutch": sq.mean(0),
        "curv_hutch_se": se,
        "curv_hutch_norm": norm.mean(0),
        "curv_hutch_vhv": vhv.mean(0),
    }


def finite_difference(model, x, labels, mask, sample_ids, n_probes=10, step=1e-3, seed=0) -> dict:
    """Garg et al.'s estimate with d_j = grad L(x + h v_j) - grad L(x), v_j Rademacher:

    curv_fd    = (1/n) sum_j ||d_j||          (the reference score, without its 1/batch factor)
    curv_fd_sq = (1/n) sum_j ||d_j / h||^2    (-> Tr(H^2) as h -> 0 for smooth nets)

    On ReLU nets a step of h flips activation patterns, so d_j / h is not H v_j.
    """
    with eval_mode(model):
        g0 = input_grad(model, x, labels, mask)
        fd = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        fd_sq = torch.zeros_like(fd)
        for j in range(n_probes):
            v = rademacher(sample_ids, j, x.shape[1:], seed, x.device, x.dtype)
            d = _flat_norm(input_grad(model, x + step * v, labels, mask) - g0)
            fd += d
            fd_sq += (d / step) ** 2
    return {"curv_fd": fd / n_probes, "curv_fd_sq": fd_sq / n_probes}


def check_piecewise_linear(model: nn.Module) -> None:
    """Raise ValueError naming every submodule that is not piecewise linear in its input.

    Only modules are seen: a smooth function called functionally inside ``forward``
    (e.g. ``F.gelu``) cannot be detected here.
    """
    bad = [(name, type(m).__name__) for name, m in model.named_modules() if isinstance(m, NOT_PIECEWISE_LINEAR)]
    if bad:
        where = ", ".join(f"{name or '<root>'} ({kind})" for name, kind in bad)
        raise ValueError(
            f"exact_ggn is exact only for piecewise-linear networks, but the model contains {where}; "
            "use hutchinson, or pass allow_smooth=True to get only the Gauss-Newton part J^T A J"
        )


def input_jacobian(model, x, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(J, z): J[c, i] = d z_i[c] / d x_i for every seen class c (C x N x *x.shape[1:]),
    from one VJP per class (a backward of sum_i z_i[c]); z = the seen logits (N x C).

    A plain loop over classes: on CPU it beat is_grads_batched (vmap over the backward)."""
    x = x.detach().requires_grad_(True)
    z = masked_logits(model(x), mask)
    rows = [torch.autograd.grad(z[:, c].sum(), x, retain_graph=c < z.shape[1] - 1)[0] for c in range(z.shape[1])]
    return torch.stack(rows), z.detach()


def exact_ggn(model, x, labels, mask, allow_smooth=False, max_elements=2**26) -> dict:
    """Exact Tr(H^2) for piecewise-linear nets (ReLU, max/avg pool, eval BatchNorm, linear).

    Their logits are piecewise linear in x, so H = J^T A J with J = d(seen logits)/dx and
    A = diag(p) - p p^T (p = softmax over the seen classes). With the C x C Gram matrix
    K = J J^T:

    curv_exact = Tr(H^2) = Tr((A K)^2)
    trH_exact  = Tr(H)   = Tr(A K)

    No probes, no variance; cost: one forward and C backward passes (C = seen classes).
    J and K are formed in the model's dtype; the softmax and A K in float64, since A's entries
    cancel to O(1 - p_y) on confidently classified samples (float32 loses them below ~1e-4).
    ``labels`` are only checked against the mask (A does not depend on y). With
    ``allow_smooth=True`` a model with smooth nonlinearities is accepted and the result is
    only the Gauss-Newton part Tr((J^T A J)^2), not Tr(H^2).
    Samples are processed in chunks so that J holds at most ``max_elements`` numbers.
    """
    if not allow_smooth:
        check_piecewise_linear(model)
    masked_labels(labels, mask)  # raises if a sample's class is outside the mask
    per_sample = math.prod(x.shape[1:]) * int(mask.sum())
    chunk = max(1, max_elements // per_sample)
    curv, trace = [], []
    with eval_mode(model):
        for start in range(0, len(x), chunk):
            jac, z = input_jacobian(model, x[start : start + chunk], mask)
            jac = jac.flatten(2)  # (C, n, D)
            # A = diag(p) - pp^T cancels to O(1 - p_y) on confident samples: float64 from here on
            gram = torch.einsum("cnd,knd->nck", jac, jac).double()  # K, (n, C, C)
            p = torch.softmax(z.double(), dim=1)
            p_gram = torch.einsum("nc,nck->nk", p, gram)  # p^T K
            a_gram = p[:, :, None] * (gram - p_gram[:, None, :])  # A K = diag(p) K - p (p^T K)
            curv.append(torch.einsum("nab,nba->n", a_gram, a_gram))
            trace.append(a_gram.diagonal(dim1=1, dim2=2).sum(1))
    return {"curv_exact": torch.cat(curv), "trH_exact": torch.cat(trace)}


# --------------------------------------------------------------------------- cumulative sample loss
class CSLAccumulator:
    """Cumulative sample loss (Ravikumar et al. 2025): csl_i = sum over scorer epochs e of the
    training loss of sample i at its step in epoch e. Call :meth:`add` from the training loop
    with each batch's per-sample (unreduced) losses; ``n_csl`` counts the terms per sample."""

    def __init__(self):
        self._pos: dict[int, int] = {}
        self._sum = np.zeros(0)
        self._count = np.zeros(0, dtype=np.int64)

    def add(self, sample_ids, losses) -> None:
        ids = np.asarray(torch.as_tensor(sample_ids).cpu(), dtype=np.int64).ravel()
        values = np.asarray(torch.as_tensor(losses).detach().cpu(), dtype=np.float64).ravel()
        if len(ids) != len(values):
            raise ValueError(f"CSLAccumulator.add: {len(ids)} sample ids but {len(values)} losses")
        if not np.isfinite(values).all():
            raise FloatingPointError(f"CSLAccumulator.add: {np.sum(~np.isfinite(values))} non-finite losses")
        for i in ids:  # register new ids (cheap: a batch at a time)
            self._pos.setdefault(int(i), len(self._pos))
        if len(self._pos) > len(self._sum):
            grow = len(self._pos) - len(self._sum)
            self._sum = np.concatenate([self._sum, np.zeros(grow)])
            self._count = np.concatenate([self._count, np.zeros(grow, dtype=np.int64)])
        pos = np.fromiter((self._pos[int(i)] for i in ids), dtype=np.int64, count=len(ids))
        np.add.at(self._sum, pos, values)
        np.add.at(self._count, pos, 1)

    def to_frame(self) -> pd.DataFrame:
        """DataFrame(sample_id, csl, n_csl), sorted by sample_id."""
        frame = pd.DataFrame(
            {
                "sample_id": np.fromiter(self._pos, dtype=np.int64, count=len(self._pos)),
                "csl": self._sum,
                "n_csl": self._count,
            }
        )
        return frame.sort_values("sample_id", ignore_index=True)

    def state_dict(self) -> dict:
        frame = self.to_frame()
        return {k: frame[k].to_numpy() for k in frame.columns}

    def load_state_dict(self, state: dict) -> None:
        ids = np.asarray(state["sample_id"], dtype=np.int64)
        self._pos = {int(i): k for k, i in enumerate(ids)}
        self._sum = np.asarray(state["csl"], dtype=np.float64).copy()
        self._count = np.asarray(state["n_csl"], dtype=np.int64).copy()


# --------------------------------------------------------------------------- entry point
def curvature_scores(
    model,
    images,
    labels,
    sample_ids,
    mask,
    methods,
    n_probes=10,
    fd_step=1e-3,
    batch_size=256,
    seed=0,
    device="cpu",
    hvp="auto",
    allow_smooth=False,
) -> pd.DataFrame:
    """Score every sample with the requested methods; one row per sample, input order kept.

    images: float tensor N x C x H x W, already normalized; labels: N class indices;
    sample_ids: N unique ints (they seed the probes); mask: boolean over output units.
    Columns: sample_id, then per method
      exact_ggn         -> curv_exact, trH_exact
      hutchinson        -> curv_hutch, curv_hutch_se, curv_hutch_norm, curv_hutch_vhv
      finite_difference -> curv_fd, curv_fd_sq
    The model is moved to ``device`` and scored in its parameter dtype, in eval mode.
    """
    methods = list(methods)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be distinct names from {METHODS}, got {methods}")
    hvp = DEFAULT_HVP if hvp == "auto" else hvp
    if hvp not in HVP_MODES:
        raise ValueError(f"unknown hvp mode {hvp!r}; choose 'auto' or one of {HVP_MODES}")
    if "exact_ggn" in methods and not allow_smooth:
        check_piecewise_linear(model)  # fail before any work is done

    images = torch.as_tensor(images)
    if not torch.is_floating_point(images):
        raise ValueError(f"images must be normalized floats, got dtype {images.dtype}")
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    ids = np.asarray(sample_ids, dtype=np.int64)
    if not (len(images) == len(labels) == len(ids)):
        raise ValueError(f"images, labels and sample_ids differ in length: {len(images)}, {len(labels)}, {len(ids)}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"sample_ids contain {len(ids) - len(np.unique(ids))} duplicates")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or inf")

    model.to(device)
    dtype = next(model.parameters()).dtype
    mask = torch.as_tensor(mask, dtype=torch.bool, device=device)
    log.info(
        "scoring %d samples with %s (n_probes=%d, fd_step=%g, batch_size=%d, seed=%d, hvp=%s, device=%s, dtype=%s)",
        len(ids), ",".join(methods), n_probes, fd_step, batch_size, seed, hvp, device, dtype,
    )  # fmt: skip

    columns: dict[str, list] = {}
    seconds = dict.fromkeys(methods, 0.0)
    for start in tqdm(range(0, len(ids), batch_size), desc="curvature", unit="batch", mininterval=10):
        x = images[start : start + batch_size].to(device=device, dtype=dtype)
        y = labels[start : start + batch_size].to(device)
        batch_ids = ids[start : start + batch_size]
        for method in methods:
            t0 = time.perf_counter()
            if method == "exact_ggn":
                out = exact_ggn(model, x, y, mask, allow_smooth=allow_smooth)
            elif method == "hutchinson":
                out = hutchinson(model, x, y, mask, batch_ids, n_probes, seed, hvp)
            else:
                out = finite_difference(model, x, y, mask, batch_ids, n_probes, fd_step, seed)
            seconds[method] += time.perf_counter() - t0
            for name, value in out.items():
                columns.setdefault(name, []).append(value.detach().to("cpu", torch.float64).numpy())

    frame = pd.DataFrame({"sample_id": ids, **{name: np.concatenate(parts) for name, parts in columns.items()}})
    for name in frame.columns[1:]:
        bad = ~np.isfinite(frame[name].to_numpy())
        if bad.any() and not (name == "curv_hutch_se" and n_probes == 1):
            raise FloatingPointError(f"{name}: {bad.sum()} non-finite scores (e.g. sample {ids[bad][0]})")
    log.info("done: " + ", ".join(f"{m} {s:.1f}s" for m, s in seconds.items()))
    return frame
