"""Study-wide training curves: every run's per-epoch metrics in one table, runs whose loss is
non-finite or diverging flagged, and a learning-curve figure of all runs.

A run is flagged
- ``non-finite`` if any epoch's train or validation loss is NaN or infinite;
- ``diverging`` if in some task its last-epoch train loss exceeds ``factor`` (default 2) times the
  lowest train loss it reached earlier in that task (the loss rose far above its best, which a
  step-decayed SGD run does not do).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from memplast import io

RUN_KEYS = ["order_seed", "filter", "ordering", "weighting", "algorithm"]
DIVERGENCE_FACTOR = 2.0


def parse_run(run: str) -> dict:
    """'order0/none/random/none/base' -> {order_seed: 0, filter: 'none', ...}."""
    parts = run.split("/")
    if len(parts) != 5 or not parts[0].startswith("order"):
        raise ValueError(f"run name {run!r} is not order<seed>/<filter>/<ordering>/<weighting>/<algorithm>")
    return {"order_seed": int(parts[0][len("order") :]), **dict(zip(RUN_KEYS[1:], parts[1:]))}


def join_metrics(paths) -> pd.DataFrame:
    """Every task's metrics.parquet (rows of kind 'epoch') in one long table keyed by run and epoch."""
    frames = []
    for p in paths:
        m = io.read_parquet(p)
        frames.append(m[m["kind"] == "epoch"])
    curves = pd.concat(frames, ignore_index=True)
    keys = pd.DataFrame([parse_run(r) for r in curves["run"]], index=curves.index)
    curves = pd.concat([curves.drop(columns=["kind"]), keys], axis=1)
    return curves.sort_values(["run", "epoch"], kind="stable").reset_index(drop=True)


def flag_runs(curves: pd.DataFrame, factor: float = DIVERGENCE_FACTOR) -> pd.DataFrame:
    """One row per run: ``status`` ok / non-finite / diverging, the task where it was seen, and
    the largest ratio (last-epoch train loss / lowest earlier train loss of the task)."""
    rows = []
    for run, r in curves.groupby("run", sort=True):
        finite = np.isfinite(r[["train_loss", "val_loss"]].to_numpy(dtype=float)).all(axis=1)
        status, task, worst = "ok", None, 1.0
        if not finite.all():
            status, task = "non-finite", int(r.loc[~finite, "task"].iloc[0])
        else:
            for t, g in r.groupby("task", sort=True):
                loss = g.sort_values("epoch")["train_loss"].to_numpy(dtype=float)
                if len(loss) < 2:
                    continue
                ratio = loss[-1] / max(loss[:-1].min(), 1e-12)
                if ratio > worst:
                    worst = ratio
                if ratio > factor and status == "ok":
                    status, task = "diverging", int(t)
        rows.append({"run": run, "status": status, "task": task, "max_loss_ratio": worst})
    return pd.DataFrame(rows)


def plot(curves: pd.DataFrame, flags: pd.DataFrame, path, prov: dict) -> None:
    """Train loss (log scale) and validation accuracy against the global epoch, one line per run;
    flagged runs in red with their status in the legend. Writes ``path`` (PDF) and the PNG beside it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    status = dict(zip(flags["run"], flags["status"]))
    conditions = sorted({r.split("/", 1)[1] for r in status})
    cmap = {c: f"C{i % 10}" for i, c in enumerate(c for c in conditions)}
    labelled = set()
    for run, r in curves.groupby("run", sort=True):
        cond, bad = run.split("/", 1)[1], status[run] != "ok"
        style = (
            {"color": "red", "linewidth": 1.4, "linestyle": "--"}
            if bad
            else {"color": cmap[cond], "linewidth": 0.8, "alpha": 0.7}
        )
        label = f"{run}: {status[run]}" if bad else (cond if cond not in labelled else None)
        labelled.add(cond)
        loss = r["train_loss"].where(np.isfinite(r["train_loss"]) & (r["train_loss"] > 0))
        ax_loss.plot(r["epoch"], loss, label=label, **style)
        ax_acc.plot(r["epoch"], r["val_acc"], **style)
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="epoch (all tasks)", ylabel="train loss (log scale)", title="training loss, every run")
    ax_acc.set(xlabel="epoch (all tasks)", ylabel="validation accuracy (seen classes)", title="validation accuracy")
    n_bad = int((flags["status"] != "ok").sum())
    fig.suptitle(f"{len(flags)} runs; {n_bad} flagged (non-finite or diverging loss, red dashed)", fontsize=10)
    ax_loss.legend(fontsize=6, loc="upper right", title="condition", title_fontsize=7)
    pdf = Path(path)
    prov_json = json.dumps(dict(prov), default=str, sort_keys=True)
    with io.atomic_path(pdf) as tmp:  # provenance in Subject, as memplast.io.read_provenance reads it
        fig.savefig(tmp, format="pdf", metadata={"Title": pdf.stem, "Subject": prov_json, "CreationDate": None})
    with io.atomic_path(pdf.with_suffix(".png")) as tmp:
        fig.savefig(tmp, format="png", dpi=120, metadata={"Title": pdf.stem, "Description": prov_json})
