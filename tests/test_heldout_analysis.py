"""The held-out analysis (memplast/heldout_analysis.py) on synthetic runs with a planted effect:
base loses the memo-dependent test samples over tasks, retrained does not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memplast.heldout import sample_summary
from memplast.heldout_analysis import (
    ALL_TASKS,
    answer_sentence,
    dependence_association,
    dependence_of,
    slice_comparison,
    slice_measures,
)

N_TASKS, N_ORDERS, PER_CLASS = 4, 5, 40


def _runs(effect: float, seed: int = 0):
    """Test samples of 8 classes (2 per task); dependence score ~ U(0, 100), dependent above 80.
    P(correct at the end of task t) = 0.9 - effect * dependent * t / N_TASKS for base; 0.9 for
    retrained. Forgetting then grows with the score inside every class (base)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(2 * N_TASKS), PER_CLASS)
    dep = pd.DataFrame({"split": "test", "sample_id": np.arange(len(labels)), "label": labels,
                        "nn_memo_pct": rng.uniform(0, 100, len(labels))})  # fmt: skip
    dep["dependent_proxy"] = dep["nn_memo_pct"] >= 80
    ends, samples = [], []
    for order in range(N_ORDERS):
        for algorithm in ("base", "retrained"):
            rows = []
            for t in range(N_TASKS):
                seen = labels < 2 * (t + 1)
                p = 0.9 - (effect * dep["dependent_proxy"].to_numpy() * t / N_TASKS if algorithm == "base" else 0)
                correct = rng.random(len(labels)) < p
                rows.append(pd.DataFrame({"split": "test", "sample_id": dep.sample_id[seen], "label": labels[seen],
                                          "task": t, "epoch": t, "role": "end", "correct": correct[seen],
                                          "loss": rng.random(seen.sum()), "margin": 0.0}))  # fmt: skip
            table = pd.concat(rows, ignore_index=True)
            keys = {
                "order_seed": order,
                "filter": "none",
                "ordering": "random",
                "weighting": "none",
                "algorithm": algorithm,
            }
            ends.append(table.assign(**keys))
            samples.append(sample_summary(table).assign(**keys))
    return pd.concat(ends, ignore_index=True), pd.concat(samples, ignore_index=True), dep


@pytest.mark.parametrize("effect", [0.6, 0.0])
def test_planted_loss_of_dependent_samples_is_found_and_vanishes_without_it(effect):
    ends, samples, dep_table = _runs(effect)
    dep, definition = dependence_of(dep_table)
    assert definition == "proxy"
    measures = slice_measures(ends, samples, dep)
    # the slice accuracy is the plain mean of `correct` over the slice (independent recomputation)
    one = ends[(ends.order_seed == 0) & (ends.algorithm == "base") & (ends.task == 2)]
    flag = one.sample_id.map(dep.set_index("sample_id").dependent)
    got = measures.query("order_seed == 0 and algorithm == 'base' and task == 2").set_index("measure")["value"]
    assert got["acc_dependent"] == pytest.approx(one.correct[flag].mean())
    assert got["acc_gap"] == pytest.approx(one.correct[flag].mean() - one.correct[~flag].mean())
    comp = slice_comparison(measures, 0.95)
    gap = comp[(comp.measure == "acc_gap") & (comp.task == ALL_TASKS)].set_index(["contrast", "algorithm"])
    ref = gap.loc[("vs_primary", "retrained")]  # retrained minus base
    fgap = comp[(comp.measure == "forgetting_gap") & (comp.contrast == "level")].set_index("algorithm")
    assoc = dependence_association(ends, samples, dep, n_boot=200, ci_level=0.95, seed=0)
    partial = assoc[(assoc.estimator == "partial") & (assoc.pooling == "fixed")].set_index("algorithm")
    sentence = answer_sentence(comp, 0.95, definition, int(dep.dependent.sum()), len(dep))
    if effect:
        assert gap.loc[("level", "base"), "ci_high"] < 0 and ref["ci_low"] > 0
        assert fgap.loc["base", "ci_low"] > 0
        assert partial.loc["base", "ci_low"] > 0
        assert "base loses the memo-dependent samples faster than retrained" in sentence
    else:
        assert ref["ci_low"] < 0 < ref["ci_high"]
        assert partial.loc["base", "ci_low"] < 0 < partial.loc["base", "ci_high"]
        assert "not resolved" in sentence
    assert partial.loc["retrained", "ci_low"] < 0 < partial.loc["retrained", "ci_high"]
    assert (assoc.n_orders == N_ORDERS).all()


def test_influence_definition_wins_when_present():
    dep = pd.DataFrame({"split": ["test", "test", "val"], "sample_id": [0, 1, 0], "nn_memo_pct": [95.0, 10.0, 99.0],
                        "dependent_proxy": [True, False, True], "fz_top_influence": [0.01, 0.4, np.nan],
                        "fz_memo_pct": [95.0, 97.0, np.nan], "dependent_influence": [False, True, False]})  # fmt: skip
    out, definition = dependence_of(dep)
    assert definition == "influence" and out.set_index("sample_id")["dependent"].to_dict() == {0: False, 1: True}
    out, definition = dependence_of(dep.drop(columns=["fz_top_influence", "fz_memo_pct", "dependent_influence"]))
    assert definition == "proxy" and out.set_index("sample_id")["dependent"].to_dict() == {0: True, 1: False}


def test_heldout_figure_draws_the_slice_means_over_class_orders(tmp_path):
    from memplast import plots

    ends, samples, dep_table = _runs(0.6)
    measures = slice_measures(ends, samples, dependence_of(dep_table)[0])
    fig = plots.heldout_slices(measures, "proxy", tmp_path / "h.pdf", {"test": 1})
    assert (tmp_path / "h.pdf").stat().st_size > 1000 and (tmp_path / "h.png").exists()
    want = (
        measures.query("algorithm == 'base' and measure == 'acc_dependent' and task >= 0")
        .groupby("task")["value"]
        .mean()
    )
    line = next(ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("primary"))
    np.testing.assert_allclose(line.get_ydata(), want.to_numpy())
