"""Measure a calibration (:mod:`memplast.cost`) on the current device at the shapes of a config.

Every operation of :data:`memplast.cost.OPERATIONS` is timed with the workflow's own code
(``train_epoch``, ``evaluate``, ``reestimate_bn``, ``probe_checkpoint``, ``mean_gradient``, the
curvature estimators, ``model_metrics``) on class-structured synthetic images of the configured
shape, with the configured model, classes and batch sizes, on the thread count of the job family
that runs it. Each is warmed up once, then timed over at least two calls (median) and divided by
the images of a call. A call processes the configured batch, or fewer images when that would take
longer than ``call_seconds`` on this device (the CPU at paper shapes): per-image costs are then
measured on a smaller batch. Fixed costs: a job's start-up (a fresh interpreter importing what a
job script imports) and loading one checkpoint of the model.
"""

from __future__ import annotations

import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from memplast import cost, grid
from memplast.algorithms import make_algorithm
from memplast.checkpoints import load_checkpoint, model_meta, save_checkpoint
from memplast.curvature import exact_ggn, finite_difference, hutchinson
from memplast.data import synthetic_train_set
from memplast.device import resolve_device
from memplast.masks import class_mask, seen_classes
from memplast.model_metrics import model_metrics
from memplast.models import build_model, reinit
from memplast.probes import mean_gradient, probe_checkpoint
from memplast.train import DeviceData, evaluate, reestimate_bn, train_epoch

log = logging.getLogger("memplast.calibrate")
# what a job script imports before its work starts (scripts/*.py under Snakemake's script directive)
STARTUP_IMPORTS = (
    "import snakemake.script, torch, pandas, pyarrow.parquet; "
    "import memplast.train, memplast.probes, memplast.curvature, memplast.model_metrics, memplast.io"
)


