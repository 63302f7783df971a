"""Measure a calibration (:mod:`memplast.cost`) on the current device at the shapes of a config.

Every operation of :data:`memplast.cost.OPERATIONS` is timed with the workflow's own code
(``train_epoch``, ``evaluate``, ``reestimate_bn``, ``probe_checkpoint``, ``mean_gradient``, the
curvature estimators, ``model_metrics``) on class-structured synthetic images of the configured
shape, with the configured model, classes and batch sizes, on the thread count of the job family
that runs it, per image: calls start small (the first also warms up) and grow up to the
configured batch, or up to ``call_seconds`` per call on a slow device, until two calls in a row
agree within 15%; on a slow device (the CPU at paper shapes) the cost at the configured batch is
then extrapolated from two smaller call sizes along a per-call + per-image line
(:meth:`Timer.per_image`). An operation that repeats an earlier one's calls (the scorer's step at
the training step's model, augmentation, threads and call size) reuses its result. Fixed costs: a
job's start-up (fresh interpreters importing what a job script imports), torch's lazy import on a
job's first optimizer or second-order forward-mode pass (:data:`LAZY_IMPORT`: it made the alignment
checkpoint of a digits probe job 1.9 CPU s instead of 0.46) and loading one checkpoint; per
operation, what its first call in a process takes beyond a steady one (a job pays it once).
"""

from __future__ import annotations

import copy
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import import_module
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
CALL_SECONDS = 1.0  # longest timed call (clock seconds); a slow device times fewer images per call
# what a job script imports before its work starts (scripts/*.py under Snakemake's script directive)
STARTUP_IMPORTS = (
    "import snakemake.script, torch, pandas, pyarrow.parquet; "
    "import memplast.train, memplast.probes, memplast.curvature, memplast.model_metrics, memplast.io"
)
# what torch imports on a process's first use of an optimizer (torch.optim's constructor) or of a
# second-order forward-mode pass through a convolution (the probes' pred_forget): ~875 modules
LAZY_IMPORT = "torch._dynamo"


