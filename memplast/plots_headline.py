"""The headline figure ``memo_vs_<outcome>``: raw and within-class association at task boundaries.

Drawn from the tables ``memplast.stats`` wrote (per_boundary, pooled, deciles) and the pooled deltas
(hexbin). Conventions as in ``memplast.plots`` (Agg canvas, PDF + PNG with provenance).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib import ticker as mticker
from matplotlib.figure import Figure
from scipy import stats as sstats

from memplast.plots import (
    KIND_DELTA,
    MEMO_LABELS,
    _figure,
    _heavy_tailed,
    _log_axis,
    _note,
    outcome_label,
    save,
)
from memplast.stats import common
from memplast.stats.effects import decile_effects

ANSWER = (
    "Answer to the question: the within-class association (partial Spearman given class and baseline loss, "
    "black); raw Spearman (grey) also carries class-level differences."
)


def _pct(ci_level: float) -> str:
    return f"{100 * ci_level:g}%"


def _rows(table: pd.DataFrame, outcome: str, kind: str, estimator: str, pooling: str) -> pd.DataFrame:
    t = table[
        (table["outcome"] == outcome)
        & (table["kind"] == kind)
        & (table["estimator"] == estimator)
        & (table["pooling"] == pooling)
    ]
    return t


def _boundaries(t: pd.DataFrame) -> pd.DataFrame:
    t = t[t["boundary"].astype(str) != "all"].copy()
    t["b"] = t["boundary"].astype(int)
    return t.sort_values("b")


def _rho_panel(
    ax, per_boundary: pd.DataFrame, pooled: pd.DataFrame, outcome: str, kind: str, title: str, ci_level: float
) -> None:
    """Per-order raw rho (thin), pooled raw and within-class rho with sample-bootstrap CIs, and the
    within-class permutation null band of the within-class estimate."""
    ax.axhline(0, color="0.5", linewidth=0.8)
    cells = _boundaries(_rows(per_boundary, outcome, kind, "raw", "none"))
    n_orders = cells["order_seed"].nunique()
    for i, (_, g) in enumerate(cells.groupby("order_seed", sort=True)):
        # every class order thin and grey, one legend entry for all (legible at 20 orders and more)
        ax.plot(
            g["b"],
            g["estimate"],
            color="0.55",
            marker="." if n_orders <= 5 else None,
            linestyle="-",
            linewidth=0.7,
            markersize=3,
            alpha=0.8 if n_orders <= 5 else 0.45,
            zorder=1,
            label=f"raw ρ, each class order (n = {n_orders})" if i == 0 else "_nolegend_",
        )
    pct = _pct(ci_level)
    drawn = False
    for est, colour, style, label in (
        ("raw", "0.45", "--", "raw ρ, pooled over orders"),
        ("partial", "black", "-", "within-class ρ (answer), pooled"),
    ):
        t = _boundaries(_rows(pooled, outcome, kind, est, "fixed"))
        if t.empty or not np.isfinite(t["estimate"].to_numpy(float)).any():
            continue
        drawn = True
        b = t["b"].to_numpy(float)
        ax.fill_between(
            b,
            t["ci_low"].to_numpy(float),
            t["ci_high"].to_numpy(float),
            color=colour,
            alpha=0.18,
            linewidth=0,
            zorder=3,
        )
        ax.plot(
            b,
            t["estimate"].to_numpy(float),
            color=colour,
            linestyle=style,
            marker="D" if est == "partial" else "s",
            linewidth=2,
            markersize=4,
            zorder=5,
            label=f"{label} + {pct} CI",
        )
        if est == "partial" and "null_low" in t:
            ax.fill_between(
                b,
                t["null_low"].to_numpy(float),
                t["null_high"].to_numpy(float),
                facecolor="none",
                edgecolor="tab:red",
                hatch="///",
                linewidth=0.0,
                alpha=0.6,
                zorder=4,
                label=f"null band ({pct}): memo permuted within class",
            )
    if not drawn:
        _note(ax, f"no finite {kind} estimates")
    ax.set_title(title)
    ax.set_xlabel("boundary k (end of task k → task k+1)")
    ax.set_ylabel(f"Spearman ρ(memo, outcome)\n({pct} sample-bootstrap CI)")
    if len(cells):
        ax.set_xticks(sorted(cells["b"].unique()))


def _legend_outside(ax) -> None:
    """The axis' legend to its right, outside the data area (constrained layout makes room)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def _headline_text(pooled: pd.DataFrame, outcome: str, kinds: list, ci_level: float) -> str:
    lines = []
    for kind in kinds:
        parts = []
        for est, name in (("partial", "within-class"), ("raw", "raw")):
            t = pooled[
                (pooled["outcome"] == outcome)
                & (pooled["kind"] == kind)
                & (pooled["estimator"] == est)
                & (pooled["pooling"] == "fixed")
                & (pooled["boundary"].astype(str) == "all")
            ]
            if len(t) and np.isfinite(float(t["estimate"].iloc[0])):
                r = t.iloc[0]
                parts.append(f"{name} ρ = {r['estimate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
        if parts:
            lines.append(f"{kind}, all boundaries: " + "; ".join(parts) + f" ({_pct(ci_level)} CI)")
    return "\n".join(lines)


def _decile_rows(deciles: pd.DataFrame, deltas: pd.DataFrame, outcome: str, kind: str, boundary) -> pd.DataFrame:
    """Decile rows (term 'decile') per order at ``boundary``: from the table, else recomputed."""
    have = not deciles.empty and {"outcome", "kind", "boundary", "term"} <= set(deciles.columns)
    rows = (
        deciles[
            (deciles["outcome"] == outcome)
            & (deciles["kind"] == kind)
            & (deciles["boundary"] == boundary)
            & (deciles["term"] == "decile")
        ]
        if have
        else pd.DataFrame()
    )
    if not rows.empty:
        return rows
    parts = []
    old = deltas[deltas["is_old"].astype(bool) & (deltas["kind"] == kind) & (deltas["boundary"] == boundary)]
    for order, g in old.groupby("order_seed", sort=True):
        try:
            d = decile_effects(g.sort_values("sample_id"), "memo", outcome, n_boot=1000, seed=int(order))
        except ValueError:  # fewer than 2 finite samples per decile
            continue
        parts.append(d[d["term"] == "decile"].assign(order_seed=order))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _decile_panel(ax, rows: pd.DataFrame, boundary, ci_level: float) -> None:
    """Median outcome per memo decile. One class order: its medians with bootstrap CIs. Several:
    each order thin and grey, their mean in front with the range over orders as a band."""
    ax.set_title(f"(c) by memo decile, boundary {boundary}")
    wide = rows.pivot_table(index="decile", columns="order_seed", values="median", aggfunc="first").sort_index()
    d = wide.index.to_numpy(float)
    if wide.shape[1] == 1:
        g = rows.sort_values("decile")
        med = g["median"].to_numpy(float)
        err = np.abs(np.vstack([med - g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float) - med]))
        ax.errorbar(
            d,
            med,
            yerr=err,
            capsize=2,
            linewidth=1.5,
            markersize=4,
            color="black",
            marker="o",
            label=f"order {wide.columns[0]} ({_pct(ci_level)} bootstrap CI)",
        )
    else:
        n = wide.shape[1]
        for i, order in enumerate(wide.columns):
            ax.plot(
                d,
                wide[order].to_numpy(float),
                color="0.55",
                linewidth=0.7,
                alpha=0.8 if n <= 5 else 0.45,
                zorder=1,
                label=f"each class order (n = {n})" if i == 0 else "_nolegend_",
            )
        ax.fill_between(
            d,
            wide.min(axis=1).to_numpy(float),
            wide.max(axis=1).to_numpy(float),
            color="tab:blue",
            alpha=0.2,
            linewidth=0,
            zorder=2,
            label="range over class orders",
        )
        ax.plot(
            d,
            wide.mean(axis=1).to_numpy(float),
            color="black",
            marker="o",
            linewidth=2,
            markersize=4,
            zorder=5,
            label="mean over class orders",
        )
    ax.set_xticks(range(1, int(rows["decile"].max()) + 1))


