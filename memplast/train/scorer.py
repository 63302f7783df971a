"""The memorization scorer: the same network trained on all classes at once (Garg et al.'s protocol),
with the incremental runs' epoch step (:func:`epoch.fit_epoch`, :func:`epoch.evaluate_splits`)."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pandas as pd
import torch

from memplast.checkpoints import model_meta, save_checkpoint
from memplast.curvature import CSLAccumulator
from memplast.data import Prepared
from memplast.device import cpu_generator, resolve_device, stable_seed
from memplast.grid import lr_at
from memplast.io import write_parquet
from memplast.masks import seen_classes
from memplast.models import build_model, reinit
from memplast.train.device_data import DeviceData
from memplast.train.epoch import evaluate_splits, fit_epoch, log_epoch

log = logging.getLogger("memplast.train")


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
    device = resolve_device(device)
    data = DeviceData(prepared, device)
    classes = np.arange(prepared.n_classes)
    mask = seen_classes(classes, prepared.n_classes, device)
    train_rows, val_rows, test_rows = (data.rows(s, classes) for s in ("train", "val", "test"))
    meta = model_meta(scorer["arch"], scorer["width"], prepared.n_classes, prepared.images.shape[1])
    model = build_model(meta["arch"], meta["num_classes"], meta["in_channels"], meta["width"])
    reinit(model, stable_seed("scorer", seed))
    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=scorer["lr"], momentum=scorer["momentum"], weight_decay=scorer["weight_decay"]
    )
    generator = cpu_generator(stable_seed("scorer-run", seed))
    aug = aug_cfg if scorer["augment"] else None
    milestones = [math.floor(f * scorer["epochs"]) for f in scorer["milestones_frac"]]
    csl = CSLAccumulator()
    rows = []
    t_start = time.perf_counter()
    for e in range(scorer["epochs"]):
        lr = lr_at(e, scorer["lr"], milestones, scorer["lr_gamma"])
        order = train_rows[torch.randperm(len(train_rows), generator=generator).numpy()]
        losses, train_acc, seconds = fit_epoch(
            model, optimizer, data, order, mask, lr, scorer["batch_size"], generator, aug,
            where=f"memo scorer, epoch {e + 1}",
        )  # fmt: skip
        csl.add(prepared.sample_id[order], losses)
        ev = evaluate_splits(model, data, mask, eval_batch_size, val_rows, test_rows)
        rows.append({"epoch": e + 1, "lr": lr, "train_loss": float(losses.mean()), "train_acc": train_acc, **ev,
                     "seconds": seconds, "images_per_sec": len(order) / seconds})  # fmt: skip
        eta = (time.perf_counter() - t_start) / (e + 1) * (scorer["epochs"] - e - 1)
        log_epoch("memo scorer", {**rows[-1], "task_epoch": e + 1}, scorer["epochs"], eta)
        if e + 1 in checkpoints:
            save_checkpoint(checkpoints[e + 1], model, {**meta, "epoch": e + 1}, provenance)
    log.info("scorer: final train acc %.4f, val acc %.4f, test acc %.4f", train_acc, ev["val_acc"], ev["test_acc"])
    write_parquet(pd.DataFrame(rows), metrics_path, provenance)
    write_parquet(csl.to_frame(), csl_path, provenance)
