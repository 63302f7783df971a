"""Shared fixtures: the validated demo config and the prepared digits dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
