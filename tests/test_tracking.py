"""Optional W&B tracking of training jobs (memplast/tracking.py): an offline run holds exactly the
epoch log's metrics; disabled, wandb is never imported; a failing service never fails a job."""

from __future__ import annotations

import copy
import logging
import re
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from test_train import _run

from memplast import runtime, tracking

RUN = "order0/none/random/none/base"


@pytest.fixture(scope="module")
def tiny(demo_config):
    cfg = copy.deepcopy(demo_config)
    cfg["protocol"].update(epochs_per_task=3, lr_milestones=[2], batch_size=64)
    return cfg


def _train(tmp, cfg, prepared, tracking_cfg):
    """Task 0 of a base run (tests/test_train.py's helper); its metrics parquet: tmp/t0/m.parquet."""
    prov = {"config": {"protocol": cfg["protocol"], "model": cfg["model"]}}
    cfg = {**cfg, "protocol": runtime.with_runtime(cfg["protocol"], {**runtime.settings(cfg), "logging": tracking_cfg})}
    return _run(tmp, cfg, prepared, 0, name=RUN, prov=prov)[0]


EPOCH_LINE = re.compile(
    r"epoch (\d+)/\d+ train loss ([\d.]+) acc ([\d.]+) \| val acc ([\d.]+) \| lr ([\d.e-]+) \| (\d+) img/s"
)


def test_offline_wandb_run_holds_the_epoch_logs_metrics(tmp_path, tiny, digits, caplog):
    pytest.importorskip("wandb", reason="W&B tracking needs the optional extra: pip install -e '.[wandb]'")
    cfg = {"wandb": {"enabled": True, "mode": "offline", "project": "memplast-test", "dir": str(tmp_path / "wb")}}
    with caplog.at_level(logging.INFO, logger="memplast.train"):
        metrics = _train(tmp_path, tiny, digits, cfg)
    (run_dir,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    got = tracking.read_offline_run(run_dir)
    assert got["group"] == RUN and got["name"] == f"{RUN}/task0" and got["project"] == "memplast-test"
    assert got["config"]["task"] == 0 and got["config"]["protocol"]["epochs_per_task"] == 3  # the config slice
    assert "logging" not in got["config"]["protocol"]
    assert got["config"]["model"] == tiny["model"]

    epochs = metrics[metrics.kind == "epoch"].reset_index(drop=True)
    history = sorted(got["history"], key=lambda h: h["_step"])
    assert [h["_step"] for h in history] == epochs["epoch"].tolist() == [1, 2, 3]
    on_disk = pd.read_parquet(tmp_path / "t0" / "m.parquet")
    for h, (_, row), (_, disk) in zip(history, epochs.iterrows(), on_disk[on_disk.kind == "epoch"].iterrows()):
        for k in ("train_loss", "train_acc", "val_acc", "val_loss", "test_acc", "lr", "images_per_sec", "task_epoch"):
            assert h[k] == row[k] == disk[k], k  # the same floats as metrics.parquet (JSON round trip is exact)
    # ... and the values the epoch log line prints, at its precision
    lines = [EPOCH_LINE.search(r.getMessage()) for r in caplog.records]
    lines = [m for m in lines if m]
    assert len(lines) == 3
    for h, m in zip(history, lines):
        assert int(m[1]) == h["task_epoch"]
        assert float(m[2]) == pytest.approx(h["train_loss"], abs=5e-5)
        assert float(m[3]) == pytest.approx(h["train_acc"], abs=5e-5)
        assert float(m[4]) == pytest.approx(h["val_acc"], abs=5e-5)
        assert float(m[5]) == pytest.approx(h["lr"], rel=1e-3)
        assert int(m[6]) == pytest.approx(h["images_per_sec"], abs=0.5)
    end = metrics[metrics.kind == "end"].iloc[0]
    assert got["summary"]["end/test_acc"] == end["test_acc"] and got["summary"]["end/val_acc"] == end["val_acc"]
    assert got["summary"]["end/best_epoch"] == end["best_epoch"]


def test_disabled_tracking_never_imports_wandb(tmp_path):
    """A whole training task with the default config (tracking disabled) in a fresh interpreter."""
    code = f"""
import sys, copy
sys.path.insert(0, {str(ROOT / "tests")!r})
from pathlib import Path
import test_tracking as T
from memplast import config, data, runtime
cfg = config.load({str(ROOT / "config.yaml")!r}, {str(ROOT / "config" / "demo.yaml")!r})
assert cfg["logging"]["wandb"]["enabled"] is False
cfg["protocol"].update(epochs_per_task=1, batch_size=64)
T._train(Path({str(tmp_path)!r}), cfg, data.prepare(cfg["dataset"]), runtime.settings(cfg)["logging"])
assert "wandb" not in sys.modules, "disabled tracking imported wandb"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def _fake_wandb(monkeypatch, fail_init=False, fail_log_after=None):
    """A stand-in wandb module: init raises, or run.log raises after ``fail_log_after`` calls."""
    calls = []

    class Run:
        id = "fake"
        summary = {}

        def log(self, values, step):
            if fail_log_after is not None and len(calls) >= fail_log_after:
                raise ConnectionError("service unreachable")
            calls.append((step, values))

        def finish(self, exit_code=0):
            calls.append(("finish", exit_code))

    def init(**kw):
        if fail_init:
            raise ConnectionError("could not reach api.wandb.ai")
        return Run()

    mod = types.SimpleNamespace(init=init, Settings=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return calls


@pytest.mark.parametrize("fail_init", [True, False])
def test_an_unreachable_service_logs_a_warning_and_never_raises(monkeypatch, tmp_path, caplog, fail_init):
    calls = _fake_wandb(monkeypatch, fail_init=fail_init, fail_log_after=None if fail_init else 1)
    cfg = {"wandb": {"enabled": True, "mode": "online", "dir": str(tmp_path)}}
    with caplog.at_level(logging.WARNING, logger="memplast.tracking"):
        t = tracking.open_tracker(cfg, RUN, 2, {})
        row = {"epoch": 7, "task_epoch": 1, "train_loss": 0.5, "kind": "epoch", "run": RUN}
        for _ in range(3):
            t.log_epoch(row)
        t.log_summary(row)
        t.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "W&B tracking disabled" in warnings[0].getMessage()
    assert "ConnectionError" in warnings[0].getMessage() and not t.enabled
    if not fail_init:  # the first epoch was logged, the failing second one finished the run, then nothing
        assert calls == [(7, {"task_epoch": 1, "train_loss": 0.5}), ("finish", 1)]


def test_tracking_is_a_runtime_setting_with_defaults(demo_config):
    assert demo_config["logging"] == {
        "wandb": {"enabled": False, "project": "memplast", "entity": None, "mode": "offline", "dir": "logs"}
    }
    assert runtime.settings(demo_config)["logging"] == demo_config["logging"]
    # no rule passes the logging section as params (which would rerun jobs when it changes)
    rules = "\n".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    assert '"logging"' not in rules and "'logging'" not in rules
    assert isinstance(tracking.open_tracker({}, RUN, 0, {}), tracking.Tracker)
    assert not tracking.open_tracker(None, RUN, 0, {}).enabled
    assert tracking._numbers({"a": np.float64(1.5), "b": float("nan"), "kind": "epoch", "c": True}) == {
        "a": 1.5,
        "c": 1,
    }
