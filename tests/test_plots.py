"""Figures: files written atomically (PDF + PNG), provenance in the metadata, expected panels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from memplast import io, orderings, plots, plots_headline, stats
from memplast import memo_validation as mv

PROV = {"code_version": "0.test", "config": {"note": "parens ( ) and \\ backslash", "unicode": "Δρ"}, "seed": 3}
OTHER = {**stats.PRIMARY, "filter": "global_q0.9"}


def check_files(path, prov=PROV) -> None:
    """PDF and PNG exist, are what they claim, carry ``prov``, and no temp file is left."""
    png = path.with_suffix(".png")
    assert path.stat().st_size > 1000 and png.stat().st_size > 1000
    assert path.read_bytes().startswith(b"%PDF")
    assert png.read_bytes().startswith(b"\x89PNG")
    assert io.read_provenance(path) == prov
    with Image.open(png) as im:
        assert json.loads(im.info["Description"]) == prov
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def texts(fig) -> str:
    """All text drawn in the figure (titles, labels, notes, legends)."""
    return "\n".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text") and callable(a.get_text)))


@pytest.fixture(scope="module")
def tables():
    deltas = stats.synthetic_deltas(n_orders=2, n_classes=6, classes_per_task=2, n_per_class=25, seed=1)
    # boundary 0 of order 0 has no finite d_log_grad at all: a NaN-only boundary
    deltas.loc[(deltas["order_seed"] == 0) & (deltas["boundary"] == 0), "d_log_grad"] = np.nan
    cfg = {
        "epochs_per_task": 20,
        "window": 5,
        "n_boot": 50,
        "n_permutations": 50,
        "mediation_sims": 10,
        "outcomes": ["d_loss", "d_log_grad", "d_dormant_t0.01"],
        "n_deciles": 5,
        "ci_level": 0.9,
    }
    return deltas, stats.run_all(deltas, cfg)


def test_save_is_atomic_and_carries_provenance(tmp_path):
    fig = plots._figure(3, 2)
    fig.add_subplot().plot([0, 1], [1, 0])
    pdf, png = plots.save(fig, tmp_path / "sub" / "f.pdf", PROV)
    assert (pdf, png) == (tmp_path / "sub" / "f.pdf", tmp_path / "sub" / "f.png")
    check_files(pdf)
    with pytest.raises(ValueError, match=".pdf"):
        plots.save(fig, tmp_path / "f.svg", PROV)


def test_memo_vs_outcome(tables, tmp_path):
    deltas, out = tables
    path = tmp_path / "memo_vs_dgrad.pdf"
    fig = plots_headline.memo_vs_outcome(
        out["per_boundary"], out["pooled"], deltas, out["deciles"], "d_log_grad", path, PROV, ci_level=0.9
    )
    check_files(path)
    ax_i, ax_w, ax_b, ax_c, cbar = fig.axes
    assert ax_i.get_title().startswith("(a) immediate") and ax_w.get_title().startswith("(a′) windowed")
    assert ax_b.get_title().startswith("(b)") and ax_c.get_title() == "(c) by memo decile, boundary 1"
    assert ax_i.get_xlabel().startswith("boundary k") and "Spearman ρ" in ax_i.get_ylabel()
    assert "90% sample-bootstrap CI" in ax_i.get_ylabel()  # CI level from the config
    assert "Δ log ‖∇θ ℓᵢ‖" in ax_b.get_ylabel() and "mean (E_k, E_k+w]" in ax_b.get_ylabel()
    assert "log scale" in ax_b.get_xlabel() and ax_b.get_xscale() == "log"  # synthetic memo is log-normal
    assert ax_c.get_xlabel().startswith("memo decile") and "rows per hexagon" in cbar.get_ylabel()
    for ax in (ax_i, ax_w):
        labels = ax.get_legend_handles_labels()[1]
        assert labels[0] == "raw ρ, each class order (n = 2)"
        assert "raw ρ, pooled over orders + 90% CI" in labels
        assert "within-class ρ (answer), pooled + 90% CI" in labels
        assert "null band (90%): memo permuted within class" in labels
        pooled = out["pooled"]
        want = pooled[
            (pooled.outcome == "d_log_grad")
            & (pooled.estimator == "partial")
            & (pooled.pooling == "fixed")
            & (pooled.kind == ("immediate" if ax is ax_i else "windowed"))
            & (pooled.boundary.astype(str) != "all")
        ]
        line = next(li for li in ax.get_lines() if li.get_label().startswith("within-class"))
        np.testing.assert_allclose(line.get_ydata(), want.sort_values("boundary")["estimate"].to_numpy(float))
    assert "the within-class association" in texts(fig) and "within-class ρ =" in fig.get_suptitle()
    assert any(t.startswith("OLS: slope") for t in ax_b.get_legend_handles_labels()[1])
    assert ax_c.get_legend_handles_labels()[1][-1] == "mean over class orders"


def test_memo_vs_outcome_single_order_and_missing_deciles(tables, tmp_path):
    deltas, out = tables
    one = deltas[deltas["order_seed"] == 0]
    pb = out["per_boundary"][out["per_boundary"]["order_seed"] == 0]
    no_deciles = out["deciles"][out["deciles"]["outcome"] != "d_dormant_t0.01"]
    path = tmp_path / "memo_vs_ddormant.pdf"
    fig = plots_headline.memo_vs_outcome(pb, out["pooled"].iloc[:0], one, no_deciles, "d_dormant_t0.01", path, PROV)
    check_files(path)
    ax_i, ax_w, ax_b, ax_c, _ = fig.axes
    assert ax_w.get_legend_handles_labels()[1] == ["raw ρ, each class order (n = 1)"]  # nothing pooled
    assert "no finite windowed estimates" in texts(fig)
    assert ax_c.get_legend_handles_labels()[1] == ["order 0 (95% bootstrap CI)"]  # recomputed with decile_effects
    assert "dormant" in ax_c.get_ylabel() and "τ = 0.01" in ax_b.get_ylabel()


def test_accuracy_curves(tmp_path):
    summary = stats.synthetic_summary(
        n_orders=3, n_tasks=4, conditions=[stats.PRIMARY, {**stats.PRIMARY, "algorithm": "retrained"}, OTHER]
    )
    fig = plots.accuracy_curves(summary, tmp_path / "acc.pdf", PROV)
    check_files(tmp_path / "acc.pdf")
    ax_a, ax_r = fig.axes
    assert ax_a.get_title().startswith("(a) test accuracy") and ax_r.get_title().startswith("(b) accuracy relative")
    assert ax_a.get_xlabel().startswith("task t") and "test accuracy" in ax_a.get_ylabel()
    assert [lab.split(" (")[0] for lab in ax_a.get_legend_handles_labels()[1]] == [
        "primary",
        "filter=global_q0.9",
        "algorithm=retrained",
    ]
    assert ax_r.get_legend_handles_labels()[1] == ["primary (n orders = 3)", "retrained = 1"]
    assert "no retrained reference for: filter=global_q0.9" in texts(fig)
    rel = ax_r.get_lines()[0].get_ydata()
    assert rel[0] == pytest.approx(1, abs=0.05) and rel[-1] < 0.9  # primary decays, retrained does not

    fig = plots.accuracy_curves(summary[summary["algorithm"] == "base"], tmp_path / "acc2.pdf", PROV)
    check_files(tmp_path / "acc2.pdf")
    assert "no retrained reference run" in texts(fig)


def test_dormant_and_rank(tmp_path):
    summary = stats.synthetic_summary(n_orders=1, n_tasks=3).drop(columns="mean_abs_weight")
    fig = plots.dormant_and_rank(summary, tmp_path / "dormant.pdf", PROV)
    check_files(tmp_path / "dormant.pdf")
    assert [ax.get_title() for ax in fig.axes] == [
        "(a) dormant_units",
        "(b) effective_rank",
        "(c) rank99",
        "(d) mean_abs_weight",
    ]
    assert all(ax.get_xlabel().startswith("task t") for ax in fig.axes)
    assert "dormant units (fraction" in fig.axes[0].get_ylabel()
    assert "no mean_abs_weight column in the summary" in texts(fig)
    assert len(fig.axes[0].get_lines()) == 2  # primary and retrained


def test_class_balance(tmp_path):
    rows = []
    for filt, kept in (("global_q0.9", [40, 30, 45, 50]), ("none", [50] * 4), ("balanced_q0.9", [30] * 4)):
        kept = np.array(kept)
        rows.append(
            pd.DataFrame(
                {
                    "label": range(4),
                    "n_before": 50,
                    "n_kept": kept,
                    "fraction_kept": kept / 50,
                    "filter": filt,
                    "summary_cv": kept.std() / kept.mean(),
                    "summary_min_max_ratio": kept.min() / kept.max(),
                    "summary_n_kept": kept.sum(),
                    "summary_n_before": 200,
                    "summary_min": kept.min(),
                    "summary_max": kept.max(),
                }
            )
        )
    fig = plots.class_balance(pd.concat(rows), tmp_path / "balance.pdf", PROV)
    check_files(tmp_path / "balance.pdf")
    assert [ax.get_title() for ax in fig.axes] == ["filter: none", "filter: balanced_q0.9", "filter: global_q0.9"]
    heights = [p.get_height() for p in fig.axes[2].patches]
    assert heights == sorted(heights, reverse=True) and heights[0] == 1.0
    assert "min/max kept = 0.600" in texts(fig) and "kept 165 / 200" in texts(fig)
    assert fig.axes[0].get_ylabel() == "kept fraction n_kept / n_before"


def test_order_diagnostics(tmp_path):
    rng = np.random.default_rng(0)
    memo = pd.Series(np.exp(rng.normal(size=200)), index=np.arange(200))
    orders = {
        "random": rng.permutation(200),
        "descending": memo.sort_values(ascending=False).index.to_numpy(),
        "stratified": memo.sort_values().index.to_numpy().reshape(-1, 4).T.ravel(),
    }
    diag = pd.concat([orderings.order_diagnostics(o, memo, window=20).assign(ordering=k) for k, o in orders.items()])
    fig = plots.order_diagnostics(diag, tmp_path / "orders.pdf", PROV)
    check_files(tmp_path / "orders.pdf")
    assert len(fig.axes) == 9
    assert [ax.get_title() for ax in fig.axes[:3]] == [
        "random: moving mean",
        "random: moving variance",
        "random: high-memo gaps",
    ]
    assert fig.axes[3].get_title().startswith("descending") and fig.axes[6].get_title().startswith("stratified")
    assert fig.axes[6].get_xlabel().startswith("position in the epoch's order")
    assert fig.axes[8].get_xlabel().startswith("gap to next high-memo sample")
    assert fig.axes[0].get_lines()[0].get_xdata().max() == pytest.approx(1.0)  # normalized position
    # Feldman-Zhang influence along the order, next to memo (a twin axis of the moving-mean panel)
    infl = pd.Series(rng.normal(size=200), index=np.arange(200))
    with_infl = orderings.order_diagnostics(orders["random"], memo, window=20, influence_of=infl).assign(
        ordering="random"
    )
    fig_infl = plots.order_diagnostics(with_infl, tmp_path / "infl.pdf", PROV)
    twin = [ax for ax in fig_infl.axes if ax.get_ylabel() == "moving mean of FZ self-influence"]
    assert len(twin) == 1
    np.testing.assert_allclose(twin[0].get_lines()[0].get_ydata(), with_infl["influence_moving_mean"])
    assert "mean gap = 1.0" in texts(fig)  # descending: the high-memo samples are adjacent


def _validation_inputs(n=120, fz=True, seed=0):
    rng = np.random.default_rng(seed)
    noisy = rng.random(n) < 0.1
    scores = pd.DataFrame({"sample_id": np.arange(n), "split": "train", "label": rng.integers(0, 5, n), "noisy": noisy})
    scores["orig_label"] = np.where(noisy, (scores["label"] + 1) % 5, scores["label"])
    scores["curv_exact"] = np.exp(rng.normal(size=n) + 2 * noisy)
    scores["curv_hutch"] = scores["curv_exact"] * np.exp(0.3 * rng.normal(size=n))
    scores["curv_fd"] = np.exp(rng.normal(size=n))
    scores["csl"] = rng.gamma(2, size=n)
    if fz:
        scores["fz_mem"] = np.clip(rng.normal(0.2, 0.3, n), 0, 1)
    scores["memo"] = scores["curv_exact"]
    test_rows = scores.head(5).assign(split="test", sample_id=lambda d: d["sample_id"] + 10_000, memo=1e9)
    return pd.concat([scores, test_rows], ignore_index=True)


def test_memo_validation(tmp_path):
    scores = _validation_inputs()
    train = scores[scores["split"] == "train"]
    methods = ["curv_exact", "curv_hutch", "curv_fd", "csl", "fz_mem"]
    agreement = pd.concat(
        [
            mv.method_agreement(train, methods),
            mv.method_agreement(train, methods, mv.top_k_mask(train, "fz_mem", 30), "top30_fz"),
        ]
    )
    auroc = mv.noise_auroc(train, methods)
    rng = np.random.default_rng(1)
    images = {int(s): rng.integers(0, 256, (3, 8, 8), dtype=np.uint8) for s in scores["sample_id"]}
    fig = plots.memo_validation(scores, agreement, auroc, images, tmp_path / "validation.pdf", PROV)
    check_files(tmp_path / "validation.pdf")
    assert len(fig.axes) == 3 + 16
    ax_d, ax_h, ax_a = fig.axes[:3]
    assert ax_d.get_title().startswith("(a) score distribution") and ax_d.get_ylabel().startswith("log10 score")
    assert ax_h.get_title() == "(b) Spearman ρ, subset all" and ax_a.get_title() == "(c) AUROC, planted noisy labels"
    assert len(ax_a.patches) == 5 and "AUROC" in ax_a.get_ylabel()
    assert "≤ 0 not shown" in texts(fig)  # fz_mem has zeros
    top = train.sort_values("memo", ascending=False).head(16)  # test-split rows are not training samples
    shown = [ax.get_title() for ax in fig.axes[3:]]
    assert [t.split()[0] for t in shown] == [f"#{s}" for s in top["sample_id"]]
    assert any("noisy, orig" in t for t in shown)
    assert fig.axes[3].get_images()[0].get_array().shape == (8, 8, 3)


def test_memo_validation_without_fz_auroc_or_most_images(tmp_path):
    scores = _validation_inputs(fz=False)
    train = scores[scores["split"] == "train"]
    agreement = mv.method_agreement(train, ["curv_exact", "curv_hutch", "csl"])
    top = train.sort_values("memo", ascending=False)["sample_id"].head(16)
    images = {s: np.full((1, 6, 6), 7 * i, dtype=np.uint8) for i, s in enumerate(top.iloc[::4])}  # 4 of the top 16
    fig = plots.memo_validation(
        scores,
        agreement,
        pd.DataFrame(columns=["method", "auroc", "n_noisy"]),
        images,
        tmp_path / "validation.pdf",
        PROV,
        top_k=16,
    )
    check_files(tmp_path / "validation.pdf")
    assert len(fig.axes) == 3 + 4
    assert "no planted label noise" in texts(fig) and "Feldman" not in fig.axes[0].get_xticklabels()[-1].get_text()
    assert fig.axes[3].get_images()[0].get_array().shape == (6, 6)  # 1xHxW shown as grey
    assert [ax.get_title().split()[0] for ax in fig.axes[3:]] == [f"#{s}" for s in top.iloc[::4]]
    assert "(d) top 16 training images by memo (12 without image)" in texts(fig)


def test_memo_vs_outcome_refuses_mixed_conditions(tables, tmp_path):
    deltas, out = tables
    mixed = pd.concat([out["per_boundary"], out["per_boundary"].assign(filter="global_q0.9")])
    with pytest.raises(ValueError, match="per_boundary holds several conditions"):
        plots_headline.memo_vs_outcome(mixed, out["pooled"], deltas, out["deciles"], "d_loss", tmp_path / "x.pdf", PROV)
    assert not list(tmp_path.iterdir())


def test_outcome_label():
    assert plots.outcome_label("d_log_grad", "immediate") == "Δ log ‖∇θ ℓᵢ‖\n(E_k+1 − B_k)"
    label = plots.outcome_label("d_dormant_t0.001")
    assert label.startswith("Δ dormant fraction") and "τ = 0.001" in label
    assert plots.outcome_label("align_cos", "windowed") == "cos(gᵢ, G_next) at E_k"  # not a delta
    assert plots.outcome_label("something_new") == "something_new"


def _overlap(a, b) -> bool:
    """Two display-space boxes share area (touching edges do not count)."""
    return min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5


@pytest.mark.parametrize("n_orders", [2, 5, 20])
def test_memo_vs_outcome_stays_legible_at_many_class_orders(n_orders, tmp_path):
    """Per-order lines thin, grey and one legend entry in all; the pooled estimate in front; the
    decile panel pooled over orders; no legend covers any data axes (its drawn bounding box)."""
    deltas = stats.synthetic_deltas(n_orders=n_orders, n_classes=6, classes_per_task=2, n_per_class=12, seed=1)
    cfg = dict(seed=0, n_boot=100, n_permutations=100, epochs_per_task=20, window=5, outcomes=["d_log_grad"])
    out = stats.tables.association_tables(deltas[deltas.is_old], cfg, ["d_log_grad"], ["immediate", "windowed"])
    rng = np.random.default_rng(0)
    deciles = pd.DataFrame(
        [
            dict(outcome="d_log_grad", kind="windowed", boundary=b, term="decile", decile=d, order_seed=o)
            | dict(median=m, ci_low=m - 0.1, ci_high=m + 0.1)
            for o in range(n_orders)
            for b in sorted(deltas.boundary.unique())
            for d, m in zip(range(1, 11), 0.02 * np.arange(10) + rng.normal(0, 0.05, 10))
        ]
    )
    path = tmp_path / f"memo_vs_dgrad_{n_orders}.pdf"
    fig = plots_headline.memo_vs_outcome(
        out["per_boundary"], out["pooled"], deltas, deciles, "d_log_grad", path, PROV, ci_level=0.9
    )
    check_files(path)
    ax_i, ax_w, ax_b, ax_c, _ = fig.axes
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) >= 2  # (a′) and (c) at least
    data_axes = [ax.get_window_extent(renderer) for ax in (ax_i, ax_w, ax_b, ax_c)]
    figure_box = fig.bbox
    for leg in legends:
        box = leg.get_window_extent(renderer)
        if leg.axes is ax_b:  # (b)'s OLS legend sits inside its own hexbin on purpose
            continue
        assert not any(_overlap(box, a) for a in data_axes), (leg.axes.get_title(), box)
        assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1 + 1 and box.y0 >= figure_box.y0
        assert len(leg.get_texts()) <= 4  # one entry for all orders, not one each
    for ax in (ax_i, ax_w):
        labels = [t for t in ax.get_legend_handles_labels()[1]]
        assert labels[0] == f"raw ρ, each class order (n = {n_orders})" and len(labels) == 4
        order_lines = [li for li in ax.get_lines() if li.get_color() == "0.55"]
        assert len(order_lines) == n_orders and all(li.get_linewidth() < 1 for li in order_lines)
        pooled = next(li for li in ax.get_lines() if li.get_label().startswith("within-class"))
        assert pooled.get_zorder() > max(li.get_zorder() for li in order_lines)  # the answer in front
    assert ax_c.get_legend_handles_labels()[1] == [
        f"each class order (n = {n_orders})",
        "range over class orders",
        "mean over class orders",
    ]
    assert not ax_c.containers  # no per-order error bars
    mean = next(li for li in ax_c.get_lines() if li.get_label() == "mean over class orders")
    last = deciles[deciles.boundary == deciles.boundary.max()]
    np.testing.assert_allclose(mean.get_ydata(), last.groupby("decile")["median"].mean().to_numpy())
    fig.savefig(tmp_path / f"memo_vs_dgrad_{n_orders}.png", dpi=80)  # for a look: the test's tmp dir
