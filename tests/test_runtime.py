"""Runtime settings stay out of the science (params, resume key), and a job that requested a GPU
but sees none stops at once with one line naming the fix (memplast/runtime.py, memplast/cli.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import ROOT

from memplast import cli, runtime

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def test_science_drops_runtime_keys_unless_batch_statistics_use_them(paper_config):
    proto = runtime.science("protocol", paper_config["protocol"])
    assert not {"device", "eval_batch_size", "state_every"} & set(proto)
    # and a knob at its off value (runtime.OFF_VALUES: adding it reran nothing)
    assert set(paper_config["protocol"]) - set(proto) == {"device", "eval_batch_size", "state_every", "autocast"}
    assert "batch_size" not in runtime.science("probes", paper_config["probes"])
    # train-mode BatchNorm normalizes with batch statistics: then the probe batch size is science
    assert runtime.science("probes", {**paper_config["probes"], "bn_mode": "train"})["batch_size"] == 500
    assert runtime.science("stats", paper_config["stats"]) == paper_config["stats"]
    rt = runtime.settings(paper_config)
    assert rt == {
        "device": "auto",
        "eval_batch_size": 1000,
        "state_every": 10,
        "probe_batch_size": 500,
        "logging": paper_config["logging"],
    }
    full = {k: v for k, v in paper_config["protocol"].items() if k != "autocast"}  # off: the training reads None
    assert runtime.with_runtime(proto, rt) == {**full, "logging": paper_config["logging"]}


def test_each_run_sees_only_its_own_algorithms_hyper_parameters(paper_config):
    proto = runtime.science("protocol", paper_config["protocol"])
    own = {
        "base": set(),
        "retrained": set(),
        "head_reset": set(),
        "shrink_perturb": {"shrink_perturb"},
        "cbp": {"cbp"},
        "upgd": {"upgd"},
        "upgd_cbp": {"upgd", "cbp"},
        None: set(),
    }
    hyper = {"shrink_perturb", "cbp", "upgd"}
    for algorithm, keys in own.items():
        sliced = runtime.for_algorithm(proto, algorithm)
        assert set(sliced) == set(proto) - hyper | keys, algorithm
        assert all(sliced[k] == proto[k] for k in sliced)


def test_check_gpu_stops_only_when_a_requested_gpu_is_missing():
    with pytest.raises(runtime.NoGPUError) as err:
        runtime.check_gpu("rule train_task", "train", 1, "auto", cuda_available=False)
    msg = str(err.value)
    assert "\n" not in msg and "resources.train.gpu: 0" in msg and "device: cpu" in msg
    runtime.check_gpu("rule train_task", "train", 1, "cpu", cuda_available=False)  # CPU asked for
    runtime.check_gpu("rule train_task", "train", 0, "auto", cuda_available=False)  # no GPU requested
    runtime.check_gpu("rule train_task", "train", 1, "auto", cuda_available=True)


def _fake_job(tmp_path, gpu, device):
    """A Snakemake object as the script directive passes it (only what entrypoint reads)."""
    named = lambda **kw: SimpleNamespace(items=lambda: kw.items())  # noqa: E731
    return SimpleNamespace(
        input=named(),
        output=named(out=str(tmp_path / "out.txt")),
        params=named(),
        wildcards=named(task="0"),
        log=[str(tmp_path / "job.log")],
        threads=1,
        rule="train_task",
        resources={"gpu": gpu},
        config={"protocol": {"device": device, "eval_batch_size": 7, "state_every": 3}, "probes": {"batch_size": 9}},
    )


def test_entrypoint_passes_runtime_settings_and_stops_a_gpu_job_without_cuda(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seen = {}

    def main(out: str, runtime: dict | None = None):
        seen.update(runtime)

    cli.entrypoint(main, _fake_job(tmp_path, gpu=1, device="cpu"))
    assert seen == {"device": "cpu", "eval_batch_size": 7, "state_every": 3, "probe_batch_size": 9, "logging": {}}
    seen.clear()
    with pytest.raises(SystemExit) as exit_:
        cli.entrypoint(main, _fake_job(tmp_path, gpu=1, device="auto"))
    assert exit_.value.code == 1 and not seen  # main never ran
    lines = [line for line in (tmp_path / "job.log").read_text().splitlines() if "ERROR" in line]
    assert len(lines) == 1 and "resources.train.gpu: 0" in lines[0] and "protocol.device: cpu" in lines[0]


def test_entrypoint_logs_the_jobs_exact_cpu_seconds(tmp_path):
    """The "done" line carries the process's CPU seconds (imports included): at least what the job
    burned, which the sampled cpu_time of Snakemake's benchmark files can miss."""
    import re
    import time

    def main(out: str, runtime: dict | None = None):
        t0 = time.process_time()
        while time.process_time() - t0 < 0.3:  # 0.3 s of CPU
            sum(range(1000))

    before = cli.process_cpu_seconds()
    cli.entrypoint(main, _fake_job(tmp_path, gpu=0, device="cpu"))
    after = cli.process_cpu_seconds()
    done = [line for line in (tmp_path / "job.log").read_text().splitlines() if " done train_task " in line]
    assert len(done) == 1
    cpu = float(re.search(r", ([0-9.]+) CPU s$", done[0]).group(1))
    assert before + 0.3 <= cpu + 0.01 and cpu <= after + 0.01


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
@pytest.mark.skipif(_has_cuda(), reason="this machine has a GPU: the job would train on it")
def test_training_job_with_gpu_1_on_a_cpu_machine_stops_before_training(tmp_path):
    """The real train_task job of the demo, asked for a GPU on this CPU-only machine."""
    overlay = tmp_path / "gpu.yaml"
    overlay.write_text(yaml.safe_dump({"protocol": {"device": "auto"}, "resources": {"train": {"gpu": 1}}}))
    target = "results/runs/order0/none/random/none/base/task0/end.pt"
    out = subprocess.run(
        [
            SNAKEMAKE,
            "--snakefile",
            str(ROOT / "Snakefile"),
            "-c1",
            "--directory",
            str(tmp_path),
            target,
            "--configfile",
            str(ROOT / "config.yaml"),
            str(ROOT / "config" / "demo.yaml"),
            str(overlay),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode != 0
    log = (tmp_path / "logs/train/order0/none/random/none/base/task0.log").read_text()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "requested gpu=1 but sees no CUDA device" in errors[0], log
    assert "resources.train.gpu: 0" in errors[0] and "protocol.device: cpu" in errors[0]
    assert "classes seen" not in log and "Traceback" not in log  # stopped before any training, one line
    assert (tmp_path / "results/subsets/none/kept.parquet").exists()  # the CPU jobs before it ran
