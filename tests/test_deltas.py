"""Boundary deltas on a hand-built probe table (design §5 sign conventions)."""

import math

import numpy as np
import pandas as pd
import pytest

from memplast import deltas

E, W = 4, 2  # boundary epoch and window: task k probed at 3, 4; task k+1 at 5, 6
NAN = math.nan


def table():
    """Sample 10 (old, label 0) and sample 11 (new, label 2); values per epoch 3, 4, 5, 6; best = E_k = 4."""
    rows = []
    old = {
        "loss": [1.0, 0.5, 2.0, 3.0],
        "margin": [2.0, 3.0, -1.0, -2.0],
        "grad_norm": [4.0, 2.0, 1.0, 1.0],
        "input_grad_norm": [1.0, 1.0, 2.0, 4.0],
        "dormant_t0": [0.1, 0.1, 0.2, 0.4],
        "dormant_t0.01": [0.2, 0.2, 0.3, 0.5],
        "dormant_score_t0.1": [0.3, 0.2, 0.6, 0.6],
        "drift": [NAN, 1.0, 3.0, 5.0],
    }
    new = {
        "loss": [NAN, NAN, 1.5, 1.0],
        "margin": [NAN, NAN, 0.5, 1.0],
        "grad_norm": [NAN, NAN, 3.0, 2.0],
        "input_grad_norm": [NAN, NAN, 1.0, 1.0],
        "dormant_t0": [0.3, 0.3, 0.3, 0.3],
        "dormant_t0.01": [0.3, 0.4, 0.5, 0.6],
        "dormant_score_t0.1": [0.1, 0.1, 0.1, 0.1],
        "drift": [NAN, 2.0, 2.0, 4.0],
    }
    for sid, label, is_old, vals in ((10, 0, True, old), (11, 2, False, new)):
        for j, epoch in enumerate((3, 4, 5, 6)):
            row = {
                "sample_id": sid,
                "epoch": epoch,
                "role": "before" if epoch <= E else "after",
                "best_epoch": E,
                "label": label,
                "is_old": is_old,
                "boundary": 1,
                "dormant_t0_L0": 0.0,
                "align_dot": NAN,
                "align_cos": NAN,
                "pred_forget": NAN,
            }
            row.update({k: v[j] for k, v in vals.items()})
            if epoch == E and is_old:
                row.update(align_dot=0.7, align_cos=0.2, pred_forget=-0.1)
            rows.append(row)
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # row order must not matter


def early_table(best=3, live=True):
    """Boundary epoch 8 (task k = epochs 5..8), window 2: the best epoch is ``best``; the table holds
    the before-window best-1, best (when best-1 is in the task), a live row at 8 when the best
    weights were restored, the after-window 9, 10 -- for old sample 10 only, one value per epoch
    v(e) = e (and drift(e) = 10 e; live: loss 100, drift 7)."""
    rows = []
    before = [e for e in (best - 1, best) if e >= 5]
    points = [(e, "before") for e in before] + ([(8, "live")] if live else []) + [(9, "after"), (10, "after")]
    for e, role in points:
        v = 100.0 if role == "live" else float(e)
        rows.append(
            {
                "sample_id": 10,
                "epoch": e,
                "role": role,
                "best_epoch": best,
                "label": 0,
                "is_old": True,
                "boundary": 1,
                "loss": v,
                "margin": -v,
                "grad_norm": v,
                "input_grad_norm": v,
                "dormant_t0": v / 1000,
                "dormant_score_t0.1": v / 100,
                "drift": 7.0 if role == "live" else (NAN if e == before[0] else 10.0 * e),
                "align_dot": 0.5 if (e == best and role == "before") else NAN,
                "align_cos": NAN,
                "pred_forget": NAN,
            }
        )
    return pd.DataFrame(rows)


def get(d, kind, sid):
    return d[(d["kind"] == kind) & (d["sample_id"] == sid)].iloc[0]


