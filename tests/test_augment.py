"""Batched augmentation: equals per-sample reference transforms where they are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from memplast import augment


def test_normalize_matches_formula():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]
    out = augment.normalize(x, mean, std)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ref)


def _draws(n, p, seed, flip):
    g = torch.Generator().manual_seed(seed)
    dy = torch.randint(-p, p + 1, (n,), generator=g)
    dx = torch.randint(-p, p + 1, (n,), generator=g)
    flips = torch.rand(n, generator=g) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return dy, dx, flips


def test_crop_and_flip_equal_reflect_pad_then_slice():
    x = torch.randn(16, 3, 32, 32)
    out = augment.augment(x, torch.Generator().manual_seed(5), crop_padding=4, flip=True, rotation_degrees=0)
    dy, dx, flips = _draws(16, 4, 5, True)
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    for i in range(16):
        ref = padded[i, :, 4 + dy[i] : 4 + dy[i] + 32, 4 + dx[i] : 4 + dx[i] + 32]
        if flips[i]:
            ref = ref.flip(-1)
        torch.testing.assert_close(out[i], ref)


def test_rotation_preserves_centre_and_fills_corners_with_zero():
    x = torch.ones(64, 1, 32, 32)
    out = augment.augment(x, torch.Generator().manual_seed(0), crop_padding=0, flip=False, rotation_degrees=15)
    assert (out[:, :, 12:20, 12:20] == 1).all()
    rotated = (out[:, 0, 0, 0] == 0) | (out[:, 0, 0, -1] == 0) | (out[:, 0, -1, 0] == 0)
    assert rotated.float().mean() > 0.5  # most angles are large enough to uncover a corner
    x = torch.randn(8, 3, 32, 32)
    zero_angle = augment.augment(x, torch.Generator().manual_seed(0), crop_padding=0, flip=False, rotation_degrees=1e-9)
    torch.testing.assert_close(zero_angle, x)


def test_augmentation_is_seeded_and_per_sample():
    x = torch.randn(32, 3, 32, 32)
    a = augment.augment(x, torch.Generator().manual_seed(1))
    b = augment.augment(x, torch.Generator().manual_seed(1))
    c = augment.augment(x, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    same = augment.augment(x[:1].repeat(32, 1, 1, 1), torch.Generator().manual_seed(1))
    assert len({tuple(np.round(s.flatten()[:50].numpy(), 4)) for s in same}) > 10  # different draws per sample


def _reference_pipeline(x, seed, p, flip, degrees):
    """Per image, as the reference's transforms: reflect-pad crop, horizontal flip, then
    torchvision's rotate (nearest, fill 0), with the draws ``augment`` makes from ``seed``."""
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode

    n = len(x)
    dy, dx, flips = _draws(n, p, seed, flip)
    g = torch.Generator().manual_seed(seed)
    torch.randint(-p, p + 1, (n,), generator=g), torch.randint(-p, p + 1, (n,), generator=g)
    if flip:
        torch.rand(n, generator=g)
    angle = torch.rand(n, generator=g) * degrees
    padded = F.pad(x, (p, p, p, p), mode="reflect") if p else x
    h, w = x.shape[-2:]
    out = []
    for i in range(n):
        img = padded[i, :, p + dy[i] : p + dy[i] + h, p + dx[i] : p + dx[i] + w]
        img = img.flip(-1) if flips[i] else img
        out.append(tvf.rotate(img, float(angle[i]), interpolation=InterpolationMode.NEAREST, fill=0))
    return torch.stack(out)


def test_rotation_turns_the_same_way_as_torchvision_rotate():
    x = torch.randn(64, 3, 32, 32)
    out = augment.augment(x, torch.Generator().manual_seed(3), crop_padding=0, flip=False, rotation_degrees=15)
    ref = _reference_pipeline(x, 3, 0, False, 15)
    assert (out == ref).float().mean() == 1.0
    # the opposite direction (the old bug) disagrees on most rotated pixels
    mirrored = augment.augment(
        x.flip(-1), torch.Generator().manual_seed(3), crop_padding=0, flip=False, rotation_degrees=15
    ).flip(-1)  # = rotation by -angle
    assert (mirrored == ref).float().mean() < 0.5


def test_crop_flip_rotate_compose_as_the_reference_transforms():
    x = torch.randn(64, 3, 32, 32)
    out = augment.augment(x, torch.Generator().manual_seed(4), crop_padding=4, flip=True, rotation_degrees=15)
    ref = _reference_pipeline(x, 4, 4, True, 15)
    assert (out == ref).float().mean() > 0.999


def test_reference_test_augmentation_changes_test_accuracy_only(tmp_path, demo_config, digits, one_thread):
    import copy

    from test_train import _run, _weights

    cfg = copy.deepcopy(demo_config)
    cfg["protocol"].update(epochs_per_task=2, lr_milestones=[])
    cfg["dataset"]["augmentation"].update(rotation_degrees=15)
    clean, _ = _run(tmp_path / "none", cfg, digits, 0)
    cfg["protocol"]["test_augmentation"] = "reference"
    augmented, _ = _run(tmp_path / "ref", cfg, digits, 0)
    for col in ("train_loss", "val_loss", "val_acc"):
        np.testing.assert_array_equal(clean[col].to_numpy(), augmented[col].to_numpy())
    assert not np.array_equal(clean["test_loss"].to_numpy(), augmented["test_loss"].to_numpy())
    a, b = _weights(tmp_path / "none" / "t0" / "end.pt"), _weights(tmp_path / "ref" / "t0" / "end.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
