"""Figures of the workflow (matplotlib/seaborn, no display needed).

Every public function draws one figure from tables the workflow already wrote, saves it as a
vector PDF plus a PNG with the same stem (for the HTML report) and returns the Figure, so tests
can inspect its axes. Provenance travels with the file: ``json.dumps(prov)`` is the PDF's
``Subject`` and the PNG's ``Description`` (read it back with :func:`memplast.io.read_provenance`).
Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (never pyplot), so
nothing accumulates in pyplot's figure registry. Lines differ by marker and line style as well
as colour, so every figure reads in greyscale.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker as mticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from memplast import io
from memplast.stats import common as stats

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")
PALETTE = sns.color_palette("colorblind")

KIND_DELTA = {
    "immediate": "(E_k+1 − B_k)",
    "windowed": "(mean (E_k, E_k+w] − mean [B_k−w+1, B_k])",
}
OUTCOME_LABELS = {
    "d_loss": "Δ loss ℓᵢ (CE, old-class mask)",
    "d_log_grad": "Δ log ‖∇θ ℓᵢ‖",
    "grad_drop": "‖∇θ ℓᵢ‖ drop (before − after)",
    "d_margin": "Δ margin z_y − max_{j≠y} z_j",
    "d_input_grad": "Δ ‖∇x ℓᵢ‖",
    "d_drift": "Δ feature drift ‖h_e − h_e−1‖ (after − before window)",
    "align_cos": "cos(gᵢ, G_next) at E_k",
    "align_dot": "gᵢ · G_next at E_k",
    "pred_forget": "predicted Δℓᵢ (−η g·G + η²/2 GᵀHG)",
}
MEMO_LABELS = {
    "memo": "memo mᵢ (static score, scorer-grid mean)",
    "memo_dyn": "dynamic memo mᵢ(t) (in-run curvature)",
    "memo_pct": "memo percentile (0–100)",
}
METHOD_LABELS = {
    "curv_exact": "Tr(H²) exact",
    "curv_hutch": "Tr(H²) Hutchinson",
    "curv_fd": "Tr(H²) finite diff.",
    "csl": "cumulative sample loss",
    "fz_mem": "Feldman–Zhang mem.",
}
METHOD_SHORT = {"curv_exact": "exact", "curv_hutch": "Hutch.", "curv_fd": "FD", "csl": "CSL", "fz_mem": "FZ"}
METHOD_KEY = "exact / Hutch. / FD: Tr(H²) estimators\nCSL: cum. sample loss; FZ: Feldman–Zhang"
MODEL_METRICS = {
    "dormant_units": "dormant units (fraction; activation rate < 0.01)",
    "effective_rank": "effective rank exp H(s/Σs) of features",
    "rank99": "rank99: #s for 99% of Σs (Dohare's stable rank)",
    "mean_abs_weight": "mean |θ| over all parameters",
}
TASK_LABEL = "task t (metric at end of task t)"


# --------------------------------------------------------------------------- saving


def save(fig: Figure, path, prov: Mapping) -> tuple[Path, Path]:
    """Write ``fig`` atomically to ``path`` (PDF, provenance JSON in ``Subject``) and the PNG
    with the same stem (provenance in ``Description``). Returns (pdf path, png path)."""
    pdf = Path(path)
    if pdf.suffix.lower() != ".pdf":
        raise ValueError(f"save: figure path must end in .pdf, got {pdf}")
    png = pdf.with_suffix(".png")
    prov_json = json.dumps(dict(prov), default=str, sort_keys=True)
    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    with io.atomic_path(pdf) as tmp:  # CreationDate None: same inputs give the same bytes
        fig.savefig(tmp, format="pdf", metadata={"Title": pdf.stem, "Subject": prov_json, "CreationDate": None})
    with io.atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=150, metadata={"Title": pdf.stem, "Description": prov_json})
    return pdf, png


# --------------------------------------------------------------------------- helpers


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(i: int) -> dict:
    """Colour, marker and line style of the i-th series (distinct in greyscale too)."""
    return {
        "color": PALETTE[i % len(PALETTE)],
        "marker": MARKERS[i % len(MARKERS)],
        "linestyle": LINESTYLES[i % len(LINESTYLES)],
    }


def _note(ax, text: str) -> None:
    """Centred grey message in an axis that has nothing (or not everything) to show."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.3", wrap=True)


