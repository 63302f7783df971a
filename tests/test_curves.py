"""Study-wide training curves: joining per-task metrics, flagging non-finite and diverging runs,
and the learning-curve figure (memplast/curves.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memplast import curves, io


def _task_metrics(run: str, task: int, losses, epochs_per_task: int) -> pd.DataFrame:
    rows = [
        {
            "kind": "epoch",
            "task": task,
            "task_epoch": e + 1,
            "epoch": task * epochs_per_task + e + 1,
            "lr": 0.1,
            "train_loss": loss,
            "train_acc": 0.5,
            "val_loss": loss * 1.1,
            "val_acc": 0.4,
            "test_loss": loss,
            "test_acc": 0.4,
            "seconds": 1.0,
            "images_per_sec": 100.0,
        }
        for e, loss in enumerate(losses)
    ]
    rows.append(
        {
            "kind": "end",
            "task": task,
            "task_epoch": epochs_per_task,
            "epoch": (task + 1) * epochs_per_task,
            "lr": np.nan,
            "train_loss": np.nan,
            "train_acc": np.nan,
            "val_loss": 1.0,
            "val_acc": 0.4,
            "test_loss": 1.0,
            "test_acc": 0.4,
            "seconds": np.nan,
            "images_per_sec": np.nan,
            "best_epoch": 1,
        }
    )
    return pd.DataFrame(rows).assign(run=run)


@pytest.fixture
def study(tmp_path):
    """Four runs of two 4-epoch tasks: healthy (loss jumps at the boundary, falls within tasks),
    NaN validation loss, loss tripling within task 1, and loss rising 1.5x within a task."""
    losses = {
        "order0/none/random/none/base": ([2.0, 1.0, 0.6, 0.5], [3.0, 1.5, 0.9, 0.8]),
        "order1/none/random/none/base": ([2.0, 1.0, 0.6, 0.5], [3.0, np.nan, 0.9, 0.8]),
        "order0/per_class-q0.9/random/none/base": ([2.0, 1.0, 0.6, 0.5], [3.0, 1.0, 0.9, 3.0]),
        "order0/none/random/none/retrained": ([2.0, 1.0, 0.6, 0.9], [3.0, 1.5, 0.9, 0.8]),
    }
    paths = []
    for i, (run, per_task) in enumerate(losses.items()):
        for t, ls in enumerate(per_task):
            p = tmp_path / f"r{i}" / f"task{t}" / "metrics.parquet"
            io.write_parquet(_task_metrics(run, t, ls, 4), p, {"test": 1})
            paths.append(p)
    return paths, losses


def test_join_keeps_every_epoch_of_every_run_with_its_keys(study):
    paths, losses = study
    table = curves.join_metrics(paths)
    assert len(table) == sum(len(ls) for per_task in losses.values() for ls in per_task)
    assert "kind" not in table and table.groupby("run")["epoch"].apply(list).map(lambda e: e == list(range(1, 9))).all()
    row = table[table.run == "order0/per_class-q0.9/random/none/base"].iloc[0]
    assert (row.order_seed, row["filter"], row.ordering, row.weighting, row.algorithm) == (
        0,
        "per_class-q0.9",
        "random",
        "none",
        "base",
    )
    np.testing.assert_allclose(
        table[table.run == "order0/none/random/none/base"]["train_loss"],
        np.concatenate(losses["order0/none/random/none/base"]),
    )


def test_flags_nonfinite_and_diverging_runs_but_not_task_boundary_jumps(study):
    paths, _ = study
    flags = curves.flag_runs(curves.join_metrics(paths)).set_index("run")
    assert flags.loc["order0/none/random/none/base", "status"] == "ok"  # 0.5 -> 3.0 across the boundary
    assert flags.loc["order1/none/random/none/base", ["status", "task"]].tolist() == ["non-finite", 1]
    assert flags.loc["order0/per_class-q0.9/random/none/base", ["status", "task"]].tolist() == ["diverging", 1]
    assert flags.loc["order0/per_class-q0.9/random/none/base", "max_loss_ratio"] == pytest.approx(3.0 / 0.9)
    # a 1.5x rise is below the default factor 2, but above a factor of 1.4
    assert flags.loc["order0/none/random/none/retrained", "status"] == "ok"
    strict = curves.flag_runs(curves.join_metrics(paths), factor=1.4).set_index("run")
    assert strict.loc["order0/none/random/none/retrained", "status"] == "diverging"
    assert strict.loc["order0/none/random/none/base", "status"] == "ok"


def test_figure_has_provenance(study, tmp_path):
    paths, _ = study
    table = curves.join_metrics(paths)
    pdf = tmp_path / "fig" / "training_curves.pdf"
    curves.plot(table, curves.flag_runs(table), pdf, {"figure": "training_curves"})
    assert pdf.stat().st_size > 1000 and pdf.with_suffix(".png").exists()
    assert io.read_provenance(pdf) == {"figure": "training_curves"}


def test_bad_run_name_names_the_expected_form():
    with pytest.raises(ValueError, match="order<seed>/<filter>"):
        curves.parse_run("none/random/base")