def test_immediate_and_windowed_deltas_by_hand():
    d = deltas.boundary_deltas(table(), E, W)
    assert list(d.columns) == [
        "sample_id",
        "label",
        "boundary",
        "is_old",
        "kind",
        "best_epoch",
        "before_first",
        "before_last",
        "after_first",
        "after_last",
        "loss_t",
        "d_loss",
        "d_log_grad",
        "grad_drop",
        "d_input_grad",
        "d_dormant_t0",
        "d_dormant_t0.01",
        "d_dormant_score_t0.1",
        "d_margin",
        "drift_after",
        "d_drift",
        "d_loss_rollback",
        "d_log_grad_rollback",
        "d_margin_rollback",
        "d_dormant_t0_rollback",
        "d_dormant_t0.01_rollback",
        "d_dormant_score_t0.1_rollback",
        "drift_rollback",
        "align_dot",
        "align_cos",
        "pred_forget",
    ]
    assert len(d) == 4
    im, wi = get(d, "immediate", 10), get(d, "windowed", 10)
    assert (im["before_first"], im["before_last"], im["after_first"], im["after_last"]) == (4, 4, 5, 5)
    assert (wi["before_first"], wi["before_last"], wi["after_first"], wi["after_last"]) == (3, 4, 5, 6)
    assert im["best_epoch"] == wi["best_epoch"] == E
    assert im["loss_t"] == wi["loss_t"] == 0.5 and im["label"] == 0 and im["is_old"] and im["boundary"] == 1
    assert im["d_loss"] == pytest.approx(2.0 - 0.5)
    assert wi["d_loss"] == pytest.approx((2.0 + 3.0) / 2 - (1.0 + 0.5) / 2)
    assert im["grad_drop"] == pytest.approx(2.0 - 1.0)  # positive: the gradient shrank
    assert wi["grad_drop"] == pytest.approx((4.0 + 2.0) / 2 - 1.0)
    assert im["d_log_grad"] == pytest.approx(math.log(1.0) - math.log(2.0))
    assert wi["d_log_grad"] == pytest.approx(0.0 - (math.log(4.0) + math.log(2.0)) / 2)  # mean of logs
    assert im["d_input_grad"] == pytest.approx(math.log(2.0))
    assert wi["d_input_grad"] == pytest.approx((math.log(2.0) + math.log(4.0)) / 2)
    assert im["d_dormant_t0"] == pytest.approx(0.1) and wi["d_dormant_t0"] == pytest.approx(0.3 - 0.1)
    assert im["d_dormant_t0.01"] == pytest.approx(0.1) and wi["d_dormant_t0.01"] == pytest.approx(0.4 - 0.2)
    assert im["d_dormant_score_t0.1"] == pytest.approx(0.4) and wi["d_dormant_score_t0.1"] == pytest.approx(0.35)
    assert im["d_margin"] == pytest.approx(-4.0) and wi["d_margin"] == pytest.approx(-1.5 - 2.5)
    assert im["drift_after"] == pytest.approx(3.0)  # drift at E_k + 1
    assert im["d_drift"] == pytest.approx(3.0 - 1.0)
    assert wi["drift_after"] == pytest.approx((3.0 + 5.0) / 2)
    assert wi["d_drift"] == pytest.approx((3.0 + 5.0) / 2 - 1.0)  # NaN at epoch 3 skipped
    for row in (im, wi):
        assert (row["align_dot"], row["align_cos"], row["pred_forget"]) == (0.7, 0.2, -0.1)
        # best = E_k: nothing was restored, the rollback is zero
        assert row["d_loss_rollback"] == row["drift_rollback"] == row["d_dormant_t0_rollback"] == 0.0


def test_windows_on_the_path_when_the_best_epoch_precedes_the_end():
    """best < E_k - w: the before-window is best-1, best (not the discarded live epochs 7, 8), the
    restore is its own rollback quantity, and every row records its windows."""
    d = deltas.boundary_deltas(early_table(best=6), 8, 2)
    im, wi = get(d, "immediate", 10), get(d, "windowed", 10)
    assert (im["before_first"], im["before_last"], im["after_first"], im["after_last"], im["best_epoch"]) == (
        6,
        6,
        9,
        9,
        6,
    )
    assert (wi["before_first"], wi["before_last"], wi["after_first"], wi["after_last"]) == (5, 6, 9, 10)
    assert im["loss_t"] == 6.0 and im["align_dot"] == 0.5
    assert im["d_loss"] == pytest.approx(9 - 6) and wi["d_loss"] == pytest.approx(9.5 - 5.5)
    assert im["d_dormant_score_t0.1"] == pytest.approx(0.03)
    assert im["drift_after"] == pytest.approx(90.0) and im["d_drift"] == pytest.approx(90.0 - 60.0)
    assert wi["drift_after"] == pytest.approx(95.0) and wi["d_drift"] == pytest.approx(95.0 - 60.0)  # NaN at 5 skipped
    for row in (im, wi):
        assert row["d_loss_rollback"] == pytest.approx(6.0 - 100.0)
        assert row["d_log_grad_rollback"] == pytest.approx(math.log(6.0) - math.log(100.0))
        assert row["d_margin_rollback"] == pytest.approx(-6.0 + 100.0)
        assert row["d_dormant_t0_rollback"] == pytest.approx(0.006 - 0.1)
        assert row["drift_rollback"] == 7.0
    assert (d["before_last"] <= d["best_epoch"]).all()


