"""The incremental training protocol (Dohare et al. 2024), one task at a time.

A run trains task 0, 1, ... in separate jobs; task t trains on every kept training sample
of the first (t+1) * classes_per_task classes of the run's class order, with logits and
labels masked to those classes. The learning rate restarts every task and is multiplied
by ``lr_gamma`` at the task-epochs in ``lr_milestones``. At the end of a task the
best-validation weights (strict improvement) are restored; that model is the task's end
checkpoint and the next task starts from it (with the optimizer and RNG states).

The before-window of the boundary that ends the task lies on that path: the last ``w`` states up
to the best epoch B (B-w+1..B; kept in memory, snapshotted at every new best), written to the
window slots (slot j = epoch B-j). The live last epoch, which the restore discards, is written
too so the rollback can be measured on its own. Without early stopping B is the last epoch.

The memorization scorer (``train_scorer``) reuses the same epoch loop on all classes.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from memplast import augment, orderings
from memplast.algorithms import CBP, make_upgd, shrink_perturb_step, uses_cbp, uses_upgd
from memplast.data import Prepared
from memplast.device import cpu_generator, load_generator_state, to_device, to_host
from memplast.io import atomic_path, science_key
from memplast.models import build_model, eval_mode, head, per_sample_loss, reestimate_bn, save_checkpoint, seen_classes
from memplast.tracking import open_tracker

log = logging.getLogger("memplast.train")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("protocol.device is 'cuda' but no GPU is visible; use device: auto or cpu")
    return torch.device(name)


def stable_seed(*parts) -> int:
    """A 63-bit seed from any printable parts, identical across processes and machines."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def lr_at(task_epoch: int, lr: float, milestones, gamma: float) -> float:
    """Learning rate at 0-based ``task_epoch``: lr * gamma^(number of milestones <= task_epoch)."""
    return lr * gamma ** sum(task_epoch >= m for m in milestones)


def task_classes(order, task: int, classes_per_task: int) -> np.ndarray:
    """Classes seen at ``task`` (0-based): the first (task + 1) * classes_per_task of the order."""
    return np.asarray(order)[: (task + 1) * classes_per_task]


def memo_weights(memo: np.ndarray, alpha: float, lo: float, hi: float) -> np.ndarray:
    """Per-sample loss weight over one task's training set (design §7):
    v = clip(1 + alpha * z, lo, hi) with z = (memo - mean(memo)) / std(memo) (z = 0 if std = 0),
    then w = v / mean(v), so mean(w) = 1 and the effective learning rate is unchanged
    (after the renormalisation a weight may lie slightly outside [lo, hi])."""
    memo = np.asarray(memo, dtype=np.float64)
    sd = memo.std()
    z = (memo - memo.mean()) / sd if sd > 0 else np.zeros_like(memo)
    v = np.clip(1.0 + alpha * z, lo, hi)
    return v / v.mean()


