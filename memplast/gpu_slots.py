"""One GPU per job on a multi-GPU machine without a scheduler.

``snakemake -j8 --resources gpu=8`` only bounds how many GPUs the running jobs ask for in
total; it does not say which GPU each job gets, so every job would use cuda:0. The entry point
of each script (``memplast.cli.entrypoint``) therefore calls :func:`assign` with the job's
``resources.gpu``: it locks that many free GPUs, one lock file each in
``.snakemake/gpu_slots/<host>/``, and sets ``CUDA_VISIBLE_DEVICES`` to them before torch
touches CUDA. The locks are ``flock`` locks held by the job's process: they are released when it
exits, however it exits (a crash or a kill frees its GPUs). A job that finds no free GPU waits.

With ``resources.jobs_per_gpu: k`` (default 1) every GPU has k slots (lock files ``<gpu>.lock``,
``<gpu>.slot1.lock``, ..): up to k jobs share a GPU (a small-batch ResNet-18 step leaves most of a
large GPU idle; docs/gpu.md); slots are handed out spreading jobs over the GPUs first, and a job
asking for several GPUs gets distinct ones. Snakemake's own bound is then ``--resources gpu=k x GPUs``.

The GPUs to share are ``MEMPLAST_GPUS`` (e.g. ``0,1,2,3``) if set, else ``CUDA_VISIBLE_DEVICES``
if set, else the GPUs ``nvidia-smi`` lists. Under a scheduler (SLURM, PBS, LSF) the scheduler
assigns GPUs and nothing is done; ``MEMPLAST_GPU_SLOTS=off`` turns the mechanism off.
``python -m memplast.gpu_slots`` lists the slots and the processes that hold them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("memplast.gpu_slots")

LOCK_ROOT = Path(".snakemake") / "gpu_slots"
SCHEDULER_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")
_held: list = []  # open lock files of this process: kept until it exits


def lock_dir(root: Path | str | None = None) -> Path:
    """Lock files of this machine's GPUs (per host, so a shared file system is safe)."""
    return Path(root or LOCK_ROOT) / socket.gethostname()


def gpu_pool(env=None) -> list[str]:
    """The GPUs jobs on this machine may share (their CUDA_VISIBLE_DEVICES entries)."""
    env = os.environ if env is None else env
    for var in ("MEMPLAST_GPUS", "CUDA_VISIBLE_DEVICES"):
        if env.get(var) is not None:
            return [g.strip() for g in env[var].split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=60
    )
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def _try_lock(path: Path, note: str):
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(note)
    f.flush()
    return f


def slot_path(directory: Path, gpu: str, slot: int) -> Path:
    """Lock file of slot ``slot`` of ``gpu`` (slot 0: ``<gpu>.lock``, as with one job per GPU)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", gpu)
    return directory / (f"{name}.lock" if slot == 0 else f"{name}.slot{slot}.lock")


def acquire(n: int, pool: list[str], root=None, poll: float = 1.0, note: str = "", jobs_per_gpu: int = 1) -> list[str]:
    """Lock ``n`` distinct GPUs of ``pool``, one of their ``jobs_per_gpu`` slots each (all or none at
    a time, waiting until they are free), and return them. The locks live as long as this process."""
    if n > len(pool):
        raise RuntimeError(
            f"the job asks for {n} GPUs but only {len(pool)} are available ({','.join(pool) or 'none'}); "
            "lower resources.gpu in the config or set MEMPLAST_GPUS"
        )
    if jobs_per_gpu < 1:
        raise ValueError(f"jobs_per_gpu must be >= 1, got {jobs_per_gpu}; set resources.jobs_per_gpu to 1 or more")
    directory = lock_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    note = f"pid {os.getpid()} {note}\n"
    waited, t0 = False, time.monotonic()
    while True:
        got = {}
        for slot in range(jobs_per_gpu):  # slot-major: the first free slot of every GPU before second ones
            for gpu in pool:
                if gpu in got:
                    continue
                f = _try_lock(slot_path(directory, gpu, slot), note)
                if f is not None:
                    got[gpu] = f
                    if len(got) == n:
                        _held.extend(got.values())
                        if waited:
                            log.info("got GPU slot(s) %s after %.0f s", ",".join(got), time.monotonic() - t0)
                        return list(got)
        for f in got.values():  # not enough: release and retry (no job holds part of what it needs)
            f.close()
        if not waited:
            log.info("all %d x %d GPU slots busy (%s); waiting for %d", len(pool), jobs_per_gpu, directory, n)
            waited = True
        time.sleep(poll)


def assign(n_gpus: int, job: str = "", env=None, root=None, jobs_per_gpu: int = 1) -> list[str] | None:
    """Give this process ``n_gpus`` GPUs (one of their ``jobs_per_gpu`` slots each) by setting
    CUDA_VISIBLE_DEVICES (before CUDA is initialised). Returns the GPUs, or None when nothing was assigned."""
    env = os.environ if env is None else env
    if n_gpus <= 0 or env.get("MEMPLAST_GPU_SLOTS", "on").lower() in ("off", "0", "false", "no"):
        return None
    scheduler = next((v for v in SCHEDULER_VARS if env.get(v)), None)
    if scheduler:
        log.info(
            "GPUs assigned by the scheduler (%s set): CUDA_VISIBLE_DEVICES=%s",
            scheduler,
            env.get("CUDA_VISIBLE_DEVICES", "(unset)"),
        )
        return None
    pool = gpu_pool(env)
    if not pool:
        log.info("no GPU found (MEMPLAST_GPUS, CUDA_VISIBLE_DEVICES and nvidia-smi): no GPU slot assigned")
        return None
    gpus = acquire(n_gpus, pool, root, note=job, jobs_per_gpu=jobs_per_gpu)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    log.info("GPU slot(s) %s: CUDA_VISIBLE_DEVICES=%s", ",".join(gpus), env["CUDA_VISIBLE_DEVICES"])
    return gpus


def status(root=None) -> list[tuple[str, str]]:
    """(gpu, holder) for every lock file of this machine; holder is '' for a free slot."""
    rows = []
    for path in sorted(lock_dir(root).glob("*.lock")):
        f = _try_lock(path, "")
        if f is not None:
            f.close()
            rows.append((path.stem, ""))
        else:
            rows.append((path.stem, path.read_text().strip()))
    return rows


if __name__ == "__main__":
    for gpu, holder in status(sys.argv[1] if len(sys.argv) > 1 else None):
        print(f"GPU {gpu}: {holder or 'free'}")