def test_window_truncated_at_the_task_start_and_best_at_the_end():
    d = deltas.boundary_deltas(early_table(best=5), 8, 2)  # best = the task's first epoch
    wi = get(d, "windowed", 10)
    assert (wi["before_first"], wi["before_last"]) == (5, 5) and wi["d_loss"] == pytest.approx(9.5 - 5)
    d = deltas.boundary_deltas(early_table(best=8, live=False), 8, 2)  # best = E_k (or early stopping off)
    wi = get(d, "windowed", 10)
    assert (wi["before_first"], wi["before_last"], wi["best_epoch"]) == (7, 8, 8)
    assert wi["d_loss_rollback"] == 0.0 and wi["drift_rollback"] == 0.0


def test_new_class_samples_are_kept_with_nan_loss_deltas():
    d = deltas.boundary_deltas(table(), E, W)
    for kind in deltas.KINDS:
        row = get(d, kind, 11)
        assert not row["is_old"] and row["label"] == 2
        for c in (
            "loss_t",
            "d_loss",
            "d_log_grad",
            "grad_drop",
            "d_input_grad",
            "d_margin",
            "align_dot",
            "d_loss_rollback",
        ):
            assert math.isnan(row[c]), (kind, c)
    assert get(d, "immediate", 11)["d_dormant_t0.01"] == pytest.approx(0.1)
    assert get(d, "windowed", 11)["d_dormant_t0.01"] == pytest.approx(0.55 - 0.35)
    assert get(d, "windowed", 11)["d_drift"] == pytest.approx(3.0 - 2.0)


def test_missing_epochs_or_rows_are_refused():
    t = table()
    with pytest.raises(ValueError, match=r"epochs \[6\] not probed"):
        deltas.boundary_deltas(t[t["epoch"] != 6], E, W)
    with pytest.raises(ValueError, match="end at the best epoch"):
        deltas.boundary_deltas(t[t["epoch"] != 4], E, W)
    with pytest.raises(ValueError, match="every sample"):
        deltas.boundary_deltas(t[~((t["epoch"] == 6) & (t["sample_id"] == 11))], E, W)
    with pytest.raises(ValueError, match="boundary"):
        deltas.boundary_deltas(t.drop(columns="boundary"), E, W)
    with pytest.raises(ValueError, match="role"):
        deltas.boundary_deltas(t.drop(columns="role"), E, W)
    extra = pd.concat([t, t[t["epoch"] == 6].assign(epoch=9, loss=100.0)])  # epochs outside the window are ignored
    pd.testing.assert_frame_equal(deltas.boundary_deltas(extra, E, W), deltas.boundary_deltas(t, E, W))


def scores():
    return pd.DataFrame(
        {"sample_id": [10, 11, 12, 13, 99], "curv": [4.0, 1.0, 2.0, 3.0, 50.0], "split": ["train"] * 4 + ["val"]}
    )


def test_join_memo_adds_score_and_overall_percentile():
    d = deltas.join_memo(deltas.boundary_deltas(table(), E, W), scores(), "curv")
    assert get(d, "windowed", 10)["memo"] == 4.0 and get(d, "windowed", 10)["memo_pct"] == pytest.approx(100.0)
    assert get(d, "immediate", 11)["memo"] == 1.0 and get(d, "immediate", 11)["memo_pct"] == pytest.approx(25.0)
    with pytest.raises(ValueError, match="no 'curv' score"):
        deltas.join_memo(deltas.boundary_deltas(table(), E, W), scores().iloc[1:], "curv")
    with pytest.raises(ValueError, match="duplicate"):
        deltas.join_memo(deltas.boundary_deltas(table(), E, W), pd.concat([scores(), scores()]), "curv")


def test_plasticity_export_legacy_columns():
    d = deltas.join_memo(deltas.boundary_deltas(table(), E, W), scores(), "curv")
    out = deltas.plasticity_export(d, 0.01)
    assert list(out.columns) == [
        "sample_id",
        "class_label",
        "memo",
        "delta_loss",
        "delta_grad_norm",
        "delta_dormant",
        "boundary",
    ]
    assert out.to_dict("records") == [
        {
            "sample_id": 10,
            "class_label": 0,
            "memo": 4.0,
            "delta_loss": pytest.approx(1.75),
            "delta_grad_norm": pytest.approx(-2.0),
            "delta_dormant": pytest.approx(0.2),
            "boundary": 1,
        }
    ]
    with pytest.raises(ValueError, match="d_dormant_t0.5"):
        deltas.plasticity_export(d, 0.5)
    assert np.isfinite(out[["memo", "delta_loss", "delta_grad_norm", "delta_dormant"]].to_numpy()).all()