def device_name(device: torch.device) -> str:
    """The device's product name (a file-name-safe form of it names the calibration file)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu-{platform.processor() or platform.machine()}-{torch.get_num_threads()}t"


def file_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name).strip("-").lower() + ".yaml"


class Timer:
    """Median seconds per image of a callable, on ``device``, within a time budget per call.

    ``clock``: ``wall`` (what a job's time limit counts; always on a GPU) or ``cpu`` (this process's
    CPU time: on a shared CPU machine it is what other processes' load does not inflate; compare it
    with the ``cpu_time`` of Snakemake's benchmark files)."""

    def __init__(self, device: torch.device, call_seconds: float, clock: str = "wall"):
        if clock not in ("wall", "cpu"):
            raise ValueError(f"clock must be wall or cpu, got {clock!r}")
        self.device, self.call_seconds = device, call_seconds
        self.clock = "wall" if device.type == "cuda" else clock
        self.now = time.perf_counter if self.clock == "wall" else time.process_time

    def once(self, fn) -> float:
        t0 = self.now()
        fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.now() - t0

    def per_image(self, make_call, configured: int, repeats: int = 2, pilot: int = 2) -> float:
        """Per image over ``repeats`` calls on ``configured`` images, or on fewer so that a call stays
        within ``call_seconds`` (from a pilot call on ``pilot`` images, which is also the warm-up)."""
        n = configured
        if configured > pilot:
            per_image = self.once(make_call(pilot)) / pilot
            per_image = self.once(make_call(pilot)) / pilot  # the first call also built the graph
            n = int(max(pilot, min(configured, self.call_seconds / max(per_image, 1e-9))))
        fn = make_call(n)
        if n <= pilot:
            fn()  # warm-up
        return statistics.median(self.once(fn) for _ in range(repeats)) / n


class Bench:
    """The synthetic data, models and masks the operations are timed on."""

    def __init__(self, config: dict, device: torch.device):
        ds, proto = config["dataset"], config["protocol"]
        self.cfg, self.device = config, device
        self.C, shape = grid.n_classes(ds), grid.image_shape(ds)
        self.cpt = proto["classes_per_task"]
        n = max(2 * proto["batch_size"], proto.get("eval_batch_size", 1000), config["probes"]["batch_size"],
                config["memo"]["batch_size"], 2 * config["memo"]["scorer"]["batch_size"], 1000)  # fmt: skip
        self.prepared = synthetic_train_set(self.C, shape, n)
        self.data = DeviceData(self.prepared, device)
        self.images = self.data.take(self.data.index(np.arange(n)))[0]
        self.labels = self.data.labels
        self.all_mask = class_mask(range(self.C), self.C, device)
        aug = ds["augmentation"]
        self.aug = aug if any([aug["crop_padding"], aug["flip"], aug["rotation_degrees"]]) else None
        self.meta = model_meta(config["model"]["arch"], config["model"]["width"], self.C, shape[0])

    def model(self, arch=None, width=None):
        m = build_model(arch or self.meta["arch"], self.C, self.meta["in_channels"], width or self.meta["width"])
        reinit(m, 0)
        return m.to(self.device)

    def train_call(self, algorithm: str, batch_size: int, arch=None, width=None, aug="config"):
        """One call = one SGD step per ``batch_size`` images of all classes (the algorithm's step)."""
        proto = self.cfg["protocol"]
        model = self.model(arch, width)
        algo = make_algorithm(algorithm, proto, 0)
        optimizer = algo.make_optimizer(model)
        algo.attach(model, torch.Generator().manual_seed(1))
        mask = seen_classes(np.arange(self.C), self.C, self.device)
        gen = torch.Generator().manual_seed(0)
        aug = self.aug if aug == "config" else aug

        def make(n):
            rows = np.arange(n)
            return lambda: train_epoch(model, optimizer, self.data, rows, mask, batch_size, gen, aug, None,
                                       algo.after_step, "calibration", algo.wants_acts)  # fmt: skip

        return make


def _threads(config: dict, family: str) -> None:
    torch.set_num_threads(max(1, int(config["resources"][family]["threads"])))


def measure_training(b: Bench, t: Timer) -> tuple[dict, dict]:
    """train_step, scorer_step, eval, bn per image; the algorithms' step as a factor of base."""
    cfg, proto = b.cfg, b.cfg["protocol"]
    bs = proto["batch_size"]
    _threads(cfg, "train")
    out = {"train_step": t.per_image(b.train_call("base", bs), 2 * bs)}
    factors = {}
    for algo in cfg["conditions"]["algorithms"]:
        if algo not in cost.BASE_STEP_ALGORITHMS:
            factors[algo] = t.per_image(b.train_call(algo, bs), 2 * bs) / out["train_step"]
    model = b.model()
    mask = seen_classes(np.arange(b.C), b.C, b.device)
    ebs = proto.get("eval_batch_size", 1000)
    out["eval"] = t.per_image(lambda n: lambda: evaluate(model, b.data, np.arange(n), mask, ebs), ebs)
    gen = torch.Generator().manual_seed(0)
    out["bn"] = t.per_image(
        lambda n: lambda: reestimate_bn(model, b.data.batches(np.arange(n), bs, gen, b.aug)), 2 * bs
    )
    sc = cfg["memo"]["scorer"]
    _threads(cfg, "memo_scorer")
    out["scorer_step"] = t.per_image(
        b.train_call("base", sc["batch_size"], sc["arch"], sc["width"], b.aug if sc["augment"] else None),
        2 * sc["batch_size"],
    )
    return out, factors


def measure_probes(b: Bench, t: Timer) -> dict:
    """probe, probe_align, mean_gradient, summary per image (probes.batch_size, half the classes seen)."""
    cfg = b.cfg
    _threads(cfg, "probe")
    pbs = cfg["probes"]["batch_size"]
    model = b.model()
    seen = class_mask(range(max(b.cpt, b.C // 2)), b.C, b.device)
    y = b.labels % int(seen.sum())
    taus, score_taus = cfg["probes"]["taus"], cfg["probes"]["score_taus"]
    direction = mean_gradient(model, b.images[:2], y[:2], seen, 2, b.device)

    def probe(n, with_direction=False):
        kw = {"direction": direction, "eta": 0.1} if with_direction else {}
        return lambda: probe_checkpoint(model, b.images[:n], y[:n], seen, seen, taus=taus, score_taus=score_taus,
                                        batch_size=pbs, device=b.device, **kw)  # fmt: skip

    return {
        "probe": t.per_image(probe, pbs),
        "probe_align": t.per_image(lambda n: probe(n, True), pbs),
        "mean_gradient": t.per_image(
            lambda n: lambda: mean_gradient(model, b.images[:n], y[:n], seen, pbs, b.device), pbs
        ),
        "summary": t.per_image(lambda n: lambda: model_metrics(model, b.images[:n], y[:n], seen, pbs, b.device), pbs),
    }


def measure_curvature(b: Bench, t: Timer) -> dict:
    """Each estimator per image under all classes (exact GGN also under classes_per_task classes)."""
    cfg, memo = b.cfg, b.cfg["memo"]
    _threads(cfg, "curvature")
    sc = memo["scorer"]
    model = b.model(sc["arch"], sc["width"]).eval()
    mbs, k = memo["batch_size"], memo["n_probes"]
    ids = np.arange(len(b.labels))
    task_mask = class_mask(range(b.cpt), b.C, b.device)
    y_task = b.labels % b.cpt
    x, y, m = b.images, b.labels, b.all_mask
    return {
        "exact_ggn": t.per_image(lambda n: lambda: exact_ggn(model, x[:n], y[:n], m), mbs),
        "exact_ggn_task": t.per_image(lambda n: lambda: exact_ggn(model, x[:n], y_task[:n], task_mask), mbs),
        "hutchinson": t.per_image(lambda n: lambda: hutchinson(model, x[:n], y[:n], m, ids[:n], k), mbs),
        "finite_difference": t.per_image(
            lambda n: lambda: finite_difference(model, x[:n], y[:n], m, ids[:n], k, memo["fd_step"]), mbs
        ),
    }


def measure_fixed(b: Bench, t: Timer, python: str = sys.executable) -> dict:
    """Start-up of a job (fresh interpreter and imports, median of 2) and one checkpoint load."""
    root = Path(__file__).resolve().parents[1]

    def child_seconds():
        if t.clock == "wall":
            return time.perf_counter()
        times = os.times()
        return times.children_user + times.children_system

    runs = []
    for _ in range(2):
        t0 = child_seconds()
        subprocess.run([python, "-c", STARTUP_IMPORTS], check=True, cwd=root, capture_output=True)
        runs.append(child_seconds() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.pt"
        save_checkpoint(path, b.model(), {**b.meta, "epoch": 1}, {})
        load = min(t.once(lambda: load_checkpoint(path, b.device)) for _ in range(3))
    return {"startup": statistics.median(runs), "checkpoint_load": load}


def calibrate(
    config: dict, device: str = "auto", call_seconds: float = 2.0, clock: str = "wall", progress=print
) -> dict:
    """A calibration of ``config``'s shapes on ``device`` (see the module docstring)."""
    from memplast import io

    dev = resolve_device(device)
    threads = torch.get_num_threads()
    t, b = Timer(dev, call_seconds, clock), Bench(config, dev)
    seconds, factors, t0 = {}, {}, time.perf_counter()
    for what, fn in (("training", measure_training), ("probes", measure_probes), ("curvature", measure_curvature)):
        part = fn(b, t)
        if what == "training":
            part, factors = part
        seconds.update(part)
        progress(f"  {what}: " + ", ".join(f"{k} {v * 1e3:.3g} ms/img" for k, v in part.items()))
    torch.set_num_threads(threads)
    fixed = measure_fixed(b, t)
    progress(f"  fixed: start-up {fixed['startup']:.1f} s, checkpoint load {fixed['checkpoint_load']:.3f} s")
    return {
        "device": device_name(dev),
        "device_type": dev.type,
        "clock": t.clock,
        "torch": str(torch.__version__),
        "code_version": io.code_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "measured_seconds": round(time.perf_counter() - t0, 1),
        "shapes": cost.shapes(config),
        "seconds_per_image": {k: float(f"{v:.4g}") for k, v in seconds.items()},
        "ratio_to_train_step": {k: round(v / seconds["train_step"], 3) for k, v in seconds.items()},
        "algorithm_factor": {k: round(v, 3) for k, v in factors.items()},
        "fixed_seconds": {k: round(v, 3) for k, v in fixed.items()},
    }
