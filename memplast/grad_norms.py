"""Per-sample gradient norms ||d loss_i / d theta|| of a whole batch, from layer hooks (design §4).

One backward pass of sum_i loss_i: hooks on every Conv2d / Linear / BatchNorm layer receive the
layer's input a_i and output gradient b_i and turn them into ||d loss_i / d W||^2 per sample
(formulas in ``_linear_sqnorms``, ``_conv_sqnorms``, ``_bn_sqnorms``); per-sample gradients exist at
most for one layer (and one chunk of samples) at a time.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn

_BN = nn.modules.batchnorm._BatchNorm


def _linear_sqnorms(layer: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> tuple:
    """Per-sample squared gradient norms of a linear layer out = W a + c with output gradient b:
    grad_W loss_i = b_i a_i^T, so ||grad_W||^2 = ||a_i||^2 ||b_i||^2 and ||grad_c||^2 = ||b_i||^2."""
    if a.dim() != 2:
        raise NotImplementedError(f"per-sample gradient norms need 2-D Linear inputs, got {a.dim()}-D")
    b2 = b.square().sum(1)
    return a.square().sum(1) * b2, b2


def _conv_sqnorms(conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor, max_elements: int = 2**25) -> tuple:
    """Per-sample squared gradient norms of a convolution with unfolded input U_i ((C_in k k) x P,
    P output positions) and output gradient B_i (C_out x P): grad_W loss_i = B_i U_i^T and
    grad_bias loss_i = B_i 1. ||B_i U_i^T||^2 is formed from the per-sample weight gradients (one
    grouped weight-gradient convolution with the batch as groups, cost ~ P C_out C_in k^2) or,
    when about as cheap or cheaper (few positions, many channels), as the "ghost norm"
    sum_pq (B_i^T B_i)_pq (U_i^T U_i)_pq (cost P^2 (C_out + C_in k^2))."""
    bias2 = b.sum((2, 3)).square().sum(1)
    n, c_out, p = b.shape[0], b.shape[1], b.shape[2] * b.shape[3]
    d = a.shape[1] * conv.kernel_size[0] * conv.kernel_size[1]
    # 1.5: grouped weight-gradient convolutions lose efficiency on small maps (benchmarks/bench_probes.py)
    ghost = p * (c_out + d) < 1.5 * c_out * d
    per_sample = p * (p + d) if ghost else c_out * d + a[0].numel() + b[0].numel()
    chunk = max(1, max_elements // per_sample)
    weight2 = []
    for s in range(0, n, chunk):  # chunks only bound the memory
        ac, bc = a[s : s + chunk], b[s : s + chunk]
        m = len(ac)
        if ghost:
            u = F.unfold(ac, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
            bf = bc.flatten(2)
            weight2.append(((bf.transpose(1, 2) @ bf) * (u.transpose(1, 2) @ u)).sum((1, 2)))
        else:  # sample j of the chunk = group j: the weight gradient is (m C_out) x C_in x k x k
            gw = torch.nn.grad.conv2d_weight(
                ac.reshape(1, -1, *ac.shape[2:]),
                (m * c_out, a.shape[1], *conv.kernel_size),
                bc.reshape(1, -1, *bc.shape[2:]),
                conv.stride,
                conv.padding,
                conv.dilation,
                groups=m,
            )
            weight2.append(gw.reshape(m, -1).square().sum(1))
    return torch.cat(weight2), bias2


def _bn_sqnorms(bn: _BN, a: tuple, b: torch.Tensor) -> tuple:
    """Per-sample squared gradient norms of BatchNorm with fixed statistics, out = gamma xhat + beta,
    xhat = (a - mean) / sqrt(var + eps): grad_gamma_c = sum_p b_ic(p) xhat_ic(p), grad_beta_c = sum_p b_ic(p).
    ``a`` is (input, mean, var) as seen in the forward pass."""
    a, mean, var = a
    shape = (1, -1) + (1,) * (a.dim() - 2)
    xhat = (a - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    dims = tuple(range(2, a.dim()))
    gamma = (b * xhat).sum(dims) if dims else b * xhat
    beta = b.sum(dims) if dims else b
    return gamma.square().sum(1), beta.square().sum(1)


_SQNORMS = ((nn.Conv2d, _conv_sqnorms), (nn.Linear, _linear_sqnorms), (_BN, _bn_sqnorms))


class GradNormHooks:
    """Forward hooks on every layer with trainable parameters. While active, a backward pass of
    sum_i loss_i (in any direction that reaches the layers, e.g. w.r.t. the input) adds every
    layer's per-sample squared parameter-gradient norm into ``self.sq`` (N)."""

    def __init__(self, model: nn.Module):
        self.layers = []  # (module, sqnorm fn, weight trainable, bias trainable)
        for name, mod in model.named_modules():
            own = {n: p.requires_grad for n, p in mod.named_parameters(recurse=False)}
            if not any(own.values()):
                continue
            fn = next((f for cls, f in _SQNORMS if isinstance(mod, cls)), None)
            if fn is None or set(own) - {"weight", "bias"}:
                raise NotImplementedError(
                    f"per-sample gradient norms support Conv2d, Linear and BatchNorm layers; "
                    f"{name or 'the model'} ({type(mod).__name__}) has trainable parameters {sorted(own)}"
                )
            conv = isinstance(mod, nn.Conv2d)
            if conv and (mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod.padding, str)):
                raise NotImplementedError(f"{name}: only groups=1 convolutions with numeric zero padding are supported")
            if isinstance(mod, _BN) and mod.running_mean is None:
                raise NotImplementedError(f"{name}: BatchNorm without running statistics is not supported")
            self.layers.append((mod, fn, own.get("weight", False), own.get("bias", False)))
        self.sq = None
        self.handles = []
        self.seen = set()

    @contextlib.contextmanager
    def active(self, n: int, dtype, device):
        """Hooks registered for one forward + backward of a batch of ``n`` samples."""
        self.sq = torch.zeros(n, dtype=dtype, device=device)
        self.seen = set()
        self.handles = [spec[0].register_forward_hook(functools.partial(self._forward, spec)) for spec in self.layers]
        try:
            yield self
        finally:
            for h in self.handles:
                h.remove()
            self.handles = []

    def _forward(self, spec, mod, inputs, out):
        if mod in self.seen:  # a shared layer's gradient is a sum over its uses: norms do not add up
            raise NotImplementedError(f"{type(mod).__name__} layer called twice in one forward pass")
        self.seen.add(mod)
        if out.requires_grad:
            a = inputs[0].detach()
            if isinstance(mod, _BN):  # the statistics in use now (functional_call swaps them back later)
                a = (a, mod.running_mean.detach(), mod.running_var.detach())
            out.register_hook(functools.partial(self._backward, spec, a))

    def _backward(self, spec, a, grad):
        mod, fn, w, b = spec
        w2, b2 = fn(mod, a, grad.detach())
        self.sq += w2 * w + b2 * b
