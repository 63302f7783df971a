"""The cost model of the GPU job kinds: per-image costs on a device x work counted per job x a safety factor.

A **calibration** (``make calibrate``: :mod:`memplast.calibrate`, written to
``calibration/<device>.yaml``) holds the seconds per image of each operation the heavy jobs
repeat, measured on one device at the configured shapes (model, image shape, classes, batch
sizes), plus the fixed cost of a job (start-up: interpreter, imports, data) and of loading one
checkpoint and torch's lazy import (``lazy_import``: on a process's first optimizer or second-order
forward-mode pass, so training, scorer and probe jobs pay it), and per operation the extra seconds
of its first call in a process (``warmup_seconds``). :class:`CostModel` counts each job's work
from the config (images x epochs, per-epoch evaluation, BatchNorm re-estimation where it happens,
samples x checkpoints x estimator), multiplies, and adds the fixed costs and the first calls of
the operations the job runs. ``rules/common.smk`` requests ``safety_factor`` x the estimate for
every GPU rule; ``make budget`` prints the estimate next to the request.

Without a calibration (``resources.calibration: null``) the **default** is used: training at
``resources.train.seconds_per_image`` per image (the paper config: 2e-4 s, about 5,000 img/s,
an assumed A100-class fp32 rate at batch 90), every other operation at its ratio to a training
step measured on the CPU at the paper shapes (:data:`DEFAULT_RATIOS`), and the start-up and
checkpoint-load times of :data:`DEFAULT_FIXED`.

Standard library only (imported by the Snakefile at DAG time; evaluated once per job).
"""

from __future__ import annotations

import math
from pathlib import Path

from memplast import grid

# Per-image operations of a calibration (seconds per image on the device).
OPERATIONS = {
    "train_step": "one SGD step of the incremental model (augmentation, protocol.batch_size), algorithm base",
    "scorer_step": "one SGD step of the memorization scorer (memo.scorer: arch, width, batch_size, augment)",
    "eval": "eval-mode forward under a class mask (protocol.eval_batch_size)",
    "bn": "train-mode forward without gradients (BatchNorm re-estimation, protocol.batch_size)",
    "probe": "every probe quantity of one checkpoint (probes.batch_size)",
    "probe_align": "the same at the best checkpoint, with alignment and pred_forget",
    "mean_gradient": "forward and backward of the next task's loss (G, probes.batch_size)",
    "exact_ggn": "exact Tr(H^2) under all classes (memo.batch_size)",
    "exact_ggn_task": "exact Tr(H^2) under protocol.classes_per_task classes (probes.curvature)",
    "hutchinson": "Hutchinson with memo.n_probes probes",
    "finite_difference": "finite differences with memo.n_probes probes",
    "summary": "model-level metrics of one checkpoint (forward with activations)",
}
METHOD_OPERATION = {"exact_ggn": "exact_ggn", "hutchinson": "hutchinson", "finite_difference": "finite_difference"}
# Ratio of each operation's per-image cost to one training step's: the mean of two calibrations
# (`scripts/calibrate.py --clock cpu`, its batch extrapolation included) on the idle 2-core CPU at
# the paper shapes (config.yaml: ResNet-18 width 64, 3x32x32, 100 classes, its batch sizes and
# thread counts), rounded.
DEFAULT_RATIOS = {
    "scorer_step": 1.0,
    "eval": 0.34,
    "bn": 0.30,
    "probe": 1.2,
    "probe_align": 3.6,
    "mean_gradient": 0.9,
    "exact_ggn": 28.0,
    "exact_ggn_task": 1.6,
    "hutchinson": 9.6,
    "finite_difference": 6.5,
    "summary": 0.38,
}
# Assumed fixed costs on a GPU node: a job's start-up (interpreter, imports, CUDA context, data to
# the device; torch's lazy import counted in it) and loading one checkpoint from a shared file system.
DEFAULT_FIXED = {"startup": 60.0, "checkpoint_load": 1.0, "lazy_import": 0.0}
SAFETY_FACTOR = 1.5  # default of resources.safety_factor
# the summary's batch-statistics pass (memplast.model_metrics.FAITHFUL_BATCH; this module imports no torch)
FAITHFUL_BATCH = 1000
# algorithms whose training step is the base step (they re-initialise between tasks only)
BASE_STEP_ALGORITHMS = ("base", "retrained", "head_reset")
# rule -> the cost function of its jobs (GPU rule families)
RULES = {
    "train_task": "train",
    "train_task_reference": "train",
    "memo_scorer": "scorer",
    "memo_curvature": "curvature",
    "probe": "probe",
    "probe_run": "probe_run",
    "run_summary": "summary",
    "tune_task": "train",
    "heldout": "heldout",
    "heldout_dependence": "dependence",
}


