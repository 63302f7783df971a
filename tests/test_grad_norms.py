"""Per-sample gradient norms from layer hooks (memplast.grad_norms) against per-sample autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memplast import grad_norms


def close(a, b, tol=1e-9):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               rtol=tol, atol=tol)  # fmt: skip


@pytest.mark.parametrize(
    "stride,padding,dilation,cin,cout,hw",
    [
        (1, 1, 1, 2, 3, 6),  # P large: per-sample gradient formed directly
        (2, 0, 1, 3, 2, 5),
        (1, 2, 2, 8, 16, 2),  # P small, many channels: ghost norm
    ],
)
def test_conv_sqnorms_both_paths(stride, padding, dilation, cin, cout, hw):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, 3, stride, padding, dilation).double()
    a = torch.randn(5, cin, hw, hw, dtype=torch.float64)
    out = conv(a)
    b = torch.randn_like(out)
    w2, b2 = grad_norms._conv_sqnorms(conv, a, b)
    for i in range(5):
        gw, gb = torch.autograd.grad((conv(a[i : i + 1]) * b[i : i + 1]).sum(), [conv.weight, conv.bias])
        close(w2[i], gw.square().sum())
        close(b2[i], gb.square().sum())
    w2_chunked, _ = grad_norms._conv_sqnorms(conv, a, b, max_elements=1)  # one sample per chunk
    close(w2_chunked, w2)
