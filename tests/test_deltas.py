"""Boundary deltas on a hand-built probe table (design §5 sign conventions)."""

import math

import numpy as np
import pandas as pd
import pytest

from memplast import deltas

E, W = 4, 2  # boundary epoch and window: task k probed at 3, 4; task k+1 at 5, 6
NAN = math.nan


def table():
    """Sample 10 (old, label 0) and sample 11 (new, label 2); values per epoch 3, 4, 5, 6."""
    rows = []
    old = {"loss": [1.0, 0.5, 2.0, 3.0], "margin": [2.0, 3.0, -1.0, -2.0], "grad_norm": [4.0, 2.0, 1.0, 1.0],
           "input_grad_norm": [1.0, 1.0, 2.0, 4.0], "dormant_t0": [0.1, 0.1, 0.2, 0.4],
           "dormant_t0.01": [0.2, 0.2, 0.3, 0.5], "drift": [NAN, 1.0, 3.0, 5.0]}
    new = {"loss": [NAN, NAN, 1.5, 1.0], "margin": [NAN, NAN, 0.5, 1.0], "grad_norm": [NAN, NAN, 3.0, 2.0],
           "input_grad_norm": [NAN, NAN, 1.0, 1.0], "dormant_t0": [0.3, 0.3, 0.3, 0.3],
           "dormant_t0.01": [0.3, 0.4, 0.5, 0.6], "drift": [NAN, 2.0, 2.0, 4.0]}
    for sid, label, is_old, vals in ((10, 0, True, old), (11, 2, False, new)):
        for j, epoch in enumerate((3, 4, 5, 6)):
            row = {"sample_id": sid, "epoch": epoch, "label": label, "is_old": is_old, "boundary": 1,
                   "dormant_t0_L0": 0.0, "align_dot": NAN, "align_cos": NAN, "pred_forget": NAN}
            row.update({k: v[j] for k, v in vals.items()})
            if epoch == E and is_old:
                row.update(align_dot=0.7, align_cos=0.2, pred_forget=-0.1)
            rows.append(row)
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # row order must not matter


def get(d, kind, sid):
    return d[(d["kind"] == kind) & (d["sample_id"] == sid)].iloc[0]


def test_immediate_and_windowed_deltas_by_hand():
    d = deltas.boundary_deltas(table(), E, W)
    assert list(d.columns) == ["sample_id", "label", "boundary", "is_old", "kind", "loss_t", "d_loss", "d_log_grad",
                               "grad_drop", "d_input_grad", "d_dormant_t0", "d_dormant_t0.01", "d_margin", "drift",
                               "align_dot", "align_cos", "pred_forget"]
    assert len(d) == 4
    im, wi = get(d, "immediate", 10), get(d, "windowed", 10)
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
    assert im["d_margin"] == pytest.approx(-4.0) and wi["d_margin"] == pytest.approx(-1.5 - 2.5)
    assert im["drift"] == pytest.approx(3.0)  # drift at E_k + 1
    assert wi["drift"] == pytest.approx((3.0 + 5.0) / 2 - 1.0)  # NaN at epoch 3 skipped
    for row in (im, wi):
        assert (row["align_dot"], row["align_cos"], row["pred_forget"]) == (0.7, 0.2, -0.1)


def test_new_class_samples_are_kept_with_nan_loss_deltas():
    d = deltas.boundary_deltas(table(), E, W)
    for kind in deltas.KINDS:
        row = get(d, kind, 11)
        assert not row["is_old"] and row["label"] == 2
        for c in ("loss_t", "d_loss", "d_log_grad", "grad_drop", "d_input_grad", "d_margin", "align_dot"):
            assert math.isnan(row[c]), (kind, c)
    assert get(d, "immediate", 11)["d_dormant_t0.01"] == pytest.approx(0.1)
    assert get(d, "windowed", 11)["d_dormant_t0.01"] == pytest.approx(0.55 - 0.35)
    assert get(d, "windowed", 11)["drift"] == pytest.approx(3.0 - 2.0)


def test_missing_epochs_or_rows_are_refused():
    t = table()
    with pytest.raises(ValueError, match=r"epochs \[3\] not probed"):
        deltas.boundary_deltas(t[t["epoch"] != 3], E, W)
    with pytest.raises(ValueError, match="every sample"):
        deltas.boundary_deltas(t[~((t["epoch"] == 6) & (t["sample_id"] == 11))], E, W)
    with pytest.raises(ValueError, match="boundary"):
        deltas.boundary_deltas(t.drop(columns="boundary"), E, W)
    extra = pd.concat([t, t[t["epoch"] == 6].assign(epoch=9, loss=100.0)])  # epochs outside the window are ignored
    pd.testing.assert_frame_equal(deltas.boundary_deltas(extra, E, W), deltas.boundary_deltas(t, E, W))


def scores():
    return pd.DataFrame({"sample_id": [10, 11, 12, 13, 99], "curv": [4.0, 1.0, 2.0, 3.0, 50.0],
                         "split": ["train"] * 4 + ["val"]})


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
    assert list(out.columns) == ["sample_id", "class_label", "memo", "delta_loss", "delta_grad_norm",
                                 "delta_dormant", "boundary"]
    assert out.to_dict("records") == [{"sample_id": 10, "class_label": 0, "memo": 4.0, "delta_loss": pytest.approx(1.75),
                                       "delta_grad_norm": pytest.approx(-2.0), "delta_dormant": pytest.approx(0.2),
                                       "boundary": 1}]
    with pytest.raises(ValueError, match="d_dormant_t0.5"):
        deltas.plasticity_export(d, 0.5)
    assert np.isfinite(out[["memo", "delta_loss", "delta_grad_norm", "delta_dormant"]].to_numpy()).all()