# --------------------------------------------------------------------------- data on device
class DeviceData:
    """The prepared dataset as uint8 tensors on the training device; batches are normalized
    (and optionally augmented) on the fly, from row indices already on the device."""

    def __init__(self, prepared: Prepared, device: torch.device):
        self.p = prepared
        self.device = device
        self.images = torch.as_tensor(prepared.images).to(device)
        self.labels = torch.as_tensor(prepared.labels).to(device)
        self.mean, self.std = prepared.mean, prepared.std
        self._mean = to_device(np.asarray(prepared.mean, dtype=np.float32), device).view(1, -1, 1, 1)
        self._std = to_device(np.asarray(prepared.std, dtype=np.float32), device).view(1, -1, 1, 1)

    def batches(self, rows, batch_size: int, generator=None, aug: dict | None = None):
        """Inputs of ``rows`` in consecutive batches (for BatchNorm re-estimation)."""
        idx = self.index(rows)
        for start in range(0, len(rows), batch_size):
            yield self.take(idx[start : start + batch_size], generator, aug)[0]

    def index(self, rows) -> torch.Tensor:
        """Row numbers on the device (one non-blocking copy, e.g. once per epoch)."""
        return to_device(np.asarray(rows, dtype=np.int64), self.device)

    def take(self, idx: torch.Tensor, generator=None, aug: dict | None = None):
        """Normalized (augmented) images and labels of the rows ``idx`` (a device tensor)."""
        x = augment.normalize(self.images[idx], self._mean, self._std)
        if aug is not None:
            x = augment.augment(x, generator, aug["crop_padding"], aug["flip"], aug["rotation_degrees"])
        return x, self.labels[idx]

    def batch(self, rows, generator=None, aug: dict | None = None):
        return self.take(self.index(rows), generator, aug)

    def rows(self, split: str, classes) -> np.ndarray:
        return np.flatnonzero((self.p.split == split) & np.isin(self.p.labels, classes))

    def check_labels(self, rows: np.ndarray, seen) -> None:
        """On the host: every row's class is among the seen ones (no device synchronisation)."""
        if not np.isin(self.p.labels[rows], seen.classes).all():
            raise ValueError("a label is outside the class mask: the sample's class has not been seen")


@torch.no_grad()
def evaluate(
    model,
    data: DeviceData,
    rows: np.ndarray,
    mask: torch.Tensor,
    batch_size: int,
    generator=None,
    aug: dict | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy over ``rows`` with logits masked to the seen classes (eval-mode BN);
    with ``aug`` the inputs are augmented from ``generator`` (``protocol.test_augmentation``).
    Sums stay on the device and are read once."""
    seen = seen_classes(mask)
    data.check_labels(rows, seen)
    idx = data.index(rows)
    total_loss = torch.zeros((), dtype=torch.float64, device=data.device)
    correct = torch.zeros((), dtype=torch.long, device=data.device)
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            x, y = data.take(idx[start : start + batch_size], generator, aug)
            logits = model(x)
            total_loss += per_sample_loss(logits, y, seen).sum().double()
            correct += (logits.masked_fill(~seen.mask, float("-inf")).argmax(1) == y).sum()
    total_loss, correct = to_host(total_loss, correct)
    n = max(len(rows), 1)
    return float(total_loss) / n, int(correct) / n


def log_epoch(where: str, row: dict, n_epochs: int, eta_seconds: float) -> None:
    """One progress line per epoch: task-epoch, train loss/acc, val acc, lr, images/s, ETA of the task."""
    log.info(
        "%s: epoch %d/%d train loss %.4f acc %.4f | val acc %.4f | lr %.3g | %.0f img/s | ETA %s",
        where,
        row["task_epoch"],
        n_epochs,
        row["train_loss"],
        row["train_acc"],
        row["val_acc"],
        row["lr"],
        row["images_per_sec"],
        _hms(eta_seconds),
    )


def _hms(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class NonFiniteLoss(FloatingPointError):
    pass


def train_epoch(
    model,
    optimizer,
    data: DeviceData,
    rows: np.ndarray,
    mask,
    batch_size: int,
    generator,
    aug: dict | None,
    weights: torch.Tensor | None = None,
    after_step=None,
    where: str = "",
):
    """One pass over ``rows`` in the given order. Loss per batch = mean_i w_i * loss_i.

    ``after_step`` runs after every optimizer step; if it has ``wants_acts`` it receives the
    batch's ReLU outputs (continual backprop). The step never waits for the device: rows go to
    the device once, the mask is an index tensor, and losses, accuracy and the finite-loss check
    are read once, after the epoch (a non-finite loss raises then, before any state is saved).
    Returns (per-sample losses in ``rows`` order as a numpy array, accuracy).
    """
    model.train()
    wants_acts = getattr(after_step, "wants_acts", False)
    seen = seen_classes(mask)
    data.check_labels(rows, seen)
    idx = data.index(rows)
    losses = torch.empty(len(rows), device=data.device)
    batch_loss = torch.empty(math.ceil(len(rows) / batch_size), device=data.device)
    correct = torch.zeros((), dtype=torch.long, device=data.device)
    for b, start in enumerate(range(0, len(rows), batch_size)):
        x, y = data.take(idx[start : start + batch_size], generator, aug)
        out = model(x, return_acts=True) if wants_acts else model(x)
        logits = out.logits if wants_acts else out
        loss_i = per_sample_loss(logits, y, seen)
        w = weights[start : start + batch_size] if weights is not None else None
        loss = (loss_i * w).mean() if w is not None else loss_i.mean()
        batch_loss[b] = loss.detach()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if wants_acts:
            after_step(out.acts)
        elif after_step is not None:
            after_step()
        losses[start : start + y.shape[0]] = loss_i.detach()
        correct += (logits.detach().masked_fill(~seen.mask, float("-inf")).argmax(1) == y).sum()
    losses, batch_loss, correct = to_host(losses, batch_loss, correct)
    bad = np.flatnonzero(~np.isfinite(batch_loss))
    if len(bad):
        raise NonFiniteLoss(
            f"non-finite loss ({batch_loss[bad[0]]}) in {where}, batch starting at {bad[0] * batch_size}; "
            "lower protocol.lr or check the data"
        )
    return losses, int(correct) / max(len(rows), 1)


def make_optimizer(model, lr: float, momentum: float, weight_decay: float):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def _reinit(module: torch.nn.Module, seed: int) -> None:
    """Re-draw a module's parameters with the reference init from ``seed``: drawn on the CPU
    (a copy of the module) and copied to the module's device, so the same on any device."""
    from memplast.models import init_reference

    cpu = copy.deepcopy(module).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)  # CPU only: CUDA generators untouched
        init_reference(cpu)
    with torch.no_grad():
        for p, q in zip(module.parameters(), cpu.parameters(), strict=True):
            p.copy_(q)


