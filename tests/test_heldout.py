"""Held-out samples per checkpoint (memplast/heldout.py): the per-sample rows reproduce the reported
accuracy exactly, and the per-sample summary counts what it says."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memplast.heldout import heldout_table, sample_summary
from tests.conftest import run_one_task


def _train_run(tmp, cfg, prepared, n_tasks, window):
    """n_tasks tasks of one run; every global epoch checkpointed, ``window`` before-window slots."""
    E = cfg["protocol"]["epochs_per_task"]
    metrics, paths, prev = [], [], None
    for t in range(n_tasks):
        m, ck = run_one_task(
            tmp, cfg, prepared, t, prev, ckpt_epochs=[t * E + e for e in range(1, E + 1)], window=window
        )
        metrics.append(m)
        d = Path(tmp) / f"t{t}"
        paths += [*ck.values(), *sorted(map(str, d.glob("best-*.pt"))), str(d / "live.pt")]
        prev = str(d / "end.pt")
    return pd.concat(metrics, ignore_index=True), paths


@pytest.mark.parametrize("test_augmentation", ["none", "reference"])
def test_per_sample_mean_equals_reported_accuracy_at_every_checkpoint(
    tmp_path, demo_config, digits, one_thread, test_augmentation
):
    cfg = copy.deepcopy(demo_config)
    cfg["protocol"].update(epochs_per_task=3, lr_milestones=[2], state_every=3, test_augmentation=test_augmentation)
    E = 3
    metrics, paths = _train_run(tmp_path, cfg, digits, 3, window=2)
    aug = cfg["dataset"]["augmentation"] if test_augmentation == "reference" else None
    table = heldout_table(paths, digits, 0, E, cfg["protocol"]["eval_batch_size"], aug, "cpu")
    acc = table.groupby(["split", "epoch", "role"])["correct"].mean()
    ends = metrics[metrics.kind == "end"]
    assert len(ends) == 3
    for _, row in ends.iterrows():  # exact: the same evaluation, not a re-implementation
        assert acc[("test", row.epoch, "end")] == row.test_acc
        assert acc[("val", row.epoch, "end")] == row.val_acc
        assert table.query("role == 'end' and epoch == @row.epoch")["loss"].groupby(table["split"]).mean()[
            "test"
        ] == pytest.approx(row.test_loss, rel=1e-6)
    epochs = metrics[metrics.kind == "epoch"].set_index("epoch")
    path = table[table.role == "path"]
    # every checkpointed epoch but the task ends is on the path (a task end too when it is the best
    # epoch: before-window slot 0); the live last epoch and the restored end are their own roles
    assert set(epochs.index) - {E, 2 * E, 3 * E} <= set(path.epoch) <= set(epochs.index)
    for g in sorted(set(path.epoch)):
        assert acc[("test", g, "path")] == epochs.loc[g, "test_acc"]
        assert acc[("val", g, "path")] == epochs.loc[g, "val_acc"]
    for t in range(3):  # the live last epoch is the last epoch's row of the metrics
        assert acc[("test", (t + 1) * E, "live")] == epochs.loc[(t + 1) * E, "test_acc"]
    # the seen classes only, both splits, every held-out sample of them at each checkpoint
    seen2 = set(table.query("task == 2").label)  # ids are unique per split only (planted test samples)
    assert len(seen2) == 6
    end2 = table.query("role == 'end' and task == 2")
    assert len(end2) == (np.isin(digits.split, ["val", "test"]) & np.isin(digits.labels, list(seen2))).sum()
    assert ((end2.pred == end2.label) == end2.correct).all()
    assert ((end2.margin > 0) == end2.correct).all()  # no ties in float logits


def _table(rows):
    return pd.DataFrame(rows, columns=["split", "sample_id", "task", "correct"]).assign(
        role="end", label=0, loss=0.0, margin=0.0, epoch=lambda d: d.task
    )


def test_sample_summary_counts_forgetting_events_between_consecutive_task_ends():
    seq = {  # sample: correct at the ends of the tasks from its first one
        1: (0, [1, 0, 1, 0]),  # learned at 0, forgotten twice
        2: (1, [0, 0, 1]),  # learned at 3, never forgotten
        3: (2, [0, 0]),  # never learned
        4: (0, [1, 1, 1, 1]),
    }
    rows = [("test", s, first + k, c) for s, (first, cs) in seq.items() for k, c in enumerate(cs)]
    out = sample_summary(_table(rows)).set_index("sample_id")
    assert out["forgetting_events"].to_dict() == {1: 2, 2: 0, 3: 0, 4: 0}
    assert out["first_learned_task"].to_dict() == {1: 0, 2: 3, 3: -1, 4: 0}
    assert out["first_task"].to_dict() == {1: 0, 2: 1, 3: 2, 4: 0}
    assert out["end_correct"].to_dict() == {1: False, 2: True, 3: False, 4: True}
    # the same sample id in val and test is two samples; path rows do not count
    extra = _table([("val", 1, 2, 1), ("val", 1, 3, 0)])
    path = _table([("test", 1, 1, 1)]).assign(role="path", epoch=99)
    out = sample_summary(pd.concat([_table(rows), extra, path]))
    assert out.set_index(["split", "sample_id"]).loc[("val", 1), "forgetting_events"] == 1
    assert out.set_index(["split", "sample_id"]).loc[("test", 1), "forgetting_events"] == 2
    with pytest.raises(ValueError, match="missing at the run's last task end"):
        sample_summary(_table([("test", 1, 0, 1), ("test", 1, 1, 1), ("test", 2, 0, 1)]))
