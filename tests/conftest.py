"""Shared fixtures: the validated demo config and the prepared digits dataset."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from memplast import config as mpconfig
from memplast import data

ROOT = Path(__file__).resolve().parent.parent

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def demo_config() -> dict:
    return mpconfig.load(ROOT / "config.yaml", ROOT / "config" / "demo.yaml")


@pytest.fixture(scope="session")
def paper_config() -> dict:
    return mpconfig.load(ROOT / "config.yaml")


@pytest.fixture(scope="session")
def digits(demo_config) -> data.Prepared:
    return data.prepare(demo_config["dataset"])


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: OpenMP threads only add overhead (and stall on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize_bn(model, seed=0):
    """Non-trivial BatchNorm affine parameters and running statistics (returns the model)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            with torch.no_grad():
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g, dtype=m.weight.dtype))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g, dtype=m.bias.dtype))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g, dtype=m.running_mean.dtype))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g, dtype=m.running_var.dtype))
    return model


def ensure_debian_package(executable: str, package: str) -> str:
    """Path of ``executable``, installing Debian's ``package`` with apt when it is missing;
    skip the calling test with the reason when that is impossible (no root, no apt, no network)."""
    found = shutil.which(executable)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"`{executable}` is missing and installing it needs root and apt: apt-get install {package}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", package]):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if out.returncode != 0:
            pytest.skip(f"`{executable}` is missing and `{' '.join(cmd)}` failed: {out.stderr.strip()[-300:]}")
    found = shutil.which(executable)
    if not found:
        pytest.skip(f"apt installed {package} but `{executable}` is still not on PATH")
    return found
