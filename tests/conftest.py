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


class Killed(KeyboardInterrupt):
    """Raised by :func:`run_one_task`'s ``stop`` hook after an epoch, as a kill would."""


def run_one_task(tmp, cfg, prepared, task, prev=None, algorithm="base", ordering="random", alpha=0.0, memo=None,
                 stop=None, name=None, ckpt_epochs=None, window=0, seed=0, resume=None, on_epoch=None, prov=None):  # fmt: skip
    """Train task ``task`` of a run of ``cfg`` on ``prepared`` (every training sample kept) into ``tmp``:
    end state ``t<task>/end.pt``, checkpoints ``t<task>/e<g>.pt`` at the global epochs ``ckpt_epochs``
    (default: the task's last), ``window`` before-window slots and the live epoch. ``stop``: the
    job is killed (:class:`Killed`) after that global epoch; ``on_epoch(row)`` is called after every
    epoch before that. Returns (metrics, checkpoints)."""
    from memplast import data as mpdata
    from memplast.train import RunSpec, TaskPaths, run_task

    E = cfg["protocol"]["epochs_per_task"]
    epochs = [task * E + E] if ckpt_epochs is None else ckpt_epochs
    d = Path(tmp) / f"t{task}"
    paths = TaskPaths(
        end=str(d / "end.pt"),
        checkpoints={g: str(d / f"e{g}.pt") for g in epochs},
        metrics=str(d / "m.parquet"),
        order_log=str(d / "o.parquet"),
        resume=resume or str(Path(tmp) / "resume" / f"t{task}.pt"),
        prev_state=prev,
        window=[str(d / f"best-{j}.pt") for j in range(window)],
        live=str(d / "live.pt") if window else None,
    )
    train_ids = prepared.sample_id[prepared.split == "train"]
    spec = RunSpec(name or f"order0/none/random/none/{algorithm}", seed, mpdata.class_order(seed, 10), task,
                   train_ids, ordering, alpha, algorithm, memo=memo)  # fmt: skip

    def kill_after(row):
        if on_epoch is not None:
            on_epoch(row)
        if stop is not None and row["epoch"] >= stop:
            raise Killed(f"stopped after epoch {row['epoch']}")

    return run_task(spec, prepared, cfg, paths, prov or {"test": 1}, on_epoch=kill_after), paths.checkpoints


def run_scorer(tmp, cfg, prepared, stop=None, on_epoch=None, resume=None):
    """Train the memo scorer of ``cfg`` (``memo.scorer``; runtime settings from ``protocol``) on
    ``prepared`` into ``tmp``: checkpoints ``scorer/e<g>.pt`` at its grid epochs, ``scorer/m.parquet``,
    ``scorer/csl.parquet``, resume state ``resume/scorer.pt``. ``stop``: killed (:class:`Killed`)
    after that epoch. Returns the paths (:class:`memplast.train.ScorerPaths`)."""
    from memplast.grid import scorer_grid
    from memplast.runtime import settings
    from memplast.train import ScorerPaths, train_scorer

    sc, d = cfg["memo"]["scorer"], Path(tmp) / "scorer"
    paths = ScorerPaths(
        checkpoints={g: str(d / f"e{g}.pt") for g in scorer_grid(sc["epochs"], sc["grid_every"])},
        metrics=str(d / "m.parquet"),
        csl=str(d / "csl.parquet"),
        resume=resume or str(Path(tmp) / "resume" / "scorer.pt"),
    )

    def kill_after(row):
        if on_epoch is not None:
            on_epoch(row)
        if stop is not None and row["epoch"] >= stop:
            raise Killed(f"stopped after epoch {row['epoch']}")

    train_scorer(prepared, cfg, paths, {"test": 1}, settings(cfg), kill_after)
    return paths
