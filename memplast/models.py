"""Networks: the reference ResNet-18 variant (Dohare et al.) and a small CNN for 8x8 digits.

Both return logits, or with ``return_acts=True`` a :class:`Forward` holding the logits,
every ReLU output (conv maps N x C x H x W, or N x D for fully connected units) and the
penultimate features. Both are piecewise linear (ReLU, pooling, BatchNorm, linear), which
the exact curvature (``curvature.exact_ggn``) relies on.
"""

from __future__ import annotations

import contextlib
import copy
from typing import NamedTuple

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


def reinit(module: nn.Module, seed: int) -> None:
    """Re-draw a module's parameters with the reference init from ``seed``: drawn on the CPU
    (a copy of the module) and copied to the module's device, so the same on any device."""
    cpu = copy.deepcopy(module).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)  # CPU only: CUDA generators untouched
        init_reference(cpu)
    with torch.no_grad():
        for p, q in zip(module.parameters(), cpu.parameters(), strict=True):
            p.copy_(q)


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
