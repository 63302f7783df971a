"""Fault injection on the demo's tiny settings: damaged checkpoints, states and prepared data are
detected where they are read and right after they are written, with one line that names the file
and the recovery; a damaged resume state or staged checkpoint makes the job (a task or the memo
scorer) restart, and the restarted job ends byte for byte as an uninterrupted one; SIGTERM saves
either trainer at its current step."""

from __future__ import annotations

import copy
import errno
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import Killed, run_one_task, run_scorer

from memplast import checkpoints, data
from memplast.integrity import DamagedFileError
from memplast.train.state import ResumeFile


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip(path: Path) -> None:
    """A few bytes in the middle of the file (inside the largest member: weights or images)."""
    b = bytearray(path.read_bytes())
    for i in range(3):
        b[len(b) // 2 + 7 * i] ^= 0x5A
    path.write_bytes(bytes(b))


DAMAGE = {"truncated": truncate, "bit-flipped": flip}


def assert_one_line(exc: DamagedFileError, path) -> None:
    text = str(exc)
    assert "\n" not in text and str(path) in text and exc.path == str(path)


@pytest.fixture(scope="module")
def tiny(demo_config):
    cfg = copy.deepcopy(demo_config)
    cfg["protocol"].update(epochs_per_task=2, lr_milestones=[1], state_every=1, batch_size=32)
    return cfg


@pytest.fixture(scope="module")
def ref(tmp_path_factory, tiny, digits, one_thread):
    """An uninterrupted task 0: every epoch's checkpoint, one window slot, the live epoch, end state."""
    d = tmp_path_factory.mktemp("ref")
    run_one_task(d, tiny, digits, 0, ckpt_epochs=[1, 2], window=1)
    return d / "t0"


@pytest.fixture(scope="module")
def scorer_cfg(tiny):
    cfg = copy.deepcopy(tiny)
    cfg["memo"]["scorer"].update(epochs=3, grid_every=1)
    return cfg


@pytest.fixture(scope="module")
def scorer_ref(tmp_path_factory, scorer_cfg, digits, one_thread):
    """An uninterrupted memo scorer: checkpoints at epochs 1-3, metrics, CSL."""
    d = tmp_path_factory.mktemp("scorer-ref")
    run_scorer(d, scorer_cfg, digits)
    return d / "scorer"


@dataclass
class Trainer:
    """One of the two training jobs, as the fault tests drive it: ``run(dir, **kw)`` trains it into
    ``dir`` (``stop=``: killed after that epoch), ``out`` its outputs' directory under ``dir``,
    ``resume`` its resume state, ``files`` the outputs that must match an uninterrupted run byte for byte."""

    run: object
    ref: Path
    out: str
    resume: str
    files: tuple


@pytest.fixture(params=["task", "scorer"])
def trainer(request, tiny, digits) -> Trainer:
    if request.param == "task":
        return Trainer(lambda d, **kw: run_one_task(d, tiny, digits, 0, ckpt_epochs=[1, 2], window=1, **kw),
                       request.getfixturevalue("ref"), "t0", "resume/t0.pt",
                       ("e1.pt", "e2.pt", "best-0.pt", "live.pt", "end.pt"))  # fmt: skip
    cfg = request.getfixturevalue("scorer_cfg")
    return Trainer(lambda d, **kw: run_scorer(d, cfg, digits, **kw), request.getfixturevalue("scorer_ref"),
                   "scorer", "resume/scorer.pt", ("e1.pt", "e2.pt", "e3.pt", "csl.parquet"))  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("name", ["e1.pt", "best-0.pt", "live.pt", "end.pt"])
def test_damaged_checkpoint_or_end_state_is_named_with_its_recovery(tmp_path, ref, name, damage):
    path = tmp_path / name
    shutil.copy(ref / name, path)
    checkpoints.load_payload(path)  # intact copy reads
    DAMAGE[damage](path)
    with pytest.raises(DamagedFileError) as err:
        checkpoints.load_checkpoint(path) if name != "end.pt" else checkpoints.load_payload(path)
    assert_one_line(err.value, path)
    assert f"--forcerun {path}" in str(err.value)


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_previous_end_state_stops_the_next_task_before_training(tmp_path, ref, tiny, digits, damage):
    prev = tmp_path / "end.pt"
    shutil.copy(ref / "end.pt", prev)
    DAMAGE[damage](prev)
    with pytest.raises(DamagedFileError) as err:
        run_one_task(tmp_path, tiny, digits, 1, prev=str(prev))
    assert_one_line(err.value, prev)
    assert not (tmp_path / "t1").exists() or not any((tmp_path / "t1").iterdir())


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_prepared_data_is_named_on_read(tmp_path, digits, damage):
    path = tmp_path / "prepared.npz"
    data.save_prepared(digits, path, {"test": 1})
    assert data.load_prepared(path).images.shape == digits.images.shape
    DAMAGE[damage](path)
    with pytest.raises(DamagedFileError) as err:
        data.load_prepared(path)
    assert_one_line(err.value, path)
    assert "--forcerun" in str(err.value)


def test_a_file_damaged_while_written_never_becomes_the_output(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    real = torch.save

    def bad_save(obj, f):
        real(obj, f)
        f.truncate(f.tell() // 2)

    monkeypatch.setattr(torch, "save", bad_save)
    with pytest.raises(DamagedFileError) as err:
        checkpoints.save_state(path, {"w": torch.arange(1000.0)})
    assert_one_line(err.value, path)
    assert "damaged while being written" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary file


def test_disk_full_while_writing_a_resume_state_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "resume" / "t0.pt"
    checkpoints.save_state(path, {"epoch": 1, "w": torch.arange(10.0)})
    before = path.read_bytes()

    def full(obj, f):
        f.write(b"PK\x03\x04" + b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="No space left"):
        checkpoints.save_state(path, {"epoch": 2, "w": torch.arange(10.0)})
    assert path.read_bytes() == before and list(path.parent.iterdir()) == [path]
    monkeypatch.undo()
    assert checkpoints.load_payload(path)["epoch"] == 1


@pytest.mark.parametrize(("which", "damage"), [("resume state", "truncated"), ("staged checkpoint", "bit-flipped"),
                                               ("resume state", "bit-flipped")])  # fmt: skip
def test_damaged_resume_state_or_staged_checkpoint_restarts_the_job(tmp_path, trainer, which, damage, caplog):
    """A task or the memo scorer, killed after its first epoch (a resume state and a staged checkpoint
    left), its state then damaged: the rerun warns once naming the file and restarts from scratch."""
    with pytest.raises(Killed):
        trainer.run(tmp_path, stop=1)
    resume = tmp_path / trainer.resume
    target = resume if which == "resume state" else resume.with_suffix(".ckpt") / "e1.pt"
    assert target.exists()
    DAMAGE[damage](target)
    for f in (tmp_path / trainer.out).glob("*"):  # Snakemake deletes a killed job's outputs
        f.unlink()
    with caplog.at_level("WARNING", logger="memplast.train"):
        trainer.run(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"damaged file {target}" in warnings[0] and "\n" not in warnings[0]
    assert "resuming after" not in caplog.text
    for name in trainer.files:  # the restarted job: the same bytes
        assert (tmp_path / trainer.out / name).read_bytes() == (trainer.ref / name).read_bytes(), name
    assert not resume.exists() and not resume.with_suffix(".ckpt").exists()


def test_killed_scorer_resumes_to_the_same_bytes(tmp_path, scorer_ref, scorer_cfg, digits, caplog):
    """Killed after epoch 2 (its resume state saved then): the rerun continues from epoch 2 and its
    checkpoints, CSL and metrics equal an uninterrupted scorer's."""
    with pytest.raises(Killed):
        run_scorer(tmp_path, scorer_cfg, digits, stop=2)
    staged = sorted(p.name for p in (tmp_path / "resume" / "scorer.ckpt").iterdir())
    assert staged == ["e1.pt", "e2.pt"] and not any((tmp_path / "scorer").glob("*"))  # outputs only at the end
    with caplog.at_level("INFO", logger="memplast.train"):
        run_scorer(tmp_path, scorer_cfg, digits)
    assert "memo scorer: resuming after epoch 2 from" in caplog.text
    for name in ("e1.pt", "e2.pt", "e3.pt", "csl.parquet"):
        assert (tmp_path / "scorer" / name).read_bytes() == (scorer_ref / name).read_bytes(), name
    timing = ["seconds", "images_per_sec"]
    a, b = (pd.read_parquet(d / "m.parquet").drop(columns=timing) for d in (tmp_path / "scorer", scorer_ref))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert len(a) == 3 and not (tmp_path / "resume" / "scorer.pt").exists()


def test_damaged_staged_checkpoint_at_the_end_of_the_task_is_not_moved_onto_the_outputs(tmp_path):
    rf = ResumeFile(tmp_path / "resume" / "t0.pt", "run", 0, "key", {})
    checkpoints.save_state(rf.path, {"epoch": 1})
    checkpoints.save_state(rf.staged(1), {"w": torch.arange(100.0)})
    truncate(rf.staged(1))
    out = tmp_path / "out" / "e1.pt"
    with pytest.raises(DamagedFileError) as err:
        rf.finish({1: str(out), 2: str(tmp_path / "out" / "e2.pt")}, end_epoch=2)
    assert_one_line(err.value, rf.staged(1))
    assert "restarts from its first epoch" in str(err.value)
    assert not out.exists() and not rf.path.exists() and not rf.staging.exists()


def _cross_device_replace(monkeypatch):
    """``os.replace`` as between two filesystems: a rename into another directory fails with EXDEV."""
    import os

    real = os.replace

    def replace(src, dst):
        if Path(src).resolve().parent != Path(dst).resolve().parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_move_file_across_filesystems_copies_verifies_and_renames(tmp_path, monkeypatch):
    from memplast.io import move_file

    _cross_device_replace(monkeypatch)
    src, dst = tmp_path / "a" / "x.pt", tmp_path / "b" / "c" / "x.pt"
    checkpoints.save_state(src, {"w": torch.arange(10.0)})
    content = src.read_bytes()
    seen = []
    move_file(src, dst, seen.append)
    assert dst.read_bytes() == content and not src.exists() and len(seen) == 1 and seen[0].parent == dst.parent
    assert [p.name for p in dst.parent.iterdir()] == ["x.pt"]  # no temporary file left


def _mount_tmpfs(path: Path) -> None:
    import subprocess

    path.mkdir(parents=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path} (needs root): {out.stderr.strip()}")


@pytest.mark.parametrize("how", ["EXDEV", "two tmpfs"])
def test_staging_across_filesystems(tmp_path, ref, tiny, digits, monkeypatch, how):
    """Outputs on one filesystem, the resume state and staged checkpoints on another: the task ends
    with the same bytes as on one filesystem."""
    import subprocess

    runs, states = tmp_path / "scratch", tmp_path / "home"
    mounted = []
    try:
        if how == "EXDEV":
            _cross_device_replace(monkeypatch)
        else:
            for d in (runs, states):
                _mount_tmpfs(d)
                mounted.append(d)
        with pytest.raises(Killed):  # resume across the two as well
            run_one_task(runs, tiny, digits, 0, ckpt_epochs=[1, 2], window=1, stop=1, resume=str(states / "t0.pt"))
        run_one_task(runs, tiny, digits, 0, ckpt_epochs=[1, 2], window=1, resume=str(states / "t0.pt"))
        for name in ("e1.pt", "e2.pt", "best-0.pt", "live.pt", "end.pt"):
            assert (runs / "t0" / name).read_bytes() == (ref / name).read_bytes(), name
        assert not any(states.iterdir())
    finally:
        for d in mounted:
            subprocess.run(["umount", str(d)], check=False)


def _write_lock(path: Path, pid: int, host=None) -> None:
    import json
    import socket

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid}))


def test_a_second_trainer_of_the_same_task_stops_naming_the_holder(tmp_path, tiny, digits):
    import subprocess
    import sys

    from memplast.train.state import TaskLockedError

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = tmp_path / "resume" / "t0.pt.lock"
        _write_lock(lock, holder.pid)
        with pytest.raises(TaskLockedError) as err:
            run_one_task(tmp_path, tiny, digits, 0)
        text = str(err.value)
        assert "\n" not in text and str(lock) in text and f"pid {holder.pid}" in text
        assert not (tmp_path / "t0").exists() and lock.exists()  # nothing trained, the holder keeps its lock
        _write_lock(lock, 1, host="another-node")  # a holder on another host: its pid cannot be checked
        with pytest.raises(TaskLockedError, match="host another-node, pid 1"):
            run_one_task(tmp_path, tiny, digits, 0)
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, ref, tiny, digits, caplog):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / "resume" / "t0.pt.lock"
    _write_lock(lock, dead.pid)
    with caplog.at_level("WARNING", logger="memplast.train"):
        run_one_task(tmp_path, tiny, digits, 0, ckpt_epochs=[1, 2], window=1)
    assert f"taking over the stale lock {lock}" in caplog.text
    assert not lock.exists()  # released at the end
    assert (tmp_path / "t0" / "end.pt").read_bytes() == (ref / "end.pt").read_bytes()


