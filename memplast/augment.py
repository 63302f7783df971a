"""Batched input pipeline: the whole dataset stays a uint8 tensor; batches are normalized
and augmented on the device with one affine warp, with no per-sample Python work.

The augmentation of the reference (Dohare et al.) is RandomCrop(32, padding=4,
padding_mode="reflect"), RandomHorizontalFlip and RandomRotation((0, 15)) (nearest, fill 0)
applied per image. Here all three compose into one sampling grid per batch:
for output pixel p, rotate about the image centre, mirror if flipped, shift by the crop
offset, reflect indices that leave the image (reflect padding), and read the nearest
pixel; pixels rotated in from outside the crop window are 0 (as RandomRotation's fill).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from memplast.device import to_device


def normalize(images_u8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 (x / 255 - mean) / std per channel. ``mean`` and ``std`` may
    be float32 tensors already on the images' device (no copy per batch)."""
    if not (isinstance(mean, torch.Tensor) and mean.device == images_u8.device):
        mean = torch.as_tensor(mean, dtype=torch.float32, device=images_u8.device)
    if not (isinstance(std, torch.Tensor) and std.device == images_u8.device):
        std = torch.as_tensor(std, dtype=torch.float32, device=images_u8.device)
    mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    return (images_u8.float() / 255.0 - mean) / std


def _reflect(u: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect pixel coordinates into [0, size-1] without repeating the edge (F.pad 'reflect')."""
    last = size - 1
    u = u.abs()
    return last - (last - u).abs()


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    crop_padding: int = 4,
    flip: bool = True,
    rotation_degrees: float = 15.0,
) -> torch.Tensor:
    """Randomly crop (reflect padding), flip horizontally and rotate a float batch N x C x H x W.

    Per sample: crop offset (dy, dx) uniform in {-p..p}^2, flip with probability 1/2,
    rotation angle uniform in [0, rotation_degrees]. Draws come from ``generator``
    (on the CPU, so the result is reproducible on any device), moved in one non-blocking copy.
    """
    n, _, h, w = x.shape
    if crop_padding == 0 and not flip and rotation_degrees == 0:
        return x
    p = crop_padding
    dy = torch.randint(-p, p + 1, (n,), generator=generator).float()
    dx = torch.randint(-p, p + 1, (n,), generator=generator).float()
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    angle = torch.rand(n, generator=generator) * math.radians(rotation_degrees)
    dy, dx, flips, angle = to_device(torch.stack((dy, dx, flips.float(), angle)), x.device)
    flips = flips > 0.5

    # Output pixel grid (pixel units, centred), rotated by each sample's angle.
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ys = torch.arange(h, device=x.device, dtype=torch.float32) - cy
    xs = torch.arange(w, device=x.device, dtype=torch.float32) - cx
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    cos, sin = angle.cos().view(n, 1, 1), angle.sin().view(n, 1, 1)
    # Source of each output pixel: counter-clockwise rotation by angle as torchvision's
    # rotate(img, angle) (image rows point down, so the inverse map is this rotation matrix)
    ry = cos * gy + sin * gx + cy  # coordinates in the (flipped, cropped) image
    rx = -sin * gy + cos * gx + cx
    inside = (ry.round() >= 0) & (ry.round() <= h - 1) & (rx.round() >= 0) & (rx.round() <= w - 1)
    rx = torch.where(flips.view(n, 1, 1), (w - 1) - rx, rx)
    # The crop window starts at offset (p + d) in the padded image, i.e. d in the original.
    sy = _reflect(ry + dy.view(n, 1, 1), h)
    sx = _reflect(rx + dx.view(n, 1, 1), w)
    grid = torch.stack((sx / (w - 1) * 2 - 1, sy / (h - 1) * 2 - 1), dim=-1)
    out = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=True)
    return out * inside.unsqueeze(1)
