"""The check to run on a GPU node before the first real submission (``make gpu-check``; docs/gpu.md).

Each part prints a few lines (the printout is what to paste into an issue) and says ``ok`` or
``FAIL``:

1. **device**: torch and its CUDA build, the device, the wheel's architectures and whether the
   device's compute capability is among them;
2. **determinism**: one short task (the config's model, image shape and batch size on
   class-structured synthetic data, ``EPOCHS`` epochs) trained twice on the device, exactly as a
   ``train_task`` job trains it: end weights, optimizer state and metrics bitwise equal;
3. **resume**: the first task trained on the CPU, its end state loaded on the device and the next
   task trained from it (what a retry on another node type does);
4. **calibration**: :func:`memplast.calibrate.calibrate` at the config's shapes;
5. **throughput**: training images per second of 1, 2 and 3 concurrent processes each running
   the training step on the device (one GPU shared: ``jobs_per_gpu``, docs/gpu.md).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from memplast import grid
from memplast.runtime import with_runtime

EPOCHS = 2
PER_CLASS = 30  # synthetic images per class of the short tasks (70% train)


def device_report(device: torch.device) -> tuple[bool, list[str]]:
    lines = [f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"]
    lines.append(f"CUDA available: {torch.cuda.is_available()}; device: {device}")
    if device.type != "cuda":
        lines.append(f"CPU: {torch.get_num_threads()} threads")
        return True, lines
    arch = torch.cuda.get_arch_list()
    major, minor = torch.cuda.get_device_capability(device)
    sm = f"sm_{major}{minor}"
    props = torch.cuda.get_device_properties(device)
    lines.append(f"{torch.cuda.get_device_name(device)}: {sm}, {props.total_memory / 1e9:.1f} GB")
    # a GPU runs kernels of its own architecture or of an earlier minor one of the same major (sm_89 on sm_86)
    ok = sm in arch or any(a.startswith(f"sm_{major}") and int(a[len(f"sm_{major}") :]) <= minor for a in arch)
    lines.append(f"wheel architectures: {' '.join(arch)}: {'ok' if ok else 'FAIL: not supported by this wheel'}")
    return ok, lines


def short_config(config: dict, device: str) -> dict:
    """The config's model, shapes, batch size and algorithm hyper-parameters on a synthetic dataset
    of ``PER_CLASS`` images per class, 2 tasks of ``EPOCHS`` epochs, on ``device``."""
    cfg = copy.deepcopy(config)
    ds = cfg["dataset"]
    shape, n_classes = list(grid.image_shape(ds)), grid.n_classes(ds)
    ds.update(name="synthetic", label_noise={"fraction": 0.0, "seed": 0}, near_duplicates={"n": 0})
    ds["synthetic"] = {**ds["synthetic"], "n_classes": n_classes, "shape": shape, "n_per_class": PER_CLASS}
    ds["split_fractions"] = {"val": 0.1, "test": 0.2}
    p = cfg["protocol"]
    p.update(epochs_per_task=EPOCHS, n_tasks=2, lr_milestones=[], state_every=1, device=device)
    cfg["protocol"] = with_runtime(p, {"device": device, "eval_batch_size": p.get("eval_batch_size", 1000)})
    return cfg


def train_short_task(tmp: Path, cfg: dict, prepared, task: int, prev: str | None = None) -> tuple[Path, object]:
    """Task ``task`` of order 0 (algorithm base) into ``tmp``; returns (end state path, metrics)."""
    from memplast import data as mpdata
    from memplast.train import RunSpec, TaskPaths, run_task

    E = cfg["protocol"]["epochs_per_task"]
    d = tmp / f"task{task}"
    paths = TaskPaths(end=str(d / "end.pt"), checkpoints={(task + 1) * E: str(d / "e.pt")},
                      metrics=str(d / "m.parquet"), order_log=str(d / "o.parquet"), resume=str(d / "resume.pt"),
                      prev_state=prev)  # fmt: skip
    classes = mpdata.class_order(0, prepared.n_classes)
    spec = RunSpec("order0/none/random/none/base", 0, classes, task, prepared.sample_id[prepared.split == "train"],
                   "random", 0.0, "base")  # fmt: skip
    metrics = run_task(spec, prepared, cfg, paths, {"gpu_check": 1})
    return Path(paths.end), metrics


def _states_equal(a: Path, b: Path) -> list[str]:
    """Names of the entries of two saved states that differ (bitwise)."""
    sa, sb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    differ = []
    for part in ("model", "optimizer"):
        fa, fb = _flat(sa[part]), _flat(sb[part])
        differ += [f"{part}.{k}" for k in fa if k not in fb or not _same(fa[k], fb[k])]
    return differ


def _flat(d, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    return a == b


def check_determinism(cfg: dict, prepared, tmp: Path) -> tuple[bool, list[str]]:
    t0 = time.perf_counter()
    (a, ma), (b, mb) = (train_short_task(tmp / run, cfg, prepared, 0) for run in ("a", "b"))
    differ = _states_equal(a, b)
    cols = ["train_loss", "val_loss", "val_acc", "test_loss"]
    metrics_same = ma[cols].equals(mb[cols])
    ok = not differ and metrics_same
    n = int(ma["kind"].eq("epoch").sum())
    lines = [
        f"one task ({len(prepared.labels)} synthetic images, {n} epochs) trained twice in "
        f"{time.perf_counter() - t0:.1f} s: end weights and optimizer state "
        + ("bitwise equal" if not differ else f"DIFFER in {len(differ)} entries, e.g. {differ[:3]}")
        + f"; metrics {'equal' if metrics_same else 'DIFFER'}: {'ok' if ok else 'FAIL'}"
    ]
    return ok, lines


def check_resume(config: dict, device: str, prepared, tmp: Path) -> tuple[bool, list[str]]:
    """Task 0 on the CPU, task 1 from its end state on ``device``."""
    end, _ = train_short_task(tmp / "cpu", short_config(config, "cpu"), prepared, 0)
    _, metrics = train_short_task(tmp / "dev", short_config(config, device), prepared, 1, prev=str(end))
    last = metrics.iloc[-1]
    ok = bool(np.isfinite(metrics["train_loss"].dropna()).all())
    return ok, [
        f"task 0 saved on the CPU, task 1 resumed from it on {device}: val acc {last['val_acc']:.3f}, "
        f"finite losses: {'ok' if ok else 'FAIL'}"
    ]


def throughput_worker(spec: str) -> None:
    """One process of the throughput test: ``steps`` training steps (after ``warmup``); prints img/s."""
    from memplast.data import synthetic_train_set
    from memplast.device import resolve_device
    from memplast.masks import seen_classes
    from memplast.models import build_model
    from memplast.train import DeviceData, train_epoch

    s = json.loads(spec)
    dev = resolve_device(s["device"])
    torch.set_num_threads(s["threads"])
    C, shape, bs = s["n_classes"], s["shape"], s["batch_size"]
    data = DeviceData(synthetic_train_set(C, shape, bs * s["steps"]), dev)
    model = build_model(s["arch"], C, shape[0], s["width"]).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mask, gen = seen_classes(np.arange(C), C, dev), torch.Generator().manual_seed(0)
    train_epoch(model, opt, data, np.arange(bs * s["warmup"]), mask, bs, gen, s["aug"])
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    train_epoch(model, opt, data, np.arange(bs * s["steps"]), mask, bs, gen, s["aug"])
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    print(json.dumps({"images_per_s": bs * s["steps"] / (time.perf_counter() - t0)}))


def check_throughput(config: dict, device: str, steps: int, max_jobs: int = 3) -> tuple[bool, list[str]]:
    """Images/s of 1..max_jobs concurrent training processes on ``device`` (each its own process,
    as Snakemake jobs are), their sum and its ratio to one process."""
    ds, p = config["dataset"], config["protocol"]
    aug = ds["augmentation"] if any(ds["augmentation"].values()) else None
    spec = {"device": device, "threads": config["resources"]["train"]["threads"], "n_classes": grid.n_classes(ds),
            "shape": list(grid.image_shape(ds)), "batch_size": p["batch_size"], "arch": config["model"]["arch"],
            "width": config["model"]["width"], "steps": steps, "warmup": max(2, steps // 5), "aug": aug}  # fmt: skip
    cmd = [sys.executable, "-c", f"from memplast.gpu_check import throughput_worker; throughput_worker({json.dumps(json.dumps(spec))})"]  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    lines, single = [], None
    for k in range(1, max_jobs + 1):
        procs = [subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True) for _ in range(k)]
        rates = []
        for proc in procs:
            out, _ = proc.communicate()
            if proc.returncode != 0:
                return False, lines + [f"{k} concurrent jobs: a worker failed (exit {proc.returncode}): FAIL"]
            rates.append(json.loads(out.strip().splitlines()[-1])["images_per_s"])
        total = sum(rates)
        single = single or total
        lines.append(
            f"{k} concurrent job(s): {total:,.0f} img/s in all ({', '.join(f'{r:,.0f}' for r in rates)}), "
            f"x{total / single:.2f} of one job"
        )
    return True, lines


def run(config: dict, device: str = "auto", steps: int = 50, call_seconds: float = 2.0, out=print) -> bool:
    """All parts (module docstring); prints as it goes; True when every part is ok."""
    from memplast import calibrate
    from memplast import data as mpdata
    from memplast.device import resolve_device

    dev = resolve_device(device)
    name = str(dev) if dev.type == "cuda" else "cpu"
    cfg = short_config(config, name)
    prepared = mpdata.prepare(cfg["dataset"])
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        parts = {
            "device": lambda: device_report(dev),
            "determinism": lambda: check_determinism(cfg, prepared, tmp / "det"),
            "resume": lambda: check_resume(config, name, prepared, tmp / "resume"),
            "calibration": lambda: _calibration(config, name, call_seconds, calibrate),
            "throughput": lambda: check_throughput(config, name, steps),
        }
        for part, fn in parts.items():
            out(f"[{part}]")
            t0 = time.perf_counter()
            ok, lines = fn()
            results[part] = ok
            for line in lines:
                out(f"  {line}")
            out(f"  ({time.perf_counter() - t0:.0f} s)")
    failed = [p for p, ok in results.items() if not ok]
    out(f"gpu-check: {'all ok' if not failed else 'FAIL in ' + ', '.join(failed)} on {name}")
    return not failed


def _calibration(config: dict, device: str, call_seconds: float, calibrate) -> tuple[bool, list[str]]:
    cal = calibrate.calibrate(config, device, call_seconds, progress=lambda _: None)
    ms = ", ".join(f"{k} {v * 1e3:.3g}" for k, v in cal["seconds_per_image"].items())
    fixed = cal["fixed_seconds"]
    return True, [
        f"{cal['device']} ({cal['clock']} clock), ms per image: {ms}",
        f"start-up {fixed['startup']:.1f} s, lazy import {fixed['lazy_import']:.1f} s, "
        f"checkpoint load {fixed['checkpoint_load']:.2f} s "
        "(`make calibrate` writes the file the workflow reads)",
    ]
