"""Per task of one run: end-of-task accuracy and model-level metrics of the end checkpoint."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from memplast import io  # noqa: E402
from memplast.augment import normalize  # noqa: E402
from memplast.checkpoints import load_checkpoint  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402
from memplast.data import load_prepared  # noqa: E402
from memplast.device import resolve_device  # noqa: E402
from memplast.masks import class_mask  # noqa: E402
from memplast.model_metrics import model_metrics, per_class_accuracy  # noqa: E402
from memplast.runtime import resolve as runtime_of  # noqa: E402


def main(
    prepared: str,
    ends: list,
    metrics: list,
    summary: str,
    per_class: str,
    run: dict,
    cfg: dict,
    runtime: dict | None = None,
):
    """Write SUMMARY (one row per task) and PER_CLASS (test accuracy per class and task)."""
    rt = runtime_of(cfg, runtime)
    device = resolve_device(rt["device"])
    data = load_prepared(prepared)
    rows, classes = [], []
    for path, mpath in zip(ends, metrics):
        model, meta = load_checkpoint(path, device)
        seen = meta["seen"]
        mask = class_mask(seen, data.n_classes, device)
        end = io.read_parquet(mpath).query("kind == 'end'").iloc[0]
        # model-level metrics on all training samples of the seen classes (eval BN, and the
        # reference's 1000-sample train-mode-BN variant for comparison with the paper)
        tr = np.flatnonzero((data.split == "train") & np.isin(data.labels, seen))
        x, y = normalize(torch.as_tensor(data.images[tr]), data.mean, data.std), torch.as_tensor(data.labels[tr])
        m = model_metrics(model, x, y, mask, rt["probe_batch_size"], device)
        faithful = model_metrics(model, x, y, mask, rt["probe_batch_size"], device, faithful=True, seed=0)
        te = np.flatnonzero((data.split == "test") & np.isin(data.labels, seen))
        acc = per_class_accuracy(
            model,
            normalize(torch.as_tensor(data.images[te]), data.mean, data.std),
            torch.as_tensor(data.labels[te]),
            mask,
            rt["probe_batch_size"],
            device,
        )
        classes.append(acc.assign(task=meta["task"]))
        rows.append(
            {
                "task": meta["task"],
                "epoch": meta["epoch"],
                "best_epoch": end["best_epoch"],
                "test_acc": end["test_acc"],
                "val_acc": end["val_acc"],
                "dormant_units": m["dormant_frac"],
                "effective_rank": m["effective_rank"],
                # smallest k whose singular values reach 99% of their sum (Dohare et al.'s "stable rank")
                "rank99": m["rank99"],
                # the classical stable rank ||Phi||_F^2 / ||Phi||_2^2
                "stable_rank": m["stable_rank"],
                "mean_abs_weight": m["mean_abs_weight"],
                "dormant_units_faithful": faithful["dormant_frac"],
                "effective_rank_faithful": faithful["effective_rank"],
                # units re-initialised by continual backprop in the task (0 for other algorithms)
                "replaced": int(end["replaced"]) if "replaced" in end and pd.notna(end["replaced"]) else 0,
            }
        )
    keys = {"order_seed": int(run["seed"]), **{f: run[f] for f in ("filter", "ordering", "weighting", "algorithm")}}
    prov = io.provenance(cfg, run=run)
    io.write_parquet(pd.DataFrame(rows).assign(**keys), summary, prov)
    io.write_parquet(pd.concat(classes, ignore_index=True).assign(**keys), per_class, prov)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
