"""Networks: the reference ResNet-18 variant (Dohare et al.) and a small CNN for 8x8 digits.

Both return logits, or with ``return_acts=True`` a :class:`Forward` holding the logits,
every ReLU output (conv maps N x C x H x W, or N x D for fully connected units) and the
penultimate features. Both are piecewise linear (ReLU, pooling, BatchNorm, linear), which
the exact curvature (``curvature.exact_ggn``) relies on.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Forward(NamedTuple):
    logits: torch.Tensor
    acts: list  # every ReLU output, in forward order
    features: torch.Tensor  # penultimate features (input of the linear head)


def init_reference(model: nn.Module) -> None:
    """Reference init: conv kaiming-normal (fan-in, ReLU gain), linear kaiming-normal with
    linear gain, biases 0, BatchNorm weight 1 and bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _Recorder:
    """Applies ReLU and, when recording, keeps its output."""

    def __init__(self, record: bool):
        self.acts = [] if record else None

    def __call__(self, x):
        x = F.relu(x)
        if self.acts is not None:
            self.acts.append(x)
        return x


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=True)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=True)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=True), nn.BatchNorm2d(cout))

    def forward(self, x, relu):
        out = relu(self.bn1(self.conv1(x)))
        return relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool (CIFAR variant), bias on every conv."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3, width: int = 64):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=True)
        self.bn1 = nn.BatchNorm2d(w)
        blocks, cin = [], w
        for cout, stride in ((w, 1), (w, 1), (2 * w, 2), (2 * w, 1), (4 * w, 2), (4 * w, 1), (8 * w, 2), (8 * w, 1)):
            blocks.append(BasicBlock(cin, cout, stride))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(8 * w, num_classes)
        init_reference(self)

    def forward(self, x, return_acts: bool = False):
        relu = _Recorder(return_acts)
        out = relu(self.bn1(self.conv1(x)))
        for block in self.blocks:
            out = block(out, relu)
        features = F.adaptive_avg_pool2d(out, 1).flatten(1)
        logits = self.fc(features)
        return Forward(logits, relu.acts, features) if return_acts else logits


class SmallCNN(nn.Module):
    """Three conv+BN+ReLU layers with one max-pool, global average pool, one hidden ReLU
    layer (the penultimate features) and a linear head; sized for 8x8 digits."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(4 * w)
        self.hidden = nn.Linear(4 * w, 4 * w)
        self.fc = nn.Linear(4 * w, num_classes)
        init_reference(self)

    def forward(self, x, return_acts: bool = False):
        relu = _Recorder(return_acts)
        out = relu(self.bn1(self.conv1(x)))
        out = F.max_pool2d(relu(self.bn2(self.conv2(out))), 2)
        out = relu(self.bn3(self.conv3(out)))
        features = relu(self.hidden(F.adaptive_avg_pool2d(out, 1).flatten(1)))
        logits = self.fc(features)
        return Forward(logits, relu.acts, features) if return_acts else logits


ARCHS = {"resnet18": ResNet18, "small_cnn": SmallCNN}


def build_model(arch: str, num_classes: int, in_channels: int, width: int) -> nn.Module:
    """Build a freshly initialised network by name (``model.arch`` in config)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown model.arch {arch!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[arch](num_classes=num_classes, in_channels=in_channels, width=width)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Every submodule in eval mode; each one's previous flag is restored on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def head(model: nn.Module) -> nn.Linear:
    """The linear classification head (reset by the ``head_reset`` algorithm)."""
    return model.fc


class HiddenLayer(NamedTuple):
    """A layer of hidden units for continual backprop: ``layer`` (conv or linear) makes the units,
    ``bn`` normalises them (or None), ``next`` consumes them (its weight's dim 1 indexes the units),
    and ``act`` indexes their ReLU output in :attr:`Forward.acts`."""

    name: str
    layer: nn.Module
    bn: nn.Module | None
    next: nn.Module
    act: int


def hidden_layers(model: nn.Module) -> list[HiddenLayer]:
    """The hidden layers of the reference's ``res_gnt`` mapping, in forward order.

    ResNet-18: the stem conv and both convs of every block (17 non-downsample convs) with their
    BatchNorm; the next layer is the following conv (the next block's first conv after a block's
    second conv) or the head. The shortcut convs are not hidden layers. SmallCNN: conv1-3 with
    their BatchNorm and the hidden linear layer; next layer conv2, conv3, hidden, head.
    """
    if isinstance(model, ResNet18):
        convs = [("conv1", model.conv1, model.bn1)]
        for i, b in enumerate(model.blocks):
            convs += [(f"blocks.{i}.conv1", b.conv1, b.bn1), (f"blocks.{i}.conv2", b.conv2, b.bn2)]
        nexts = [c for _, c, _ in convs[1:]] + [model.fc]
        return [HiddenLayer(n, c, bn, nx, i) for i, ((n, c, bn), nx) in enumerate(zip(convs, nexts))]
    if isinstance(model, SmallCNN):
        return [
            HiddenLayer("conv1", model.conv1, model.bn1, model.conv2, 0),
            HiddenLayer("conv2", model.conv2, model.bn2, model.conv3, 1),
            HiddenLayer("conv3", model.conv3, model.bn3, model.hidden, 2),
            HiddenLayer("hidden", model.hidden, None, model.fc, 3),
        ]
    raise ValueError(f"no hidden-layer mapping for {type(model).__name__}; add one to models.hidden_layers")


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches) -> int:
    """Replace every BatchNorm's running statistics by their exact average over ``batches``
    (an iterable of input tensors, in train mode, no gradients); returns the number of samples.
    Running means/variances are the equal-weight average of the per-batch statistics
    (``momentum=None``), so the last batches of a sorted epoch no longer dominate them."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    saved = [(m, m.momentum) for m in bns]
    flags = [(m, m.training) for m in model.modules()]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    n = 0
    try:
        for x in batches:
            model(x)
            n += len(x)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        for m, training in flags:
            m.training = training
    return n


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


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample over the seen classes, -log softmax(z[mask])_y, not averaged.
    Unseen-class logits take no part, so they receive no gradient. ``mask`` is a boolean mask or
    :class:`SeenClasses` (same values, no host synchronisation)."""
    return F.cross_entropy(masked_logits(logits, mask), masked_labels(labels, mask), reduction="none")


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, model: nn.Module, meta: dict, provenance: dict, **extra) -> None:
    """Weights (with BN buffers) plus what is needed to rebuild the model, atomically."""
    import json

    from memplast.io import atomic_path

    payload = {"model": model.state_dict(), "meta": meta, "provenance_json": json.dumps(provenance, default=str)}
    payload.update(extra)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint written by :func:`save_checkpoint`; returns (model, meta)."""
    payload = torch.load(path, map_location=device, weights_only=True)
    meta = payload["meta"]
    model = build_model(meta["arch"], meta["num_classes"], meta["in_channels"], meta["width"]).to(device)
    model.load_state_dict(payload["model"])
    model.eval()
    return model, meta