def outcome_label(outcome: str, kind: str | None = None) -> str:
    """Axis label of an outcome column, with the delta definition of ``kind``."""
    if outcome.startswith("d_dormant_t"):
        text = f"Δ dormant fraction of units on xᵢ (τ = {outcome.removeprefix('d_dormant_t')})"
    else:
        text = OUTCOME_LABELS.get(outcome, outcome)
    return f"{text}\n{KIND_DELTA[kind]}" if kind in KIND_DELTA and outcome.startswith(("d_", "grad_drop")) else text


def _log_axis(ax, which: str = "y") -> None:
    """Log scale with plain tick labels (0.01, 1, 100: readable, and no mathtext to typeset)."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(mticker.NullFormatter())


def _heavy_tailed(x: np.ndarray) -> bool:
    """Positive and spanning > 1.5 decades between the 1st and 99th percentile: use a log axis."""
    x = x[np.isfinite(x)]
    if len(x) < 2 or x.min() <= 0:
        return False
    lo, hi = np.quantile(x, [0.01, 0.99])
    return hi / lo > 10**1.5


def _condition_label(cond: Mapping) -> str:
    """'primary' or the factors in which a condition differs from the primary one."""
    diff = [f"{k}={cond[k]}" for k in stats.CONDITION_KEYS if cond[k] != stats.PRIMARY[k]]
    return ", ".join(diff) if diff else "primary"


def _conditions(summary: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """(condition dict, rows) per condition, primary first."""
    groups = [(dict(zip(stats.CONDITION_KEYS, key)), g) for key, g in summary.groupby(stats.CONDITION_KEYS, sort=True)]
    return sorted(groups, key=lambda cg: _condition_label(cg[0]) != "primary")


def _band(ax, table: pd.DataFrame, x: str, y: str, i: int, label: str) -> None:
    """Mean over class orders (line) with the min–max band over orders."""
    agg = table.groupby(x)[y].agg(["mean", "min", "max", "count"]).reset_index()
    n_orders = table["order_seed"].nunique()
    ax.plot(agg[x], agg["mean"], **_style(i), label=f"{label} (n orders = {n_orders})")
    if n_orders > 1:
        ax.fill_between(agg[x], agg["min"], agg["max"], color=_style(i)["color"], alpha=0.2, linewidth=0)


# --------------------------------------------------------------------------- model-level figures


def accuracy_curves(summary: pd.DataFrame, path, prov: Mapping) -> Figure:
    """Test accuracy per task and condition (mean over class orders, min–max band), and the
    accuracy relative to the ``retrained`` run of the same filter/ordering/weighting, order and task."""
    stats.require(summary, stats.RUN_KEYS + ["task", "test_acc"], "accuracy_curves")
    fig = _figure(11, 4.5)
    ax_a, ax_r = fig.subplots(1, 2)
    ref_keys = ["order_seed", "filter", "ordering", "weighting", "task"]
    ref = summary[summary["algorithm"] == "retrained"][ref_keys + ["test_acc"]].rename(columns={"test_acc": "_ref"})
    rel = summary.merge(ref, on=ref_keys, how="inner").assign(rel_acc=lambda d: d["test_acc"] / d["_ref"])
    rel = rel[rel["algorithm"] != "retrained"]
    unmatched = []
    for i, (cond, g) in enumerate(_conditions(summary)):
        label = _condition_label(cond)
        _band(ax_a, g, "task", "test_acc", i, label)
        r = rel[np.logical_and.reduce([rel[k] == cond[k] for k in stats.CONDITION_KEYS])] if len(rel) else rel
        if len(r):
            _band(ax_r, r, "task", "rel_acc", i, label)
        elif cond["algorithm"] != "retrained":
            unmatched.append(label)
    ax_a.set_title("(a) test accuracy at the end of each task")
    ax_a.set_ylabel("test accuracy (fraction correct, seen classes)")
    ax_r.set_title("(b) accuracy relative to retrained-from-scratch")
    ax_r.set_ylabel("test acc / test acc of retrained (same order, task)")
    if rel.empty:
        _note(ax_r, "no retrained reference run\nwith matching filter/ordering/weighting/order")
    else:
        ax_r.axhline(1, color="0.4", linewidth=1, linestyle=":", label="retrained = 1")
        if unmatched:
            ax_r.text(
                0.02,
                0.02,
                "no retrained reference for: " + "; ".join(unmatched),
                transform=ax_r.transAxes,
                fontsize=7,
                color="0.3",
                wrap=True,
            )
    for ax in (ax_a, ax_r):
        ax.set_xlabel(TASK_LABEL)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("Accuracy per task (line: mean over class orders; band: min–max over orders)")
    save(fig, path, prov)
    return fig


def dormant_and_rank(summary: pd.DataFrame, path, prov: Mapping) -> Figure:
    """Dormant units, effective rank, rank99 (Dohare et al.'s "stable rank") and mean |weight| over
    tasks per condition (mean over class orders, min–max band); a missing metric column leaves a note."""
    stats.require(summary, stats.RUN_KEYS + ["task"], "dormant_and_rank")
    fig = _figure(11, 8)
    axes = fig.subplots(2, 2).ravel()
    conds = _conditions(summary)
    for ax, (letter, (metric, label)) in zip(axes, zip("abcd", MODEL_METRICS.items())):
        ax.set_title(f"({letter}) {metric}")
        ax.set_xlabel(TASK_LABEL)
        ax.set_ylabel(label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if metric not in summary.columns or not np.isfinite(pd.to_numeric(summary[metric], errors="coerce")).any():
            _note(ax, f"no {metric} column in the summary")
            continue
        for i, (cond, g) in enumerate(conds):
            _band(ax, g, "task", metric, i, _condition_label(cond))
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Model-level plasticity metrics per task (mean over class orders; band: min–max)")
    save(fig, path, prov)
    return fig


# --------------------------------------------------------------------------- intervention diagnostics


def class_balance(balance: pd.DataFrame, path, prov: Mapping) -> Figure:
    """Per filter: fraction of each class kept (classes sorted by it) with CV and min/max ratio
    of the kept counts."""
    stats.require(balance, ["label", "fraction_kept", "filter", "summary_cv", "summary_min_max_ratio"], "class_balance")
    filters = sorted(balance["filter"].unique(), key=lambda f: (f != "none", str(f)))  # unfiltered first
    ncols = min(3, max(len(filters), 1))
    nrows = max(1, -(-len(filters) // ncols))
    fig = _figure(4 * ncols, 3.4 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True)).ravel()
    for ax, filt in zip(axes, filters):
        g = balance[balance["filter"] == filt].sort_values("fraction_kept", ascending=False)
        ax.bar(np.arange(len(g)), g["fraction_kept"], width=0.9, color="0.45", edgecolor="0.2", linewidth=0.3)
        first = g.iloc[0]
        text = f"CV of kept counts = {first['summary_cv']:.3f}\nmin/max kept = {first['summary_min_max_ratio']:.3f}"
        if {"summary_n_kept", "summary_n_before"} <= set(g.columns):
            text += f"\nkept {int(first['summary_n_kept'])} / {int(first['summary_n_before'])}"
        ax.text(
            0.97,
            0.04,
            text,
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "0.6", "alpha": 0.9},
        )
        ax.set_title(f"filter: {filt}")
        ax.set_xlabel(f"class, ranked by kept fraction ({len(g)} classes)")
        if len(g) <= 20:
            ax.set_xticks(np.arange(len(g)), g["label"].astype(str), fontsize=7)
        else:
            ax.set_xticks([])
        ax.set_ylabel("kept fraction n_kept / n_before")
        ax.set_ylim(0, 1.05)
    for ax in axes[len(filters) :]:
        ax.remove()
    fig.suptitle("Class balance of the filtered training subsets")
    save(fig, path, prov)
    return fig


def order_diagnostics(diag: pd.DataFrame, path, prov: Mapping) -> Figure:
    """One row per ordering: moving mean and moving variance of memo along the epoch's order
    (position normalized to 0..1), and the histogram of gaps between consecutive high-memo samples
    (dotted line: the mean gap (n+1)/(k+1) of a random order)."""
    stats.require(diag, ["ordering", "position", "memo", "moving_mean", "moving_var", "high_memo"], "order_diagnostics")
    orderings = list(dict.fromkeys(diag["ordering"]))
    fig = _figure(12, 2.6 * len(orderings) + 0.6)
    axes = np.atleast_2d(fig.subplots(len(orderings), 3, sharex="col", sharey="col", squeeze=False))
    log_mean = (diag["moving_mean"].dropna() > 0).all()
    log_var = (diag["moving_var"].dropna() > 0).all()
    all_gaps = {
        o: np.diff(np.sort(g.loc[g["high_memo"].astype(bool), "position"].to_numpy()))
        for o, g in diag.groupby("ordering")
    }
    max_gap = max((gaps.max() for gaps in all_gaps.values() if len(gaps)), default=1)
    bins = np.unique(np.round(np.geomspace(1, max_gap + 1, 30))) - 0.5
    for i, ordering in enumerate(orderings):
        g = diag[diag["ordering"] == ordering].sort_values("position")
        pos = g["position"].to_numpy(float) / max(len(g) - 1, 1)
        ax_m, ax_v, ax_g = axes[i]
        ax_m.plot(pos, g["moving_mean"], color="black", linewidth=1, label="memo")
        if "influence_moving_mean" in g and g["influence_moving_mean"].notna().any():
            twin = ax_m.twinx()
            twin.plot(
                pos, g["influence_moving_mean"], color=PALETTE[1], linewidth=1, linestyle="--", label="FZ influence"
            )
            twin.set_ylabel("moving mean of FZ self-influence", color=PALETTE[1])
            ax_m.legend(handles=ax_m.get_lines() + twin.get_lines(), fontsize=7, loc="best")
        ax_v.plot(pos, g["moving_var"], color="black", linewidth=1)
        ax_m.set_title(f"{ordering}: moving mean")
        ax_v.set_title(f"{ordering}: moving variance")
        ax_m.set_ylabel("moving mean of memo")
        ax_v.set_ylabel("moving variance of memo")
        if log_mean:
            _log_axis(ax_m)
        if log_var:
            _log_axis(ax_v)
        gaps = all_gaps[ordering]
        k, n = int(g["high_memo"].astype(bool).sum()), len(g)
        ax_g.set_title(f"{ordering}: high-memo gaps")
        ax_g.set_ylabel("number of gaps")
        if len(gaps):
            ax_g.hist(gaps, bins=bins, color="0.5", edgecolor="0.2", linewidth=0.4)
            expected = (n + 1) / (k + 1)
            ax_g.axvline(expected, color="black", linestyle=":", label=f"random order: {expected:.1f}")
            ax_g.text(
                0.98,
                0.95,
                f"k = {k} high-memo of n = {n}\nmean gap = {gaps.mean():.1f}",
                transform=ax_g.transAxes,
                ha="right",
                va="top",
                fontsize=8,
            )
            ax_g.legend(fontsize=7, loc="center right")
        else:
            _note(ax_g, "fewer than 2 high-memo samples")
        _log_axis(ax_g, "x")
    for ax in axes[-1, :2]:
        ax.set_xlabel("position in the epoch's order (0 = first, 1 = last)")
    axes[-1, 2].set_xlabel("gap to next high-memo sample\n(positions, log scale)")
    fig.suptitle("Sample orderings: memo along the first epoch of the last task")
    save(fig, path, prov)
    return fig


# --------------------------------------------------------------------------- memo validation


def _as_image(a) -> tuple[np.ndarray, str | None]:
    """HxW or CxHxW (C = 1 or 3) array -> (array for imshow, colormap)."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return a, ("gray" if a.ndim == 2 else None)


def _score_violins(ax_d, scores: pd.DataFrame, methods: list) -> None:
    """Panel (a): log10 score per method (violins; non-positive scores counted, not drawn)."""
    long, ticks = [], []
    for m in methods:
        v = scores[m].to_numpy(float)
        v = v[np.isfinite(v)]
        pos = v[v > 0]
        long.append(pd.DataFrame({"method": m, "log10 score": np.log10(pos)}))
        dropped = f", {len(v) - len(pos)} ≤ 0 not shown" if len(pos) < len(v) else ""
        ticks.append(f"{METHOD_LABELS[m]}\n(n={len(v)}{dropped})")
    if long and sum(len(d) for d in long):
        sns.violinplot(
            data=pd.concat(long, ignore_index=True),
            x="method",
            y="log10 score",
            order=methods,
            ax=ax_d,
            color="0.75",
            inner="quart",
            cut=0,
            density_norm="width",
            linewidth=0.8,
        )
        ax_d.set_xticks(range(len(methods)), ticks, fontsize=8)
    else:
        _note(ax_d, "no score columns")
    ax_d.set_title("(a) score distribution per method (training samples)")
    ax_d.set_xlabel("method")
    ax_d.set_ylabel("log10 score (per method's own units)")


def _agreement_heatmap(ax_h, agreement: pd.DataFrame) -> None:
    """Panel (b): Spearman between methods (subset 'all' when present)."""
    ax_h.set_title("(b) Spearman ρ between methods")
    sub = agreement
    if not agreement.empty and "subset" in agreement.columns:
        chosen = "all" if (agreement["subset"] == "all").any() else agreement["subset"].iloc[0]
        sub = agreement[agreement["subset"] == chosen]
        ax_h.set_title(f"(b) Spearman ρ, subset {chosen}")
    if sub.empty:
        _note(ax_h, "no agreement table")
    else:
        names = list(dict.fromkeys(list(sub["method_a"]) + list(sub["method_b"])))
        mat = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
        for _, r in sub.iterrows():
            mat.loc[r["method_a"], r["method_b"]] = mat.loc[r["method_b"], r["method_a"]] = r["spearman"]
        short = [METHOD_SHORT.get(n, n) for n in names]
        sns.heatmap(
            mat.to_numpy(float),
            ax=ax_h,
            vmin=-1,
            vmax=1,
            cmap="viridis",
            annot=True,
            fmt=".2f",
            cbar=False,
            square=True,
            xticklabels=short,
            yticklabels=short,
            annot_kws={"fontsize": 8},
        )
        ax_h.tick_params(labelsize=7)
    ax_h.set_xlabel(METHOD_KEY, fontsize=8)
    ax_h.set_ylabel("method")


def _auroc_bars(ax_a, auroc: pd.DataFrame | None) -> None:
    """Panel (c): AUROC per method for the planted noisy labels."""
    ax_a.set_title("(c) AUROC, planted noisy labels")
    ax_a.set_xlabel(METHOD_KEY, fontsize=8)
    ax_a.set_ylabel("AUROC (0.5 = chance, dotted)")
    if auroc is None or auroc.empty:
        _note(ax_a, "no planted label noise:\nAUROC not computed")
    else:
        x = np.arange(len(auroc))
        bars = ax_a.bar(x, auroc["auroc"], color="0.55", edgecolor="0.2")
        ax_a.bar_label(bars, fmt="%.2f", fontsize=8)
        ax_a.axhline(0.5, color="black", linestyle=":", linewidth=1)
        ax_a.set_xticks(x, [METHOD_SHORT.get(m, m) for m in auroc["method"]], fontsize=8)
        ax_a.set_ylim(0, 1.08)
        if "n_noisy" in auroc.columns:
            ax_a.text(
                0.02,
                0.97,
                f"{int(auroc['n_noisy'].iloc[0])} noisy samples",
                transform=ax_a.transAxes,
                va="top",
                fontsize=8,
            )


def _top_images(right, scores: pd.DataFrame, images: Mapping, top_k: int) -> None:
    """Panel (d): the ``top_k`` training images by memo, with label (and original label when noisy)."""
    top = (
        scores.sort_values(["memo", "sample_id"], ascending=[False, True], kind="mergesort").head(top_k)
        if "memo" in scores.columns
        else scores.iloc[:0]
    )
    shown = [r for r in top.to_dict("records") if r["sample_id"] in images]
    missing = f" ({len(top) - len(shown)} without image)" if len(shown) < len(top) else ""
    right.suptitle(f"(d) top {len(top)} training images by memo{missing}", fontsize="large")
    if not shown:
        ax = right.add_subplot(1, 1, 1)
        ax.set_axis_off()
        _note(ax, "no images of the top samples (or no memo column)")
    else:
        ncols = int(np.ceil(np.sqrt(len(shown))))
        nrows = int(np.ceil(len(shown) / ncols))
        for j, r in enumerate(shown):
            ax = right.add_subplot(nrows, ncols, j + 1)
            img, cmap = _as_image(images[r["sample_id"]])
            ax.imshow(img, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            title = f"#{r['sample_id']} y={r['label']}" if "label" in r else f"#{r['sample_id']}"
            if bool(r.get("noisy", False)) and "orig_label" in r:
                title += f"\nnoisy, orig {r['orig_label']}"
            ax.set_title(title, fontsize=7)


def memo_validation(
    scores: pd.DataFrame,
    agreement: pd.DataFrame,
    auroc: pd.DataFrame,
    images: Mapping,
    path,
    prov: Mapping,
    top_k: int = 16,
) -> Figure:
    """Do the memorization scores agree and flag planted label noise? (training samples).

    (a) distribution of log10 score per method (violins; non-positive scores counted, not drawn);
    (b) Spearman between methods (subset 'all' of ``agreement`` when present);
    (c) AUROC per method for flagging the planted noisy labels (note when ``auroc`` is empty);
    (d) the ``top_k`` training images by ``memo`` with label (and original label when noisy).
    """
    if "split" in scores.columns:
        scores = scores[scores["split"] == "train"]
    methods = [m for m in METHOD_LABELS if m in scores.columns and np.isfinite(scores[m].to_numpy(float)).any()]
    fig = _figure(14, 8.5)
    left, right = fig.subfigures(1, 2, width_ratios=[1.25, 1])
    grid = left.add_gridspec(2, 2)
    ax_d = left.add_subplot(grid[0, :])
    ax_h = left.add_subplot(grid[1, 0])
    ax_a = left.add_subplot(grid[1, 1])

    _score_violins(ax_d, scores, methods)
    _agreement_heatmap(ax_h, agreement)
    _auroc_bars(ax_a, auroc)
    _top_images(right, scores, images, top_k)
    fig.suptitle("Validation of the memorization scores")
    save(fig, path, prov)
    return fig


__all__ = [
    "save",
    "outcome_label",
    "accuracy_curves",
    "dormant_and_rank",
    "class_balance",
    "order_diagnostics",
    "memo_validation",
]


# --------------------------------------------------------------------------- held-out samples


def heldout_slices(measures: pd.DataFrame, definition: str, path, prov: Mapping) -> Figure:
    """Test accuracy per task on the memo-dependent slice (solid) and on the rest (dotted), one
    colour per condition (mean over class orders, min–max band on the slice), and their difference."""
    fig = _figure(11, 4.5)
    ax_a, ax_g = fig.subplots(1, 2)
    per_task = measures[measures["task"] >= 0]
    for i, (cond, g) in enumerate(_conditions(per_task)):
        label = _condition_label(cond)
        wide = g.pivot_table(index=["order_seed", "task"], columns="measure", values="value").reset_index()
        if "acc_dependent" not in wide:
            continue
        _band(ax_a, wide, "task", "acc_dependent", i, label)
        rest = wide.groupby("task")["acc_rest"].mean()
        ax_a.plot(rest.index, rest.to_numpy(), color=_style(i)["color"], linestyle=":", linewidth=1)
        _band(ax_g, wide, "task", "acc_gap", i, label)
    ax_a.set_title(f"(a) test accuracy: memo-dependent ({definition}; lines, band) vs the rest (dotted)", fontsize=9)
    ax_a.set_ylabel("test accuracy (fraction correct, seen classes)")
    ax_g.set_title("(b) memo-dependent minus the rest")
    ax_g.set_ylabel("accuracy difference")
    ax_g.axhline(0, color="0.4", linewidth=1, linestyle=":")
    for ax in (ax_a, ax_g):
        ax.set_xlabel(TASK_LABEL)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        else:
            _note(ax, "no memo-dependent test sample")
    fig.suptitle(
        "Held-out samples that depend on memorized training samples (line: mean over class orders; band: min–max)"
    )
    save(fig, path, prov)
    return fig