def step_operation(algorithm: str) -> str:
    """The calibration's name of ``algorithm``'s training step (its first call is kept under it)."""
    return "train_step" if algorithm in BASE_STEP_ALGORITHMS else f"step {algorithm}"


class CalibrationError(ValueError):
    """A calibration file that does not fit the config."""


def shapes(config: dict) -> dict:
    """What a calibration depends on: the configured shapes and batch sizes (and thread counts)."""
    ds, proto, memo, res = config["dataset"], config["protocol"], config["memo"], config["resources"]
    scorer = memo["scorer"]
    return {
        "image_shape": list(grid.image_shape(ds)),
        "n_classes": grid.n_classes(ds),
        "classes_per_task": proto["classes_per_task"],
        "model": f"{config['model']['arch']}-w{config['model']['width']}",
        "scorer": f"{scorer['arch']}-w{scorer['width']}",
        "batch_size": proto["batch_size"],
        "scorer_batch_size": scorer["batch_size"],
        "eval_batch_size": proto.get("eval_batch_size", 1000),
        "probe_batch_size": config["probes"]["batch_size"],
        "memo_batch_size": memo["batch_size"],
        "n_probes": memo["n_probes"],
        "threads": {f: res[f]["threads"] for f in ("train", "memo_scorer", "curvature", "probe")},
    }


def default_calibration(config: dict) -> dict:
    """The documented default (module docstring): the config's training rate x CPU-measured ratios."""
    step = config["resources"]["train"]["seconds_per_image"]
    return {
        "device": "default (no calibration)",
        "source": f"resources.train.seconds_per_image={step:g} x ratios measured on the CPU at paper shapes",
        "seconds_per_image": {"train_step": step, **{k: r * step for k, r in DEFAULT_RATIOS.items()}},
        "algorithm_factor": {},
        "fixed_seconds": dict(DEFAULT_FIXED),
    }