def _loaded(model, weights):
    """``model`` holding ``weights`` (the caller reloads its own state afterwards)."""
    model.load_state_dict(weights)
    return model


# --------------------------------------------------------------------------- one task of a run
@dataclass
class RunSpec:
    """Everything that identifies a run and its task job."""

    name: str  # run path, e.g. order0/none/random/none/base
    order_seed: int  # seeds init, data order, augmentation and noise: shared by all runs of the order
    class_order: np.ndarray
    task: int
    kept_ids: np.ndarray  # training sample ids kept by the filter
    ordering: str
    weighting_alpha: float
    algorithm: str
    memo: pd.Series | None = None  # memo score by sample_id (orderings, weighting)
    file_order: np.ndarray | None = None
    checkpoint_epochs: list = field(default_factory=list)  # global epochs to save in this task


def task_epoch_range(task: int, epochs_per_task: int) -> range:
    """Global 1-based epochs of a 0-based task: t*E+1 .. (t+1)*E."""
    return range(task * epochs_per_task + 1, (task + 1) * epochs_per_task + 1)


def probe_epochs(task: int, epochs_per_task: int, window: int, extra=()) -> list[int]:
    """Epochs of ``task`` saved under their epoch number: its first ``window`` epochs (the
    after-window of the boundary before it), its end checkpoint and any extra task-epochs.
    The before-window of the boundary after it goes to the window slots (see ``run_task``)."""
    first = task * epochs_per_task
    epochs = set(range(first + 1, first + window + 1)) | {first + epochs_per_task}
    epochs |= {first + e for e in extra if 1 <= e <= epochs_per_task}
    return sorted(epochs)


def _side_gen(*parts) -> torch.Generator:
    """A CPU generator for draws outside the training stream (BN re-estimation, test augmentation),
    seeded from ``parts``, so they never shift the run's own draws and need no resume state."""
    return torch.Generator().manual_seed(stable_seed(*parts))