def sigterm_cfg(demo_config: dict) -> dict:
    """Three epochs of a task and of the scorer, in small steps (batches of 8 and 16)."""
    cfg = copy.deepcopy(demo_config)
    cfg["protocol"].update(epochs_per_task=3, lr_milestones=[1], state_every=1, batch_size=8)
    cfg["memo"]["scorer"].update(epochs=3, grid_every=1, batch_size=16)
    return cfg


def sigterm_paths(which: str, d) -> tuple[Path, Path]:
    """(outputs dir, resume state) of :func:`sigterm_job` in ``d``."""
    name = "t0" if which == "task" else "scorer"
    return Path(d) / name, Path(d) / "resume" / f"{name}.pt"


def sigterm_job(which: str, d, cfg, prepared) -> None:
    """Train task 0 (``which="task"``) or the scorer into ``d``."""
    if which == "task":
        run_one_task(d, cfg, prepared, 0, ckpt_epochs=[1, 2, 3], window=2)
    else:
        run_scorer(d, cfg, prepared)


SIGTERM_OUTPUTS = {  # the job's epoch unit in its log; outputs equal to an uninterrupted run's bytes
    "task": ("task-epoch", ("e1.pt", "e2.pt", "e3.pt", "best-0.pt", "best-1.pt", "live.pt", "end.pt")),
    "scorer": ("epoch", ("e1.pt", "e2.pt", "e3.pt", "csl.parquet")),
}