def device_name(device: torch.device) -> str:
    """The device's product name (a file-name-safe form of it names the calibration file)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu-{platform.processor() or platform.machine()}-{torch.get_num_threads()}t"


def file_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name).strip("-").lower() + ".yaml"


class Timer:
    """Seconds per image of an operation on ``device``, from calls of at most ``call_seconds`` each.

    ``clock``: ``wall`` (what a job's time limit counts; always on a GPU) or ``cpu`` (this process's
    CPU time: on a shared CPU machine it is what other processes' load does not inflate; compare it
    with the ``cpu_time`` of Snakemake's benchmark files). ``spread``: how close (relative) two
    calls' per-image costs must be to stop (at most ``max_calls`` calls). ``log``: per operation
    the images of its last call, the calls made and the seconds (of ``clock``) spent on it.
    ``warmups``: per operation the seconds its first call took beyond a later call of that size
    (:meth:`_warmup`), which a job pays once per process."""

    def __init__(self, device: torch.device, call_seconds: float, clock="wall", spread=0.15, max_calls=6):
        if clock not in ("wall", "cpu"):
            raise ValueError(f"clock must be wall or cpu, got {clock!r}")
        self.device, self.call_seconds, self.spread, self.max_calls = device, call_seconds, spread, max_calls
        self.clock = "wall" if device.type == "cuda" else clock
        self.now = time.perf_counter if self.clock == "wall" else time.process_time
        self.results, self.log, self.curves, self.warmups = {}, {}, {}, {}

    def once(self, fn) -> float:
        t0 = self.now()
        fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.now() - t0

    def per_image(self, name: str, make_call, configured: int, key=None, pilot: int = 2) -> float:
        """Seconds per image of ``make_call(n)()``, a call on ``n`` images (``configured`` at most).

        The first call, on ``pilot`` images, warms up (it also allocates and builds the graph; it
        counts only when it takes ``call_seconds`` or more; its excess over a later call of its
        size is kept in :attr:`warmups`). Calls then grow (x2 to x8) while a call
        of twice the size stays within ``call_seconds``; at the final size the per-image cost is
        taken once two calls in a row agree within ``spread``: the previous size's and this one's
        (the call size no longer matters) or two of this size. A first call of twice
        ``call_seconds`` or more counts alone (it averages over the work of two). When the final
        size is below ``configured`` (a slow operation), one more call of up to 4x that size (at most
        about 4 ``call_seconds``) gives a second size, and the result is the per-image cost at
        ``configured`` of the line ``c0 + c1 n`` through the calls (:meth:`_at_size`): a per-call
        cost c0 (the exact GGN's 100 VJPs at 100 classes, the probes' directions) would otherwise be
        charged to every few images instead of to a batch. ``key``:
        ``(identity, batch_size)`` of the call apart from its size (a call of n images is then
        batches of ``batch_size``, and the cost is extrapolated to one batch); an operation with the
        key of an earlier one whose calls were the same (every timed size within its ``configured``
        and split into the same batches) reuses them."""
        start = self.now()
        batch = key[1] if key else configured
        if key and key[0] in self.results:
            earlier = self.results[key[0]]
            sizes = [k for k, _ in earlier["samples"]]
            if max(sizes) <= configured and all(min(k, batch) == min(k, earlier["batch"]) for k in sizes):
                self.log[name] = {"images": sizes[-1], "calls": 0, "seconds": self.now() - start,
                                  "same_as": earlier["name"]}  # fmt: skip
                self.warmups[name] = self.warmups[earlier["name"]]
                if earlier["extrapolated"]:
                    return self._at_size(earlier["samples"], min(batch, configured), earlier["median"])
                return earlier["median"]
        n = min(pilot, configured)
        fn = make_call(n)
        seconds, calls = self.once(fn), 1
        first, counted_first = (n, seconds), seconds >= self.call_seconds
        samples = [(n, seconds / n)] if counted_first else []  # (images, seconds per image)
        while calls < self.max_calls:
            final = n == configured or 2 * seconds > self.call_seconds
            agree = len(samples) > 1 and self._spread([c for _, c in samples[-2:]]) <= self.spread
            if final and (agree or (len(samples) == 1 and seconds >= 2 * self.call_seconds)):
                break
            if samples and not final:  # x2, x4 or x8: the largest whose call stays within call_seconds
                grow = 2
                while grow < 8 and 2 * grow * seconds <= self.call_seconds:
                    grow *= 2
                n = min(configured, grow * n)
                fn = make_call(n)
            seconds, calls = self.once(fn), calls + 1
            samples.append((n, seconds / n))
        median = statistics.median(c for size, c in samples if size == n)
        per_image, extrapolated = median, n < configured
        if extrapolated:  # capped by call_seconds: one larger call, then the line through the calls
            m = min(configured, 4 * n, max(2 * n, int(4 * self.call_seconds / median)))
            seconds = self.once(make_call(m))
            calls += 1
            samples.append((m, seconds / m))
        self.warmups[name] = self._warmup(first, samples[1:] if counted_first else samples)
        if extrapolated:
            steady = samples[1:] if counted_first and len({k for k, _ in samples[1:]}) > 1 else samples
            per_image = self._at_size(steady, min(batch, configured), median)
            samples = steady
            n = m
        if key:
            self.results[key[0]] = {"samples": samples, "batch": key[1], "median": median, "name": name,
                                    "extrapolated": extrapolated}  # fmt: skip
        self.log[name] = {"images": n, "calls": calls, "seconds": self.now() - start}
        self.curves[name] = self._curve(samples, min(batch, configured), per_image)
        return per_image

    @staticmethod
    def _curve(samples, batch: int, per_image: float) -> list:
        """``[[n, seconds per image], ...]`` by call size n up to ``batch``: the median of the timed
        calls of each size below it and the result at ``batch`` (memplast.cost reads it for calls
        smaller than a batch)."""
        sizes = sorted({k for k, _ in samples if k < batch})
        curve = [[k, statistics.median(c for size, c in samples if size == k)] for k in sizes]
        return [[int(k), float(f"{c:.4g}")] for k, c in curve] + [[int(batch), float(f"{per_image:.4g}")]]

    @staticmethod
    def _at_size(samples, size: int, fallback: float) -> float:
        """Seconds per image of a call of ``size`` images from the line ``t(n) = c0 + c1 n`` (per-call
        cost c0, per-image cost c1) fitted by least squares to the timed calls ``(n, t(n) / n)``:
        ``c0 / size + c1``. ``fallback`` when the calls do not give a line rising with n."""
        n = np.array([k for k, _ in samples], dtype=float)
        t = np.array([k * c for k, c in samples])
        if np.ptp(n) == 0:
            return fallback
        c1, c0 = np.polyfit(n, t, 1)
        return float(c0 / size + c1) if c1 > 0 else fallback

    @staticmethod
    def _warmup(first, later) -> float:
        """Seconds the ``first`` call ``(n, seconds)`` took beyond a steady call of its n images: the
        median of the ``later`` calls ``(n, seconds per image)`` of that size, else the line through
        them (:meth:`_at_size`), else none. It is the set-up an operation does on its first use in a
        process (buffers, kernels chosen), which a job pays once."""
        n, seconds = first
        same = [c for k, c in later if k == n]
        if same:
            steady = n * statistics.median(same)
        elif len({k for k, _ in later}) > 1:
            steady = n * Timer._at_size(later, n, seconds / n)
        else:
            return 0.0
        return max(0.0, seconds - steady)

    @staticmethod
    def _spread(per_image) -> float:
        return (max(per_image) - min(per_image)) / max(min(per_image), 1e-12)


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
        self.models = {}

    def model(self, arch=None, width=None):
        """The network ``arch`` x ``width`` (default: the configured model) in train mode, built and
        initialised once: every operation but training (which gets a copy) times the same instance."""
        key = (arch or self.meta["arch"], width or self.meta["width"])
        if key not in self.models:
            m = build_model(key[0], self.C, self.meta["in_channels"], key[1])
            reinit(m, 0)
            self.models[key] = m.to(self.device)
        return self.models[key].train()

    def train_call(self, algorithm: str, batch_size: int, arch=None, width=None, aug="config"):
        """``(make, key)`` for :meth:`Timer.per_image`: one call = one SGD step per ``batch_size`` images
        of all classes (the algorithm's step) on a copy of the model."""
        proto = self.cfg["protocol"]
        model = copy.deepcopy(self.model(arch, width))
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

        identity = ("train", algorithm, arch or self.meta["arch"], width or self.meta["width"], repr(aug))
        return make, (identity + (torch.get_num_threads(),), batch_size)


def _threads(config: dict, family: str) -> None:
    torch.set_num_threads(max(1, int(config["resources"][family]["threads"])))


def measure_training(b: Bench, t: Timer) -> tuple[dict, dict]:
    """train_step, scorer_step, eval, bn per image; the step of every compared or tuned algorithm
    (conditions.algorithms, tuning.algorithms) as a factor of base's."""
    cfg, proto = b.cfg, b.cfg["protocol"]
    bs = proto["batch_size"]

    def step(name, algorithm, batch_size, *model_and_aug):
        make, key = b.train_call(algorithm, batch_size, *model_and_aug)
        return t.per_image(name, make, 2 * batch_size, key)

    _threads(cfg, "train")
    out = {"train_step": step("train_step", "base", bs)}
    factors = {}
    for algo in dict.fromkeys([*cfg["conditions"]["algorithms"], *cfg["tuning"]["algorithms"]]):
        if algo not in cost.BASE_STEP_ALGORITHMS:
            factors[algo] = step(cost.step_operation(algo), algo, bs) / out["train_step"]
    model = b.model()
    mask = seen_classes(np.arange(b.C), b.C, b.device)
    ebs = proto.get("eval_batch_size", 1000)
    out["eval"] = t.per_image("eval", lambda n: lambda: evaluate(model, b.data, np.arange(n), mask, ebs), ebs)
    gen = torch.Generator().manual_seed(0)
    out["bn"] = t.per_image(
        "bn", lambda n: lambda: reestimate_bn(model, b.data.batches(np.arange(n), bs, gen, b.aug)), 2 * bs
    )
    sc = cfg["memo"]["scorer"]
    _threads(cfg, "memo_scorer")
    out["scorer_step"] = step(
        "scorer_step", "base", sc["batch_size"], sc["arch"], sc["width"], b.aug if sc["augment"] else None
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

    calls = {
        "probe": probe,
        "probe_align": lambda n: probe(n, True),
        "mean_gradient": lambda n: lambda: mean_gradient(model, b.images[:n], y[:n], seen, pbs, b.device),
        "summary": lambda n: lambda: model_metrics(model, b.images[:n], y[:n], seen, pbs, b.device),
    }
    return {name: t.per_image(name, make, pbs) for name, make in calls.items()}


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
    calls = {
        "exact_ggn": lambda n: lambda: exact_ggn(model, x[:n], y[:n], m),
        "exact_ggn_task": lambda n: lambda: exact_ggn(model, x[:n], y_task[:n], task_mask),
        "hutchinson": lambda n: lambda: hutchinson(model, x[:n], y[:n], m, ids[:n], k),
        "finite_difference": lambda n: lambda: finite_difference(model, x[:n], y[:n], m, ids[:n], k, memo["fd_step"]),
    }
    return {name: t.per_image(name, make, mbs) for name, make in calls.items()}


def measure_fixed(b: Bench, t: Timer, python: str = sys.executable, interpreters: int = 3) -> dict:
    """Start-up of a job and torch's lazy import (:data:`LAZY_IMPORT`, which training and probe jobs
    pay once), the medians over ``interpreters`` fresh interpreters that import what a job script
    imports and then the lazy import (one interpreter alone varied 2.3-3.5 CPU s on the idle 2-core
    machine); one checkpoint load (the faster of two). Clock cpu: each interpreter reports its own
    CPU seconds to the end of its imports (what a job's log counts) and of the lazy import; clock
    wall: the interpreter's wall time, its exit included, less the lazy import."""
    root = Path(__file__).resolve().parents[1]
    clock = "perf_counter" if t.clock == "wall" else "process_time"
    code = f"{STARTUP_IMPORTS}; import time; t0 = time.{clock}(); import {LAZY_IMPORT}; print(t0, time.{clock}() - t0)"

    def one_interpreter():
        t0 = time.perf_counter()
        out = subprocess.run([python, "-c", code], check=True, cwd=root, capture_output=True, text=True).stdout
        imported, lazy = map(float, out.split()[-2:])
        return (imported if t.clock == "cpu" else time.perf_counter() - t0 - lazy), lazy

    startup, lazy = (statistics.median(v) for v in zip(*(one_interpreter() for _ in range(interpreters))))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.pt"
        save_checkpoint(path, b.model(), {**b.meta, "epoch": 1}, {})
        load = min(t.once(lambda: load_checkpoint(path, b.device)) for _ in range(2))
    return {"startup": startup, "lazy_import": lazy, "checkpoint_load": load}


def _describe(t: Timer, names) -> str:
    """Per operation: its call size, calls, the seconds spent measuring it (Timer.log) and what its
    first call took beyond a steady one (Timer.warmups)."""
    parts = []
    for name in names:
        entry = t.log[name]
        how = f"as {entry['same_as']}" if "same_as" in entry else f"{entry['images']} img x {entry['calls']} calls"
        first = f", first call +{t.warmups[name]:.2f} s" if t.warmups.get(name, 0) >= 0.01 else ""
        parts.append(f"{name} ({how}, {entry['seconds']:.1f} s{first})")
    return ", ".join(parts)


def calibrate(
    config: dict, device: str = "auto", call_seconds: float = CALL_SECONDS, clock: str = "wall", progress=print
) -> dict:
    """A calibration of ``config``'s shapes on ``device`` (see the module docstring); ``progress``
    gets per part the per-image costs and, per operation, what measuring it took."""
    from memplast import io

    import_module(LAZY_IMPORT)  # here, so that no operation's first call is charged with it
    dev = resolve_device(device)
    threads = torch.get_num_threads()
    t, b = Timer(dev, call_seconds, clock), Bench(config, dev)
    seconds, factors, t0, cpu0 = {}, {}, time.perf_counter(), time.process_time()
    for what, fn in (("training", measure_training), ("probes", measure_probes), ("curvature", measure_curvature)):
        done, wall, cpu = set(t.log), time.perf_counter(), time.process_time()
        part = fn(b, t)
        if what == "training":
            part, factors = part
        seconds.update(part)
        progress(
            f"  {what} ({time.process_time() - cpu:.1f} CPU s, {time.perf_counter() - wall:.1f} wall s): "
            + ", ".join(f"{k} {v * 1e3:.3g} ms/img" for k, v in part.items())
        )
        progress(f"    measured: {_describe(t, [k for k in t.log if k not in done])}")
    torch.set_num_threads(threads)
    fixed = measure_fixed(b, t)
    progress(
        f"  fixed: start-up {fixed['startup']:.1f} s, lazy import of {LAZY_IMPORT} {fixed['lazy_import']:.1f} s, "
        f"checkpoint load {fixed['checkpoint_load']:.3f} s"
    )
    return {
        "device": device_name(dev),
        "device_type": dev.type,
        "clock": t.clock,
        "torch": str(torch.__version__),
        "code_version": io.code_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "measured_seconds": round(time.perf_counter() - t0, 1),
        "measured_cpu_seconds": round(time.process_time() - cpu0, 1),
        "call_seconds": call_seconds,
        "shapes": cost.shapes(config),
        "seconds_per_image": {k: float(f"{v:.4g}") for k, v in seconds.items()},
        "ratio_to_train_step": {k: round(v / seconds["train_step"], 3) for k, v in seconds.items()},
        "algorithm_factor": {k: round(v, 3) for k, v in factors.items()},
        "operations": {k: {**v, "seconds": round(v["seconds"], 2)} for k, v in t.log.items()},
        # seconds per image by call size (memplast.cost: evaluation calls smaller than a batch)
        "call_curve": {k: t.curves[k] for k in seconds if k in t.curves},
        # the first call's extra seconds, paid once per job (memplast.cost); "step <algorithm>": its training step
        "warmup_seconds": {k: round(v, 3) for k, v in t.warmups.items()},
        "fixed_seconds": {k: round(v, 3) for k, v in fixed.items()},
    }