def model_meta(model_cfg: dict, num_classes: int, in_channels: int, **extra) -> dict:
    return {
        "arch": model_cfg["arch"],
        "width": model_cfg["width"],
        "num_classes": num_classes,
        "in_channels": in_channels,
        **extra,
    }


def run_task(
    spec: RunSpec,
    prepared: Prepared,
    protocol: dict,
    model_cfg: dict,
    aug_cfg: dict,
    ordering_cfg: dict,
    weighting_cfg: dict,
    prev_state: str | None,
    end_state: str,
    checkpoints: dict,
    metrics_path: str,
    order_log_path: str,
    resume_path: str,
    provenance: dict,
    stop_after_epoch: int | None = None,
    window_paths: list | None = None,
    live_path: str | None = None,
) -> pd.DataFrame:
    """Train one task of one run and write its outputs (see rules/train.smk).

    ``checkpoints`` maps global epoch -> path. ``resume_path`` holds the state every
    ``protocol.state_every`` epochs; a rerun continues from it and ends with the same weights
    as an uninterrupted run. ``stop_after_epoch`` (tests) raises after that global epoch,
    as a kill would. ``window_paths[j]`` receives the weights of epoch B - j (B = best epoch, or
    the last epoch without early stopping); a slot before the task's first epoch gets an empty
    marker ({"meta": {"empty": True, ...}}). ``live_path`` receives the live last-epoch weights.
    ``protocol["logging"]`` (runtime.with_runtime): experiment tracking (memplast/tracking.py).
    """
    device = resolve_device(protocol["device"])
    t, E, cpt = spec.task, protocol["epochs_per_task"], protocol["classes_per_task"]
    where = f"run {spec.name}, task {t}"
    tracker = open_tracker(protocol.get("logging"), spec.name, t, provenance.get("config", {}))
    data = DeviceData(prepared, device)
    seen = task_classes(spec.class_order, t, cpt)
    mask = seen_classes(seen, prepared.n_classes, device)  # index tensors, built once per task
    in_task = np.isin(prepared.labels, seen) & (prepared.split == "train")
    kept = in_task & np.isin(prepared.sample_id, spec.kept_ids)
    train_rows = np.flatnonzero(kept)
    train_ids = prepared.sample_id[train_rows]
    val_rows, test_rows = data.rows("val", seen), data.rows("test", seen)
    row_of = pd.Series(train_rows, index=train_ids)
    aug = aug_cfg if any([aug_cfg["crop_padding"], aug_cfg["flip"], aug_cfg["rotation_degrees"]]) else None
    log.info(
        "%s: %d classes seen, %d train / %d val / %d test samples, device %s",
        where,
        len(seen),
        len(train_rows),
        len(val_rows),
        len(test_rows),
        device,
    )

    meta = model_meta(model_cfg, prepared.n_classes, prepared.images.shape[1])
    init_seed = stable_seed("init", spec.order_seed)
    model = build_model(meta["arch"], meta["num_classes"], meta["in_channels"], meta["width"])
    _reinit(model, init_seed)
    model.to(device)
    base_lr = protocol["lr"]
    if uses_upgd(spec.algorithm):
        base_lr = protocol["upgd"]["lr"] or protocol["lr"]
        optimizer = make_upgd(
            model, protocol["upgd"], base_lr, protocol["weight_decay"], stable_seed("upgd", spec.order_seed)
        )
    else:
        optimizer = make_optimizer(model, protocol["lr"], protocol["momentum"], protocol["weight_decay"])
    cbp = CBP(model, protocol["cbp"], stable_seed("cbp", spec.order_seed)) if uses_cbp(spec.algorithm) else None
    # Common random numbers: the streams depend on the class-order seed only, so every run of a
    # class order (any algorithm or data condition) shares init, data order and augmentation.
    generator = cpu_generator(stable_seed("run", spec.order_seed))
    noise_gen = cpu_generator(stable_seed("noise", spec.order_seed))  # CPU whatever the device (saved states)

    if prev_state is not None:
        state = torch.load(prev_state, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        load_generator_state(generator, state["generator"], f"{prev_state}: generator")
        load_generator_state(noise_gen, state["noise_generator"], f"{prev_state}: noise_generator")
        if cbp is not None:
            cbp.load_state_dict(state["cbp"])
    keep = protocol["keep_momentum_on_reset"]  # the reference keeps SGD momentum across re-initialisations
    if t > 0 and spec.algorithm == "retrained":
        _reinit(model, stable_seed("init", spec.order_seed, t))
        if not keep:
            optimizer = make_optimizer(model, protocol["lr"], protocol["momentum"], protocol["weight_decay"])
    elif t > 0 and spec.algorithm == "head_reset":
        _reinit(head(model), stable_seed("head", spec.order_seed, t))
        for p in head(model).parameters() if not keep else ():
            optimizer.state.pop(p, None)
    if protocol["reset_momentum"]:
        optimizer.state.clear()

    after_step = cbp
    if spec.algorithm == "shrink_perturb":
        after_step = shrink_perturb_step(model, protocol["shrink_perturb"], noise_gen)
    # BatchNorm statistics re-estimated on a shuffled pass after a non-random ordering (design §7)
    bn_reestimate = ordering_cfg["bn_reestimate"] and spec.ordering != "random"
    test_aug = aug if protocol["test_augmentation"] == "reference" else None
    if bn_reestimate:
        log.info("%s: BatchNorm statistics re-estimated on a shuffled pass before every evaluation", where)

    weight_of = None
    if spec.weighting_alpha != 0.0:
        w = memo_weights(
            spec.memo.loc[train_ids].to_numpy(), spec.weighting_alpha, weighting_cfg["lo"], weighting_cfg["hi"]
        )
        weight_of = pd.Series(w, index=train_ids)

    memo_task = spec.memo.loc[train_ids].to_numpy() if spec.memo is not None else None
    base = orderings.base_order(spec.ordering, train_ids, memo_task, generator, ordering_cfg["strata"], spec.file_order)

    # ------------------------------------------------------------------ resume
    start_epoch, best, rows, order_rows = 0, None, [], []
    # Window checkpoints are written to a staging directory next to the resume file (which Snakemake
    # does not delete when it kills a job) and moved onto the outputs when the task ends, so a
    # resume finds them on disk and the resume file never holds copies of them.
    staging = Path(resume_path).with_suffix(".ckpt")
    staged = lambda g: staging / f"e{g}.pt"  # noqa: E731
    runtime = {"threads": torch.get_num_threads(), "device": str(device), "torch": torch.__version__}
    provenance = {**provenance, "runtime": {**provenance.get("runtime", {}), **runtime}}
    key = science_key(provenance)
    recent = collections.deque(maxlen=len(window_paths or ()))  # (epoch, CPU weights) of the last w epochs
    if Path(resume_path).exists():
        r = torch.load(resume_path, map_location=device, weights_only=False)
        # the before-window needs the states of the epochs before the kill: same window size only
        fits = r["spec"] == spec.name and r["task"] == t and r["config"] == key and r.get("window", 0) == recent.maxlen
        if fits and not ("staged" in r and all(staged(g).exists() for g in r["staged"])):
            log.info("%s: resume file %s lacks its staged window checkpoints; the task restarts", where, resume_path)
            fits = False
        if fits and r.get("runtime") != runtime:
            # CPU reductions (convolution backward above all) depend on the thread count, GPU
            # kernels on the device: a resume under other settings is not bitwise the same run.
            change = f"saved under {r.get('runtime')}, now {runtime}"
            if protocol.get("deterministic", True):
                log.warning(
                    "%s: not resuming from %s (%s): protocol.deterministic promises bitwise identity, "
                    "so the task restarts from its first epoch",
                    where,
                    resume_path,
                    change,
                )
                fits = False
            else:
                log.warning(
                    "%s: resuming from %s under other runtime settings (%s): results will differ "
                    "bitwise from an uninterrupted run",
                    where,
                    resume_path,
                    change,
                )
        if fits:
            model.load_state_dict(r["model"])
            optimizer.load_state_dict(r["optimizer"])
            load_generator_state(generator, r["generator"], f"{resume_path}: generator")
            load_generator_state(noise_gen, r["noise_generator"], f"{resume_path}: noise_generator")
            if cbp is not None:
                cbp.load_state_dict(r["cbp"])
            base, best, rows, order_rows, start_epoch = r["base"], r["best"], r["metrics"], r["orders"], r["epoch"]
            recent.extend(r.get("recent", []))
            log.info("%s: resuming after task-epoch %d from %s", where, start_epoch, resume_path)
        elif r["config"] != key or r["spec"] != spec.name or r["task"] != t or r.get("window", 0) != recent.maxlen:
            log.info("%s: ignoring stale resume file %s", where, resume_path)

    best_acc = best["val_acc"] if best else -math.inf
    t_start = time.perf_counter()
    for e in range(start_epoch, E):
        g = t * E + e + 1
        lr = lr_at(e, base_lr, protocol["lr_milestones"], protocol["lr_gamma"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = orderings.epoch_order(base, train_ids, generator, ordering_cfg["block_size"])
        order_rows.append(
            {
                "task": t,
                "epoch": g,
                "n": len(order),
                "hash": orderings.order_hash(order),
                **({"order": order.tolist()} if ordering_cfg["log_full_order"] else {}),
            }
        )
        w = None if weight_of is None else to_device(weight_of.loc[order].to_numpy(), device, torch.float32)
        t0 = time.perf_counter()
        losses, train_acc = train_epoch(
            model,
            optimizer,
            data,
            row_of.loc[order].to_numpy(),
            mask,
            protocol["batch_size"],
            generator,
            aug,
            w,
            after_step,
            f"{where}, epoch {g}",
        )
        seconds = time.perf_counter() - t0
        if bn_reestimate:
            shuffled = row_of.to_numpy()[
                torch.randperm(len(row_of), generator=_side_gen("bn", spec.order_seed, g)).numpy()
            ]
            reestimate_bn(
                model, data.batches(shuffled, protocol["batch_size"], _side_gen("bn-aug", spec.order_seed, g), aug)
            )
        val_loss, val_acc = evaluate(model, data, val_rows, mask, protocol["eval_batch_size"])
        test_loss, test_acc = evaluate(
            model,
            data,
            test_rows,
            mask,
            protocol["eval_batch_size"],
            _side_gen("test-aug", spec.order_seed, g),
            test_aug,
        )
        rows.append(
            {
                "kind": "epoch",
                "task": t,
                "task_epoch": e + 1,
                "epoch": g,
                "lr": lr,
                "train_loss": float(losses.mean()),
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "seconds": seconds,
                "images_per_sec": len(order) / seconds,
                "bn_reestimated": bn_reestimate,
                "replaced": cbp.pop_replaced() if cbp is not None else 0,
            }
        )
        log_epoch(where, rows[-1], E, (time.perf_counter() - t_start) / (e + 1 - start_epoch) * (E - e - 1))
        tracker.log_epoch(rows[-1])
        if recent.maxlen:
            recent.append((g, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}))
        if val_acc > best_acc:  # strict: the earliest best epoch wins ties
            best_acc = val_acc
            best = {"val_acc": val_acc, "epoch": g, "model": copy.deepcopy(model.state_dict()), "window": list(recent)}
        if g in checkpoints and g != (t + 1) * E:
            save_checkpoint(staged(g), model, {**meta, "epoch": g, "task": t, "seen": seen.tolist()}, provenance)
        if (e + 1) % protocol["state_every"] == 0 and e + 1 < E:
            with atomic_path(resume_path) as tmp:
                torch.save(
                    {
                        "spec": spec.name,
                        "task": t,
                        "config": key,
                        "runtime": runtime,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(),
                        "noise_generator": noise_gen.get_state(),
                        "base": base,
                        "best": best,
                        "metrics": rows,
                        "orders": order_rows,
                        "epoch": e + 1,
                        "staged": [g for g in checkpoints if g <= t * E + e + 1 and g != (t + 1) * E],
                        "recent": list(recent),
                        "window": recent.maxlen,
                        "cbp": cbp.state_dict() if cbp is not None else None,
                    },
                    tmp,
                )
        if stop_after_epoch is not None and g >= stop_after_epoch:
            raise KeyboardInterrupt(f"stopped after epoch {g} (test hook)")

    end_epoch = (t + 1) * E
    restore = protocol["early_stopping"] and best is not None
    best_epoch = best["epoch"] if restore else end_epoch
    ckpt_meta = {**meta, "task": t, "seen": seen.tolist(), "best_epoch": best_epoch}
    if live_path is not None:
        save_checkpoint(live_path, model, {**ckpt_meta, "epoch": end_epoch, "live": True}, provenance)
    window = best["window"] if restore else list(recent)
    live_state = copy.deepcopy(model.state_dict()) if window_paths else None
    for j, path in enumerate(window_paths or ()):
        if j < len(window):
            g, weights = window[-1 - j]
            save_checkpoint(path, _loaded(model, weights), {**ckpt_meta, "epoch": g, "slot": j}, provenance)
        else:  # B - j precedes the task's first epoch: not on this task's path
            with atomic_path(path) as tmp:
                torch.save({"meta": {**ckpt_meta, "epoch": None, "slot": j, "empty": True}}, tmp)
    if window_paths:
        model.load_state_dict(live_state)
    if restore:
        model.load_state_dict(best["model"])
        log.info(
            "%s: restored best-validation weights of epoch %d (val acc %.4f)", where, best["epoch"], best["val_acc"]
        )
    val_loss, val_acc = evaluate(model, data, val_rows, mask, protocol["eval_batch_size"])
    test_loss, test_acc = evaluate(
        model,
        data,
        test_rows,
        mask,
        protocol["eval_batch_size"],
        _side_gen("test-aug", spec.order_seed, "end", t),
        test_aug,
    )
    rows.append(
        {
            "kind": "end",
            "task": t,
            "task_epoch": E,
            "epoch": end_epoch,
            "lr": float("nan"),
            "train_loss": float("nan"),
            "train_acc": float("nan"),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "seconds": float("nan"),
            "images_per_sec": float("nan"),
            "best_epoch": best["epoch"] if best else end_epoch,
            "bn_reestimated": bn_reestimate,
            "replaced": int(sum(r["replaced"] for r in rows if r["kind"] == "epoch" and r["task"] == t)),
        }
    )
    for g in sorted(checkpoints):
        if g != end_epoch:
            Path(checkpoints[g]).parent.mkdir(parents=True, exist_ok=True)
            staged(g).replace(checkpoints[g])
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()
    if end_epoch in checkpoints:
        save_checkpoint(
            checkpoints[end_epoch], model, {**meta, "epoch": end_epoch, "task": t, "seen": seen.tolist()}, provenance
        )
    with atomic_path(end_state) as tmp:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "noise_generator": noise_gen.get_state(),
                "cbp": cbp.state_dict() if cbp is not None else None,
                "meta": {**meta, "epoch": end_epoch, "task": t, "seen": seen.tolist()},
                "provenance_json": json.dumps(provenance, default=str),
            },
            tmp,
        )
    metrics = pd.DataFrame(rows)
    from memplast.io import write_parquet

    write_parquet(metrics.assign(run=spec.name), metrics_path, provenance)
    write_parquet(pd.DataFrame(order_rows), order_log_path, provenance)
    Path(resume_path).unlink(missing_ok=True)
    log.info("%s: end test acc %.4f, val acc %.4f", where, test_acc, val_acc)
    tracker.log_summary(rows[-1])
    tracker.close()
    return metrics