SIGTERM_DRIVER = """
import logging, sys
sys.path.insert(0, sys.argv[1])
import torch
from conftest import ROOT
from test_faults import sigterm_cfg, sigterm_job
torch.set_num_threads(1)  # as the test process (one_thread), after conftest's own setting
from memplast import config, data
from memplast.train.state import Preempted
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
import time
from memplast.train import epoch, scorer, task
fit, loss = task.fit_epoch, epoch.per_sample_loss
def announced_fit(*args, **kwargs):  # the parent signals once the second epoch's steps have begun
    print("FIT", file=sys.stderr, flush=True)
    return fit(*args, **kwargs)
def slow_loss(*args, **kwargs):  # ~20 ms a step, so that the signal lands within the epoch
    time.sleep(0.02)
    return loss(*args, **kwargs)
task.fit_epoch = scorer.fit_epoch = announced_fit
epoch.per_sample_loss = slow_loss
cfg = sigterm_cfg(config.load(ROOT / "config.yaml", ROOT / "config" / "demo.yaml"))
try:
    sigterm_job(sys.argv[3], sys.argv[2], cfg, data.prepare(cfg["dataset"]))
except Preempted as exc:
    print(exc, flush=True)
    sys.exit(3)
"""


@pytest.mark.parametrize("which", SIGTERM_OUTPUTS)
def test_sigterm_mid_epoch_saves_the_step_and_the_rerun_ends_bitwise_equal(tmp_path, demo_config, digits, one_thread,
                                                                             caplog, which):  # fmt: skip
    """SIGTERM to a training process (a task or the memo scorer) after its first epoch: it saves its
    state at the end of the current step and exits non-zero; the rerun resumes from that step (not
    from the last saved epoch) and writes the same bytes as an uninterrupted run."""
    import signal
    import subprocess
    import sys

    cfg = sigterm_cfg(demo_config)
    run = tmp_path / "k"
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_DRIVER, str(Path(__file__).parent), str(run), which],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        fits = 0
        for line in proc.stderr:
            fits += line.startswith("FIT")
            if fits == 2:  # after the first epoch's log line, within the second epoch
                proc.send_signal(signal.SIGTERM)
                break
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 3, err
    unit, files = SIGTERM_OUTPUTS[which]
    outputs, resume = sigterm_paths(which, run)
    assert "SIGTERM received" in out and str(resume) in out and "\n" not in out.strip()
    saved = torch.load(resume, weights_only=False)
    assert saved["epoch"] == 1 and saved["partial"]["epoch"] == 1 and saved["partial"]["cursor"]["batch"] >= 1
    for f in outputs.glob("*"):  # Snakemake deletes a failed job's outputs
        f.unlink()
    with caplog.at_level("INFO", logger="memplast.train"):
        sigterm_job(which, run, cfg, digits)
    assert f"within {unit} 2 at batch {saved['partial']['cursor']['batch']}" in caplog.text
    sigterm_job(which, tmp_path / "ref", cfg, digits)
    ref = sigterm_paths(which, tmp_path / "ref")[0]
    for name in files:
        assert (outputs / name).read_bytes() == (ref / name).read_bytes(), name
    timing = ["seconds", "images_per_sec"]
    k, r = (pd.read_parquet(d / "m.parquet").drop(columns=timing) for d in (outputs, ref))
    pd.testing.assert_frame_equal(k, r, check_exact=True)
    assert not resume.exists()