def load_calibration(path, config: dict | None = None) -> dict:
    """A calibration file; with ``config``, checked to be measured at its shapes."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CalibrationError(
            f"calibration file {path} not found; run `make calibrate` (writes calibration/<device>.yaml) "
            "or set resources.calibration: null for the default"
        )
    cal = yaml.safe_load(path.read_text())
    missing = sorted(set(OPERATIONS) - set(cal.get("seconds_per_image", {})))
    if missing:
        raise CalibrationError(f"calibration {path} lacks {missing}; rerun `make calibrate`")
    if config is not None:
        want, have = shapes(config), cal.get("shapes", {})
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        if diff:
            detail = "; ".join(f"{k}: calibrated {a}, config {b}" for k, (a, b) in diff.items())
            raise CalibrationError(
                f"calibration {path} was measured at other shapes ({detail}); rerun `make calibrate` "
                "with this config or set resources.calibration to a matching file"
            )
    cal["source"] = str(path)
    return cal


class CostModel:
    """Estimated seconds of every GPU job of a config (:data:`RULES`), and the minutes to request."""

    def __init__(self, config: dict, calibration: dict | None = None, root="."):
        self.cfg = config
        res = config["resources"]
        if calibration is None and res.get("calibration"):
            calibration = load_calibration(Path(root) / res["calibration"], config)
        self.cal = calibration or default_calibration(config)
        self.c = self.cal["seconds_per_image"]
        self.fixed = {**DEFAULT_FIXED, **self.cal.get("fixed_seconds", {})}
        self.warmup = self.cal.get("warmup_seconds", {})
        self.safety = res.get("safety_factor", SAFETY_FACTOR)
        ds, proto, probes = config["dataset"], config["protocol"], config["probes"]
        self.sizes = grid.split_sizes(ds)
        self.C = grid.n_classes(ds)
        self.cpt, self.T, self.E = proto["classes_per_task"], proto["n_tasks"], proto["epochs_per_task"]
        self.w = probes["window"]
        self.bn_reestimate = config["ordering"]["bn_reestimate"]
        self.eval_batch = proto.get("eval_batch_size", 1000)

    def per_image(self, operation: str, call: int) -> float:
        """Seconds per image of ``operation`` in a call of ``call`` images: the calibration's
        ``call_curve`` (per-image cost by call size; on a CPU it rises with the call, on a GPU it
        falls), linear in the call's seconds between its sizes, the calibrated batch value at and
        above its largest; the batch value alone without a curve (the default calibration)."""
        curve = self.cal.get("call_curve", {}).get(operation)
        if not curve or call >= curve[-1][0]:
            return self.c[operation]
        if call <= curve[0][0]:
            return curve[0][1]
        for (n0, c0), (n1, c1) in zip(curve, curve[1:]):
            if n0 <= call <= n1:
                t = n0 * c0 + (n1 * c1 - n0 * c0) * (call - n0) / (n1 - n0)
                return t / call
        raise AssertionError("unreachable: the curve's sizes are sorted")

    def calls(self, operation: str, images: int, batch: int) -> float:
        """``operation`` on ``images`` images in calls of ``batch`` and one of the rest."""
        full, rest = divmod(int(images), batch)
        seconds = full * batch * self.per_image(operation, batch)
        return seconds + (rest * self.per_image(operation, rest) if rest else 0.0)

    def evaluation(self, images: int, batch: int | None = None) -> float:
        """One evaluation of ``images`` images (memplast.train.epoch.evaluate_samples) in calls of
        ``batch`` (default protocol.eval_batch_size)."""
        return self.calls("eval", images, batch or self.eval_batch)

    def process(self, *operations: str, lazy_import: bool = False) -> float:
        """What a job's process pays once: start-up, torch's lazy import where the job triggers it (an
        optimizer, pred_forget's forward-mode pass) and the extra seconds of the first call of each
        of its ``operations`` (none in the default calibration)."""
        lazy = self.fixed["lazy_import"] if lazy_import else 0.0
        return self.fixed["startup"] + lazy + sum(self.warmup.get(op, 0.0) for op in operations)

    @property
    def device(self) -> str:
        return self.cal["device"]

    def describe(self) -> str:
        return f"device {self.cal['device']} ({self.cal['source']}), safety factor {self.safety:g}"

    # ---------------------------------------------------------------- work per job (seconds)
    @staticmethod
    def kept(filter_name: str = "none") -> float:
        """Fraction of the training images a filter keeps (a quantile filter and its size-matched
        random control keep about q; ``balanced`` may keep fewer: an upper bound)."""
        return 1.0 if filter_name == "none" else grid.parse_filter(filter_name).quantile

    def train(
        self, task: int, ordering: str = "random", algorithm: str = "base", filter_name: str = "none", test: bool = True
    ) -> float:
        """One task: E epochs x (its kept training images x (step + BN re-estimation after a non-random
        ordering) + its validation and test images x eval), the end evaluation, start-up. ``test``
        false: the test split is not in memory (tuning jobs) and not evaluated."""
        seen = (task + 1) * self.cpt
        n_train = seen * self.sizes["train"] * self.kept(filter_name)
        evaluation = self.evaluation(seen * self.sizes["val"])
        if test:
            evaluation += self.evaluation(seen * self.sizes["test"])
        step = self.c["train_step"] * self.cal.get("algorithm_factor", {}).get(algorithm, 1.0)
        bn = self.c["bn"] if self.bn_reestimate and ordering != "random" else 0.0
        per_epoch = n_train * (step + bn) + evaluation
        once = self.process(step_operation(algorithm), "eval", *(["bn"] if bn else []), lazy_import=True)
        return once + self.E * per_epoch + evaluation

    def scorer(self) -> float:
        """The scorer: epochs x (all training images x step + validation and test images x eval)."""
        s = self.sizes
        epochs = self.cfg["memo"]["scorer"]["epochs"]
        per_epoch = self.C * s["train"] * self.c["scorer_step"] + sum(
            self.evaluation(self.C * s[k]) for k in ("val", "test")
        )
        return self.process("scorer_step", "eval", lazy_import=True) + epochs * per_epoch

    def curvature(self) -> float:
        """One scorer checkpoint: the samples of memo.splits x the configured estimators (all classes)."""
        memo = self.cfg["memo"]
        n = self.C * sum(self.sizes[s] for s in memo["splits"])
        ops = [METHOD_OPERATION[m] for m in memo["methods"]]
        return self.process(*ops) + self.fixed["checkpoint_load"] + n * sum(self.c[op] for op in ops)

    def probe(self, boundary: int, filter_name: str = "none") -> float:
        """Boundary k: the kept training images of the k+2 first tasks at 2w + 1 checkpoints (before-window,
        live, after-window; fewer when the best epoch is early), alignment at the best one (G from the
        new classes), and with probes.curvature memo.score's estimator under each checkpoint's mask."""
        n = (boundary + 2) * self.cpt * self.sizes["train"] * self.kept(filter_name)
        n_new = self.cpt * self.sizes["train"] * self.kept(filter_name)
        n_ckpt = 2 * self.w + 1
        c = self.c
        seconds = n * ((n_ckpt - 1) * c["probe"] + c["probe_align"]) + n_new * c["mean_gradient"]
        if self.cfg["probes"]["curvature"]:
            seconds += n_ckpt * n * self._curvature_under(self.cfg["memo"]["score"], boundary + 2)
        return self._probe_process() + n_ckpt * self.fixed["checkpoint_load"] + seconds

    def _probe_process(self) -> float:
        """What a probe process pays once: start-up, the lazy import (pred_forget's second-order
        forward-mode pass) and the first call of each of its operations."""
        ops = ["probe", "probe_align", "mean_gradient"]
        if self.cfg["probes"]["curvature"]:  # the estimator's first use (the calibration's is under all classes)
            ops.append(METHOD_OPERATION[self.cfg["memo"]["score"]])
        return self.process(*ops, lazy_import=True)

    def probe_run(self, filter_name: str = "none") -> float:
        """Every boundary of a run in one process (probes.jobs: run): the sum of its boundaries'
        probe jobs, with the start-up (interpreter, imports, data) and first calls counted once."""
        boundaries = [self.probe(k, filter_name) for k in range(self.T - 1)]
        return sum(boundaries) - (len(boundaries) - 1) * self._probe_process()

    def _curvature_under(self, method: str, n_tasks_seen: int) -> float:
        """Per image, under the classes of ``n_tasks_seen`` tasks: exact GGN linear in the classes
        (one VJP per class) through its two calibrated points, the others as calibrated."""
        if method != "exact_ggn":
            return self.c[METHOD_OPERATION[method]]
        lo, hi = self.c["exact_ggn_task"], self.c["exact_ggn"]
        if self.C == self.cpt:
            return hi
        return lo + (hi - lo) * (n_tasks_seen * self.cpt - self.cpt) / (self.C - self.cpt)

    def summary(self) -> float:
        """A run's summary: per task its end checkpoint, the metrics on the seen classes' training
        images (eval BN) and on a batch of 1000 of them, or all when fewer are seen (batch statistics
        from one forward of the whole batch, then the metrics: memplast.model_metrics.FAITHFUL_BATCH),
        per-class test accuracy."""
        s, pbs = self.sizes, self.cfg["probes"]["batch_size"]
        work = 0.0
        for t in range(self.T):
            train = (t + 1) * self.cpt * s["train"]  # the seen classes' training images
            batch = min(FAITHFUL_BATCH, train)  # its statistics: one forward of the whole batch, as an evaluation
            work += (
                self.calls("summary", train, pbs) + self.calls("summary", batch, pbs) + self.evaluation(batch, batch)
            )
            work += self.evaluation((t + 1) * self.cpt * s["test"], pbs)
        return self.process("summary", "eval") + self.T * self.fixed["checkpoint_load"] + work

    def heldout(self, algorithm: str = "base") -> float:
        """A run's held-out samples (validation and test of the seen classes) at every checkpoint it
        keeps: per task its saved epochs (the first w, the end, probes.extra_epochs), w before-window
        slots and the live epoch (2w + 2 without extra epochs); `retrained` its end only."""
        s = self.sizes
        saved = grid.probe_epochs(0, self.E, self.w, self.cfg["probes"]["extra_epochs"])
        per_task = 1 if algorithm == "retrained" else len(saved) + self.w + 1
        evaluations = sum(self.evaluation((t + 1) * self.cpt * s[k]) for t in range(self.T) for k in ("val", "test"))
        return self.process("eval") + per_task * (self.T * self.fixed["checkpoint_load"] + evaluations)

    def dependence(self) -> float:
        """Penultimate features of every sample at the scorer's last checkpoint: one forward each, the
        training samples and the held-out ones in calls of probes.batch_size."""
        s, pbs = self.sizes, self.cfg["probes"]["batch_size"]
        forwards = self.evaluation(self.C * s["train"], pbs) + self.evaluation(self.C * (s["val"] + s["test"]), pbs)
        return self.process("eval") + self.fixed["checkpoint_load"] + forwards

    # ---------------------------------------------------------------- per rule
    def seconds(self, rule: str, wildcards: dict) -> float:
        """Estimated seconds of one job of ``rule`` (a key of :data:`RULES`) with ``wildcards``."""
        kind = RULES[rule]
        w = wildcards
        if kind == "train":  # tuning runs: random ordering, no filter, no test split
            ordering, filter_name = w.get("ordering", "random"), w.get("filter", "none")
            return self.train(int(w["task"]), ordering, w["algorithm"], filter_name, test=rule != "tune_task")
        if kind == "heldout":
            return self.heldout(w["algorithm"])
        if kind == "probe":
            return self.probe(int(w["boundary"]), w.get("filter", "none"))
        if kind == "probe_run":
            return self.probe_run(w.get("filter", "none"))
        return getattr(self, kind)()

    def minutes(self, rule: str, wildcards: dict, attempt: int = 1) -> int:
        """Minutes to request: the safety factor x the estimate, rounded up, doubled per retry."""
        return int(math.ceil(self.safety * self.seconds(rule, wildcards) / 60)) * attempt