# --------------------------------------------------------------------------- memorization scorer
def scorer_grid(epochs: int, every: int) -> list[int]:
    """Epochs (1-based) whose scorer checkpoints are scored: every ``every``-th epoch."""
    return list(range(every, epochs + 1, every))


def train_scorer(
    prepared: Prepared,
    scorer: dict,
    aug_cfg: dict,
    checkpoints: dict,
    metrics_path: str,
    csl_path: str,
    device: str,
    seed: int,
    provenance: dict,
    eval_batch_size: int = 1000,
):
    """Train the memorization scorer on all training samples of all classes (not incremental).

    SGD with lr dropped by ``lr_gamma`` at the ``milestones_frac`` fractions of training;
    saves the weights at the epochs in ``checkpoints`` and the cumulative sample loss
    (sum over epochs of each sample's training loss) to ``csl_path``.
    """
    from memplast.curvature import CSLAccumulator
    from memplast.io import write_parquet

    device = resolve_device(device)
    data = DeviceData(prepared, device)
    classes = np.arange(prepared.n_classes)
    mask = seen_classes(classes, prepared.n_classes, device)
    train_rows, val_rows, test_rows = (data.rows(s, classes) for s in ("train", "val", "test"))
    meta = {
        "arch": scorer["arch"],
        "width": scorer["width"],
        "num_classes": prepared.n_classes,
        "in_channels": prepared.images.shape[1],
    }
    model = build_model(meta["arch"], meta["num_classes"], meta["in_channels"], meta["width"])
    _reinit(model, stable_seed("scorer", seed))
    model.to(device)
    optimizer = make_optimizer(model, scorer["lr"], scorer["momentum"], scorer["weight_decay"])
    generator = cpu_generator(stable_seed("scorer-run", seed))
    aug = aug_cfg if scorer["augment"] else None
    milestones = [math.floor(f * scorer["epochs"]) for f in scorer["milestones_frac"]]
    csl = CSLAccumulator()
    rows = []
    t_start = time.perf_counter()
    for e in range(scorer["epochs"]):
        lr = lr_at(e, scorer["lr"], milestones, scorer["lr_gamma"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = train_rows[torch.randperm(len(train_rows), generator=generator).numpy()]
        t0 = time.perf_counter()
        losses, train_acc = train_epoch(
            model,
            optimizer,
            data,
            order,
            mask,
            scorer["batch_size"],
            generator,
            aug,
            where=f"memo scorer, epoch {e + 1}",
        )
        seconds = time.perf_counter() - t0
        csl.add(prepared.sample_id[order], losses)
        val_loss, val_acc = evaluate(model, data, val_rows, mask, eval_batch_size)
        test_loss, test_acc = evaluate(model, data, test_rows, mask, eval_batch_size)
        rows.append(
            {
                "epoch": e + 1,
                "lr": lr,
                "train_loss": float(losses.mean()),
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "seconds": seconds,
                "images_per_sec": len(order) / seconds,
            }
        )
        log_epoch(
            "memo scorer",
            {**rows[-1], "task_epoch": e + 1},
            scorer["epochs"],
            (time.perf_counter() - t_start) / (e + 1) * (scorer["epochs"] - e - 1),
        )
        if e + 1 in checkpoints:
            save_checkpoint(checkpoints[e + 1], model, {**meta, "epoch": e + 1}, provenance)
    log.info("scorer: final train acc %.4f, val acc %.4f, test acc %.4f", train_acc, val_acc, test_acc)
    write_parquet(pd.DataFrame(rows), metrics_path, provenance)
    write_parquet(csl.to_frame(), csl_path, provenance)