def test_sigterm_during_the_evaluation_stops_at_the_end_of_the_epoch(tmp_path, ref, tiny, digits):
    import os
    import signal

    def terminate(row):  # after the epoch's steps and evaluation, as a late signal would
        os.kill(os.getpid(), signal.SIGTERM)

    from memplast.train.state import Preempted

    with pytest.raises(Preempted, match="after task-epoch 1") as err:
        run_one_task(tmp_path, tiny, digits, 0, ckpt_epochs=[1, 2], window=1, on_epoch=terminate)
    assert "\n" not in str(err.value) and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    run_one_task(tmp_path, tiny, digits, 0, ckpt_epochs=[1, 2], window=1)
    assert (tmp_path / "t0" / "end.pt").read_bytes() == (ref / "end.pt").read_bytes()


def test_the_entry_point_reports_a_damaged_input_in_one_line(tmp_path, digits, monkeypatch, capfd):
    import sys

    from memplast.cli import entrypoint

    path = tmp_path / "prepared.npz"
    data.save_prepared(digits, path, {"test": 1})
    truncate(path)

    def main(prepared: str):
        """Read a prepared dataset."""
        data.load_prepared(prepared)

    monkeypatch.setattr(sys, "argv", ["prog", "--prepared", str(path)])
    with pytest.raises(SystemExit) as exit_:
        entrypoint(main)
    assert exit_.value.code == 1
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if str(path) in line]
    assert len(lines) == 1 and f"--forcerun {path}" in lines[0] and "Traceback" not in err