def memo_vs_outcome(
    per_boundary: pd.DataFrame,
    pooled: pd.DataFrame,
    deltas: pd.DataFrame,
    deciles: pd.DataFrame,
    outcome: str,
    path,
    prov: Mapping,
    ci_level: float = 0.95,
) -> Figure:
    """Headline figure: does memo predict ``outcome`` at task boundaries? (one condition).

    (a) immediate and (a') windowed: per-order raw rho (thin), and pooled over class orders the raw
    and the within-class (partial, given class and baseline loss) rho with sample-bootstrap CIs
    and the within-class permutation null band; the all-boundary values in the subtitle;
    (b) hexbin of memo vs the outcome (windowed, else immediate) with the OLS line;
    (c) median outcome per memo decile at the last boundary: each order thin and grey, their mean
    with the range over orders as a band (one order: its bootstrap CIs).
    Legible at any number of class orders: per-order lines carry one legend entry in all, and the
    legends sit outside the data axes.
    """
    for name, table in (("per_boundary", per_boundary), ("pooled", pooled), ("deltas", deltas)):
        present = [c for c in common.CONDITION_KEYS if c in table.columns]
        if len(table) and len(table.drop_duplicates(present)) > 1:
            raise ValueError(f"memo_vs_outcome: {name} holds several conditions; select one (e.g. the primary) first")
    fig = _figure(11, 9)
    grid = fig.add_gridspec(2, 2)
    ax_i = fig.add_subplot(grid[0, 0])
    ax_w = fig.add_subplot(grid[0, 1], sharey=ax_i)
    ax_b = fig.add_subplot(grid[1, 0])
    ax_c = fig.add_subplot(grid[1, 1])
    _rho_panel(ax_i, per_boundary, pooled, outcome, "immediate", f"(a) immediate Δ {KIND_DELTA['immediate']}", ci_level)
    _rho_panel(ax_w, per_boundary, pooled, outcome, "windowed", "(a′) windowed Δ (w-epoch means)", ci_level)
    _legend_outside(ax_w)  # (a) and (a′) share their entries: one legend, right of (a′)

    kind = "windowed" if (deltas["kind"] == "windowed").any() else "immediate"
    old = deltas[deltas["is_old"].astype(bool) & (deltas["kind"] == kind)]
    xy = old[["memo", outcome]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    xy = xy[np.isfinite(xy).all(axis=1)]
    memo_label = MEMO_LABELS["memo"]
    ax_b.set_title(f"(b) old-class samples, {kind} Δ, pooled")
    ax_b.set_ylabel(outcome_label(outcome, kind))
    if len(xy) >= 3 and np.ptp(xy[:, 0]) > 0:
        log_x = _heavy_tailed(xy[:, 0])
        hb = ax_b.hexbin(
            xy[:, 0],
            xy[:, 1],
            gridsize=40,
            bins="log",
            mincnt=1,
            cmap="viridis",
            xscale="log" if log_x else "linear",
            linewidths=0.2,
        )
        if log_x:
            _log_axis(ax_b, "x")
        cbar = fig.colorbar(hb, ax=ax_b, label="rows per hexagon (log colour scale)")
        cbar.ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
        cbar.ax.yaxis.set_minor_formatter(mticker.NullFormatter())
        fx = np.log10(xy[:, 0]) if log_x else xy[:, 0]
        fit = sstats.linregress(fx, xy[:, 1])
        grid_x = np.linspace(fx.min(), fx.max(), 100)
        ax_b.plot(
            10**grid_x if log_x else grid_x,
            fit.intercept + fit.slope * grid_x,
            color="black",
            linestyle="--",
            linewidth=2,
            path_effects=[patheffects.withStroke(linewidth=4, foreground="white")],
            label=f"OLS: slope {fit.slope:.3g} per {'decade of memo' if log_x else 'unit memo'}\n"
            f"n = {len(xy)} (sample × boundary × order)",
        )
        ax_b.legend(fontsize=8, loc="best")
        ax_b.set_xlabel(f"{memo_label}{', log scale' if log_x else ''}")
    else:
        ax_b.set_xlabel(memo_label)
        _note(ax_b, "fewer than 3 finite (memo, outcome) pairs")

    rows = pd.DataFrame()
    for boundary in sorted(old["boundary"].unique(), reverse=True):  # last boundary with decile estimates
        rows = _decile_rows(deciles, deltas, outcome, kind, boundary)
        if not rows.empty:
            break
    if rows.empty:
        ax_c.set_title("(c) by memo decile")
        _note(ax_c, "too few samples for deciles")
    else:
        _decile_panel(ax_c, rows, boundary, ci_level)
    ax_c.set_xlabel("memo decile (1 = lowest memo, equal-count bins)")
    ax_c.set_ylabel(f"median {outcome_label(outcome, kind)}")
    _legend_outside(ax_c)
    kinds = [k for k in common.KINDS if (pooled["kind"] == k).any()]
    fig.suptitle(
        f"memo vs {outcome}: per-sample association at task boundaries (old-class samples)\n"
        f"{_headline_text(pooled, outcome, kinds, ci_level)}\n{ANSWER}",
        fontsize=9,
    )
    save(fig, path, prov)
    return fig
