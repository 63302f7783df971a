"""The one class-masked loss (memplast.masks.per_sample_loss) and the mask-based probe quantities, by hand."""

from __future__ import annotations

import math

import torch

from memplast import probes
from memplast.masks import per_sample_loss, row_masks, seen_classes


def close(a, b, tol=1e-9):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)


def test_masks_change_the_loss_exactly_as_by_hand():
    z = torch.tensor([[1.0, 2.0, 3.0, 0.5], [0.0, -1.0, 4.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    two = torch.tensor([True, True, False, False])
    three = torch.tensor([True, True, True, False])
    per_row = torch.stack([two, three])
    close(per_sample_loss(z, y, per_row)[0], torch.tensor(math.log(math.e + math.e**2) - 1.0, dtype=torch.float64))
    close(
        per_sample_loss(z, y, per_row)[1],
        torch.tensor(math.log(1 + math.exp(-1) + math.exp(4)) - 4.0, dtype=torch.float64),
    )
    close(per_sample_loss(z, y, row_masks(three, 2)), per_sample_loss(z, y, three))
    q = probes.mask_quantities(z, y, per_row)
    close(q["margin"], torch.tensor([1.0 - 2.0, 4.0 - 0.0], dtype=torch.float64))
    close(q["correct"], torch.tensor([0.0, 1.0], dtype=torch.float64))
    close(
        q["confidence"],
        torch.tensor(
            [math.e / (math.e + math.e**2), math.exp(4) / (1 + math.exp(-1) + math.exp(4))], dtype=torch.float64
        ),
    )
    q = probes.mask_quantities(z, y, row_masks(two, 2))  # label 2 is outside {0, 1}
    assert math.isnan(q["loss"][1]) and math.isnan(q["margin"][1]) and math.isnan(q["correct"][1])
    assert math.isnan(probes.margin(z, y, torch.tensor([[True, False, False, False]] * 2))[0])  # no other class


def test_shared_and_per_row_masks_give_the_same_loss_and_gradient():
    """One mask for all samples (SeenClasses: columns selected, training) and the same mask per row
    (log-sum-exp, probes): the same loss and the same zero gradient on unseen classes."""
    z = torch.randn(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = torch.tensor([1, 3, 5, 5, 1, 3])
    seen = seen_classes([1, 3, 5], 10)
    shared = per_sample_loss(z, y, seen)
    (g_shared,) = torch.autograd.grad(shared.sum(), z)
    rows = per_sample_loss(z, y, row_masks(seen.mask, 6))
    (g_rows,) = torch.autograd.grad(rows.sum(), z)
    close(shared, rows, tol=1e-12)
    close(g_shared, g_rows, tol=1e-12)
    assert (g_rows[:, ~seen.mask] == 0).all()
