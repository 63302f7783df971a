"""GPU slots on a multi-GPU machine without a scheduler, checked on the CPU: the GPUs assigned
to concurrent jobs (processes, and Snakemake jobs through the scripts' entry point)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT
from test_workflow import SNAKEMAKE

from memplast import gpu_slots

WORKER = textwrap.dedent("""
    import json, os, sys, time
    from memplast import gpu_slots
    n, hold, root, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
    per_gpu = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    t0 = time.time()
    gpus = gpu_slots.assign(n, "worker", root=root, jobs_per_gpu=per_gpu)
    t1 = time.time()
    time.sleep(hold)
    json.dump({"asked": t0, "start": t1, "end": time.time(), "gpus": gpus,
               "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}, open(out, "w"))
""")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in gpu_slots.SCHEDULER_VARS + ("CUDA_VISIBLE_DEVICES",)}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _workers(tmp_path, sizes, hold, env, jobs_per_gpu=1):
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(n),
                str(hold),
                str(tmp_path / "locks"),
                str(tmp_path / f"w{i}.json"),
                str(jobs_per_gpu),
            ],
            env=env,
        )  # fmt: skip
        for i, n in enumerate(sizes)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    return [json.load(open(tmp_path / f"w{i}.json")) for i in range(len(sizes))]


def _overlap(a, b):
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_concurrent_jobs_get_distinct_gpus_and_wait_for_a_free_one(tmp_path):
    pool = ["0", "1", "2"]
    sizes = [1, 1, 2, 1, 1]  # 6 GPUs asked for, 3 exist: some jobs must wait
    jobs = _workers(tmp_path, sizes, 1.5, _env(MEMPLAST_GPUS=",".join(pool)))
    for job, n in zip(jobs, sizes, strict=True):
        assert len(job["gpus"]) == n == len(set(job["gpus"])) and set(job["gpus"]) <= set(pool)
        assert job["visible"] == ",".join(job["gpus"])
    for a, b in itertools.combinations(jobs, 2):
        if _overlap(a, b):
            assert not set(a["gpus"]) & set(b["gpus"]), (a, b)
    # at no time more GPUs in use than exist, and every GPU was used
    for job in jobs:
        assert sum(len(o["gpus"]) for o in jobs if o["start"] <= job["start"] < o["end"]) <= len(pool)
    assert {g for j in jobs for g in j["gpus"]} == set(pool)
    assert any(j["start"] - j["asked"] > 1.0 for j in jobs)  # someone waited for a slot


def test_jobs_per_gpu_shares_each_gpu_between_that_many_jobs(tmp_path):
    """jobs_per_gpu 2 on 2 GPUs: at no time more than 2 jobs on a GPU, a 2-GPU job gets distinct
    GPUs, and with 6 GPU-slots asked for 4 available someone waits."""
    pool = ["0", "1"]
    sizes = [1, 1, 1, 2, 1]
    jobs = _workers(tmp_path, sizes, 2.0, _env(MEMPLAST_GPUS=",".join(pool)), jobs_per_gpu=2)
    for job, n in zip(jobs, sizes, strict=True):
        assert len(job["gpus"]) == n == len(set(job["gpus"])) and set(job["gpus"]) <= set(pool)
    for job in jobs:
        running = [o for o in jobs if o["start"] <= job["start"] < o["end"]]
        for gpu in pool:
            assert sum(gpu in o["gpus"] for o in running) <= 2, (gpu, running)
    assert max(len([o for o in jobs if o["start"] <= j["start"] < o["end"]]) for j in jobs) >= 3  # shared
    assert any(j["start"] - j["asked"] > 1.0 for j in jobs)
    assert {p.name for p in gpu_slots.lock_dir(tmp_path / "locks").iterdir()} == {
        "0.lock", "1.lock", "0.slot1.lock", "1.slot1.lock"
    }  # fmt: skip


def test_killed_job_frees_its_gpu(tmp_path):
    env = _env(MEMPLAST_GPUS="7")
    holder = subprocess.Popen(
        [sys.executable, "-c", WORKER, "1", "60", str(tmp_path / "locks"), str(tmp_path / "h.json")], env=env
    )
    try:
        for _ in range(100):
            if [h for _, h in gpu_slots.status(tmp_path / "locks") if h]:
                break
            time.sleep(0.1)
        assert gpu_slots.status(tmp_path / "locks") == [("7", f"pid {holder.pid} worker")]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    (job,) = _workers(tmp_path, [1], 0.0, env)
    assert job["gpus"] == ["7"] and job["start"] - job["asked"] < 5


def test_scheduler_or_no_gpu_or_off_leaves_devices_alone(tmp_path):
    for env in (
        {"SLURM_JOB_ID": "12", "CUDA_VISIBLE_DEVICES": "0", "MEMPLAST_GPUS": "0,1"},
        {"MEMPLAST_GPUS": ""},
        {"MEMPLAST_GPUS": "0,1", "MEMPLAST_GPU_SLOTS": "off"},
    ):
        before = dict(env)
        assert gpu_slots.assign(1, env=env, root=tmp_path) is None and env == before
    assert gpu_slots.assign(0, env={"MEMPLAST_GPUS": "0"}, root=tmp_path) is None
    with pytest.raises(RuntimeError, match="asks for 3 GPUs but only 2"):
        gpu_slots.assign(3, env={"MEMPLAST_GPUS": "0,1"}, root=tmp_path)
    # CUDA_VISIBLE_DEVICES set by the user: its entries are the pool
    env = {"CUDA_VISIBLE_DEVICES": "4,6"}
    assert gpu_slots.assign(1, env=env, root=tmp_path) == ["4"] and env["CUDA_VISIBLE_DEVICES"] == "4"


SNAKEFILE = """
rule all:
    input: expand("out/{i}.json", i=range(4))

rule gpu_job:
    output: result="out/{i}.json"
    log: "logs/{i}.log"
    threads: 1
    resources: gpu=1
    script: "job.py"
"""

JOB = """
import json, os, sys, time
sys.path.insert(0, {root!r})
from memplast.cli import entrypoint

def main(result):
    t0 = time.time()
    time.sleep(2)
    json.dump({{"start": t0, "end": time.time(), "gpus": os.environ["CUDA_VISIBLE_DEVICES"].split(",")}}, open(result, "w"))

entrypoint(main, snakemake)
"""


def test_snakemake_jobs_get_their_own_gpu_through_the_entry_point(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "job.py").write_text(JOB.format(root=str(ROOT)))
    out = subprocess.run(
        [SNAKEMAKE, "-j4", "--resources", "gpu=4", "--workflow-profile", "none", "--quiet"],
        cwd=tmp_path,
        env=_env(MEMPLAST_GPUS="0,1,2,3"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = [json.load(open(tmp_path / "out" / f"{i}.json")) for i in range(4)]
    for a, b in itertools.combinations(jobs, 2):
        if _overlap(a, b):
            assert not set(a["gpus"]) & set(b["gpus"]), (a, b)
    assert all(len(j["gpus"]) == 1 for j in jobs)
    assert sum(_overlap(a, b) for a, b in itertools.combinations(jobs, 2)) >= 1  # they did run side by side
    assert "GPU slot(s)" in (tmp_path / "logs" / "0.log").read_text()
