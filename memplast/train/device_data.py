"""The prepared dataset on the training device: uint8 images, normalised and augmented per batch."""

from __future__ import annotations

import numpy as np
import torch

from memplast import augment
from memplast.data import Prepared
from memplast.device import to_device


class DeviceData:
    """The prepared dataset as uint8 tensors on the training device; batches are normalized
    (and optionally augmented) on the fly, from row indices already on the device."""

    def __init__(self, prepared: Prepared, device: torch.device):
        self.p = prepared
        self.device = device
        self.images = torch.as_tensor(prepared.images).to(device)
        self.labels = torch.as_tensor(prepared.labels).to(device)
        self.mean, self.std = prepared.mean, prepared.std
        self._mean = to_device(np.asarray(prepared.mean, dtype=np.float32), device).view(1, -1, 1, 1)
        self._std = to_device(np.asarray(prepared.std, dtype=np.float32), device).view(1, -1, 1, 1)

    def batches(self, rows, batch_size: int, generator=None, aug: dict | None = None):
        """Inputs of ``rows`` in consecutive batches (for BatchNorm re-estimation)."""
        idx = self.index(rows)
        for start in range(0, len(rows), batch_size):
            yield self.take(idx[start : start + batch_size], generator, aug)[0]

    def index(self, rows) -> torch.Tensor:
        """Row numbers on the device (one non-blocking copy, e.g. once per epoch)."""
        return to_device(np.asarray(rows, dtype=np.int64), self.device)

    def take(self, idx: torch.Tensor, generator=None, aug: dict | None = None):
        """Normalized (augmented) images and labels of the rows ``idx`` (a device tensor)."""
        x = augment.normalize(self.images[idx], self._mean, self._std)
        if aug is not None:
            x = augment.augment(x, generator, aug["crop_padding"], aug["flip"], aug["rotation_degrees"])
        return x, self.labels[idx]

    def batch(self, rows, generator=None, aug: dict | None = None):
        return self.take(self.index(rows), generator, aug)

    def rows(self, split: str, classes) -> np.ndarray:
        return np.flatnonzero((self.p.split == split) & np.isin(self.p.labels, classes))

    def check_labels(self, rows: np.ndarray, seen) -> None:
        """On the host: every row's class is among the seen ones (no device synchronisation)."""
        if not np.isin(self.p.labels[rows], seen.classes).all():
            raise ValueError("a label is outside the class mask: the sample's class has not been seen")
