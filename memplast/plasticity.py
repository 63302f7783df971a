"""Loss of plasticity as Dohare et al. measure it: accuracy relative to a retrained network.

For every class order k and task t, the paired difference
    d_kt = acc_kt(algorithm) - acc_kt(reference)      (reference: ``retrained``)
of end-of-task test accuracies (same class order, same random streams). Per task, its mean over
the K orders with the two-sided t-interval  mean +- t_{K-1, (1+level)/2} * sd / sqrt(K).
Base losing plasticity shows as d < 0 with the interval excluding zero, growing with t.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

PRIMARY_KEYS = ("filter", "ordering", "weighting")


def t_interval(x, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): two-sided Student-t interval mean +- t_{n-1,(1+level)/2} * sd(ddof=1) / sqrt(n)."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    mean = float(x.mean())
    if n < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / np.sqrt(n)
    return mean, float(mean - half), float(mean + half)


def ratio_interval(x, y, level: float = 0.95) -> tuple[float, float, float]:
    """(ratio, lo, hi) for mean(x) / mean(y) of paired observations (x_k, y_k), k = 1..n: Fieller's
    interval, the set of R whose paired difference x_k - R y_k has a mean the one-sample t-test at
    ``level`` does not reject. With q = t_{n-1,(1+level)/2}^2 / n and sample (co)variances s, it is
    {R : (ybar^2 - q s_yy) R^2 - 2 (xbar ybar - q s_xy) R + (xbar^2 - q s_xx) <= 0}, a bounded
    interval when ybar^2 > q s_yy (mean(y) resolved from zero); otherwise unbounded: (nan, nan)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    ratio = float(x.mean() / y.mean()) if y.mean() != 0 else float("nan")
    if n < 2:
        return ratio, float("nan"), float("nan")
    cov = np.cov(x, y, ddof=1)
    q = stats.t.ppf((1 + level) / 2, n - 1) ** 2 / n
    a = y.mean() ** 2 - q * cov[1, 1]
    b = x.mean() * y.mean() - q * cov[0, 1]
    c = x.mean() ** 2 - q * cov[0, 0]
    if a <= 0:
        return ratio, float("nan"), float("nan")
    half = np.sqrt(max(b * b - a * c, 0.0))
    return ratio, float((b - half) / a), float((b + half) / a)


def paired_gap(
    summary: pd.DataFrame, algorithm: str, reference: str = "retrained", value: str = "test_acc", level: float = 0.95
) -> pd.DataFrame:
    """Per task: the paired difference ``value``(algorithm) - ``value``(reference) over class orders.

    ``summary`` is long (order_seed, task, algorithm, value) with one row per order, task and
    algorithm (already restricted to one data condition). Returns task, n, mean, lo, hi, n_negative,
    and the mean ``value`` of both algorithms; only orders that ran both algorithms count.
    """
    need = {"order_seed", "task", "algorithm", value}
    if missing := need - set(summary.columns):
        raise ValueError(f"paired_gap: summary lacks columns {sorted(missing)}; pass run_summaries.parquet rows")
    wide = summary.pivot_table(index=["order_seed", "task"], columns="algorithm", values=value, aggfunc="first")
    for a in (algorithm, reference):
        if a not in wide.columns:
            raise ValueError(f"paired_gap: no runs of algorithm {a!r}; add it to conditions.algorithms")
    wide = wide[[algorithm, reference]].dropna()
    rows = []
    for task, g in wide.groupby(level="task"):
        d = (g[algorithm] - g[reference]).to_numpy()
        mean, lo, hi = t_interval(d, level)
        rows.append(
            {
                "task": int(task),
                "algorithm": algorithm,
                "reference": reference,
                "n": len(d),
                "mean": mean,
                "lo": lo,
                "hi": hi,
                "n_negative": int((d < 0).sum()),
                f"{value}_algorithm": float(g[algorithm].mean()),
                f"{value}_reference": float(g[reference].mean()),
            }
        )
    return pd.DataFrame(rows)


def primary_rows(summary: pd.DataFrame, primary: dict) -> pd.DataFrame:
    """The runs of the primary data condition (every algorithm)."""
    keep = np.ones(len(summary), dtype=bool)
    for k in PRIMARY_KEYS:
        if k in summary.columns:
            keep &= summary[k].astype(str).to_numpy() == str(primary[k])
    return summary[keep]


def gap_table(summary: pd.DataFrame, primary: dict, reference: str = "retrained", level: float = 0.95) -> pd.DataFrame:
    """:func:`paired_gap` of every non-reference algorithm of the primary data condition, stacked."""
    rows = primary_rows(summary, primary)
    algorithms = [a for a in sorted(rows["algorithm"].unique()) if a != reference]
    return pd.concat([paired_gap(rows, a, reference, level=level) for a in algorithms], ignore_index=True)


SIGNATURE = ("effective_rank", "rank99", "dormant_units")  # model-level columns of run_summaries


def signature_table(
    summary: pd.DataFrame, primary: dict, measures=SIGNATURE, reference: str = "retrained", level: float = 0.95
) -> pd.DataFrame:
    """The model-level signature as paired gaps: per measure (effective rank, rank99 = the 99%-count
    of singular values, Dohare et al.'s "stable rank", and dormant fraction of the end checkpoint),
    algorithm and task, ``paired_gap`` of the measure to the reference's. Base losing plasticity: ranks below retrained's, dormant fraction above."""
    rows = primary_rows(summary, primary)
    algorithms = [a for a in sorted(rows["algorithm"].unique()) if a != reference]
    parts = []
    for m in measures:
        for a in algorithms:
            g = paired_gap(rows, a, reference, value=m, level=level)
            parts.append(
                g.rename(columns={f"{m}_algorithm": "algorithm_mean", f"{m}_reference": "reference_mean"}).assign(
                    measure=m
                )
            )
    cols = [
        "measure",
        "algorithm",
        "reference",
        "task",
        "n",
        "mean",
        "lo",
        "hi",
        "n_negative",
        "algorithm_mean",
        "reference_mean",
    ]
    return pd.concat(parts, ignore_index=True)[cols]


def gap_trend(
    summary: pd.DataFrame, algorithm: str, reference: str = "retrained", value: str = "test_acc", level: float = 0.95
) -> dict:
    """Growth of the gap with the task index. Per class order k, the least-squares slope b_k of
    d_kt = value_kt(algorithm) - value_kt(reference) on t (per task); returns the mean slope over
    orders with its t-interval (``t_interval``), n and the number of negative slopes."""
    wide = summary.pivot_table(index=["order_seed", "task"], columns="algorithm", values=value, aggfunc="first")
    d = (wide[algorithm] - wide[reference]).dropna().unstack("task")
    d = d.dropna()  # orders with every task
    t = d.columns.to_numpy(dtype=float)
    if len(t) < 2:
        return {
            "algorithm": algorithm,
            "reference": reference,
            "measure": value,
            "n": len(d),
            "slope": np.nan,
            "lo": np.nan,
            "hi": np.nan,
            "n_negative": 0,
        }
    slopes = (d.to_numpy() - d.to_numpy().mean(axis=1, keepdims=True)) @ (t - t.mean()) / ((t - t.mean()) ** 2).sum()
    mean, lo, hi = t_interval(slopes, level)
    return {
        "algorithm": algorithm,
        "reference": reference,
        "measure": value,
        "n": len(slopes),
        "slope": mean,
        "lo": lo,
        "hi": hi,
        "n_negative": int((slopes < 0).sum()),
    }


def trend_table(
    summary: pd.DataFrame, primary: dict, reference: str = "retrained", base: str = "base", level: float = 0.95
) -> pd.DataFrame:
    """Per non-reference algorithm: the slope of its accuracy gap over tasks (``gap_trend``) and,
    for mitigations, the share of base's final-task gap it recovers,
        recovery = 1 - gap_a(T) / gap_base(T) = mean_k(a_k - base_k) / mean_k(ref_k - base_k)
    over the orders that ran all three at the last task T, with Fieller's interval for that ratio
    (``ratio_interval``; unbounded, NaN, when base's gap is not resolved), and the paired interval of
    a - base at T."""
    rows = primary_rows(summary, primary)
    algorithms = [a for a in sorted(rows["algorithm"].unique()) if a != reference]
    final = rows[rows["task"] == rows["task"].max()]
    base_gap = paired_gap(final, base, reference, level=level).iloc[0]["mean"] if base in algorithms else np.nan
    out = []
    for a in algorithms:
        r = gap_trend(rows, a, reference, level=level)
        if a != base and base in algorithms:
            vs = paired_gap(final, a, base, level=level).iloc[0]
            gap = paired_gap(final, a, reference, level=level).iloc[0]["mean"]
            wide = final.pivot_table(index="order_seed", columns="algorithm", values="test_acc", aggfunc="first")
            wide = wide[[a, base, reference]].dropna()
            _, rec_lo, rec_hi = ratio_interval(wide[a] - wide[base], wide[reference] - wide[base], level)
            r |= {
                "recovery": 1 - gap / base_gap if base_gap != 0 else np.nan,
                "recovery_lo": rec_lo,
                "recovery_hi": rec_hi,
                "minus_base_last": vs["mean"],
                "minus_base_lo": vs["lo"],
                "minus_base_hi": vs["hi"],
            }
        out.append(r)
    return pd.DataFrame(out)


def caption(gaps: pd.DataFrame, level: float = 0.95, trends: pd.DataFrame | None = None) -> str:
    """One sentence per algorithm: its final-task gap to the reference with the interval, and (with
    ``trends``) the gap's slope over tasks and a mitigation's recovery of base's final gap."""
    trend = {} if trends is None else trends.set_index("algorithm").to_dict("index")
    parts = []
    for a, g in gaps.groupby("algorithm", sort=False):
        last = g.loc[g["task"].idxmax()]
        text = (
            f"{a} - {last['reference']} at the last task (t={int(last['task'])}): "
            f"{100 * last['mean']:+.2f} points, {int(100 * level)}% CI "
            f"[{100 * last['lo']:+.2f}, {100 * last['hi']:+.2f}] over {int(last['n'])} class orders "
            f"({int(last['n_negative'])} below zero)"
        )
        if a in trend:
            r = trend[a]
            text += (
                f", slope over tasks {100 * r['slope']:+.2f} points/task [{100 * r['lo']:+.2f}, {100 * r['hi']:+.2f}]"
            )
            if pd.notna(r.get("recovery", np.nan)):
                text += f", recovers {100 * r['recovery']:.0f}% of base's final gap"
                if pd.notna(r.get("recovery_lo", np.nan)):
                    text += f" [{100 * r['recovery_lo']:.0f}%, {100 * r['recovery_hi']:.0f}%]"
                else:
                    text += " (interval unbounded: base's gap not resolved)"
        parts.append(text)
    return "; ".join(parts) + "."


def figure(
    summary: pd.DataFrame,
    gaps: pd.DataFrame,
    primary: dict,
    pdf: str,
    png: str | None = None,
    level: float = 0.95,
    trends: pd.DataFrame | None = None,
    signature: pd.DataFrame | None = None,
) -> str:
    """Left: mean test accuracy per task and algorithm. Middle: accuracy minus the reference's, per
    task, with the t-interval band. Right (with ``signature``): the effective rank's paired gap to
    the reference. The caption (returned, and printed under the axes) states the final-task gaps
    with their intervals (and, with ``trends``, their slopes and recoveries)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = primary_rows(summary, primary)
    text = caption(gaps, level, trends)
    fig, axes = plt.subplots(1, 2 if signature is None else 3, figsize=(9 if signature is None else 13, 3.8))
    ax0, ax1 = axes[:2]
    colors = {a: f"C{i}" for i, a in enumerate(sorted(rows["algorithm"].unique()))}
    for a, g in rows.groupby("algorithm"):
        m = g.groupby("task")["test_acc"].mean()
        ax0.plot(m.index, 100 * m.to_numpy(), marker="o", label=a, color=colors[a])
    ax0.set(xlabel="task", ylabel="test accuracy (%)", title="end-of-task test accuracy")
    ax0.legend(fontsize=8)
    ax1.axhline(0, color="k", lw=0.8)
    for a, g in gaps.groupby("algorithm", sort=False):
        ax1.plot(g["task"], 100 * g["mean"], marker="o", label=f"{a} - {g['reference'].iloc[0]}", color=colors[a])
        ax1.fill_between(g["task"], 100 * g["lo"], 100 * g["hi"], alpha=0.2, color=colors[a])
    ax1.set(
        xlabel="task", ylabel="accuracy difference (points)", title=f"minus retrained (mean, {int(100 * level)}% t-CI)"
    )
    ax1.legend(fontsize=8)
    if signature is not None:
        ax2 = axes[2]
        ax2.axhline(0, color="k", lw=0.8)
        for a, g in signature[signature["measure"] == "effective_rank"].groupby("algorithm", sort=False):
            ax2.plot(g["task"], g["mean"], marker="o", label=f"{a} - {g['reference'].iloc[0]}", color=colors[a])
            ax2.fill_between(g["task"], g["lo"], g["hi"], alpha=0.2, color=colors[a])
        ax2.set(xlabel="task", ylabel="effective rank difference", title="feature effective rank minus retrained")
        ax2.legend(fontsize=8)
    import textwrap

    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(text, 150)), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(pdf)
    if png:
        fig.savefig(png, dpi=120)
    plt.close(fig)
    return text


# --------------------------------------------------------------------------- algorithm comparison
COMPARISON = ("dormant_units", "effective_rank", "stable_rank", "rank99", "mean_abs_weight", "replaced")


def algorithm_table(
    summary: pd.DataFrame,
    primary: dict,
    hyper: dict,
    reference: str = "retrained",
    base: str = "base",
    level: float = 0.95,
) -> pd.DataFrame:
    """The algorithm comparison: per algorithm and task of the primary data condition, the mean test
    accuracy over class orders; the paired gap to ``reference`` and to ``base`` (:func:`paired_gap`:
    mean and t-interval over orders); the mean of each model-level measure in :data:`COMPARISON`
    (dormant fraction, effective rank, stable rank, rank99, mean |weight|, units replaced); and the
    hyper-parameters used (``hyper[algorithm]`` = {"values": {...}, "tuned": bool}) as JSON."""
    import json

    rows = primary_rows(summary, primary)
    present = set(rows["algorithm"])
    means = rows.groupby(["algorithm", "task"])[["test_acc", *COMPARISON]].mean()
    n = rows.groupby(["algorithm", "task"])["order_seed"].nunique().rename("n_orders")
    parts = []
    for a in sorted(present):
        block = means.loc[a].join(n.loc[a]).reset_index().assign(algorithm=a)
        for ref, tag in ((reference, "retrained"), (base, "base")):
            cols = [f"gap_{tag}", f"gap_{tag}_lo", f"gap_{tag}_hi"]
            if a != ref and ref in present:
                g = paired_gap(rows, a, ref, level=level).set_index("task")[["mean", "lo", "hi"]]
                block = block.join(g.set_axis(cols, axis=1), on="task")
            else:
                block[cols] = np.nan
        block["hyper_parameters"] = json.dumps(hyper.get(a, {}).get("values", {}), sort_keys=True)
        block["tuned"] = bool(hyper.get(a, {}).get("tuned", False))
        parts.append(block)
    lead = ["algorithm", "task", "n_orders", "test_acc"]
    gaps = [f"gap_{t}{s}" for t in ("retrained", "base") for s in ("", "_lo", "_hi")]
    return pd.concat(parts, ignore_index=True)[[*lead, *gaps, *COMPARISON, "hyper_parameters", "tuned"]]


def algorithm_figure(table: pd.DataFrame, pdf: str, png: str | None = None, level: float = 0.95) -> str:
    """Per task and algorithm: the paired gap to retrained (mean and t-interval band), the dormant
    fraction, the effective rank and the units replaced. Returns the caption (final-task gaps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    colors = {a: f"C{i}" for i, a in enumerate(sorted(table["algorithm"].unique()))}
    panels = (("gap_retrained", "minus retrained (points)", 100), ("dormant_units", "dormant fraction", 1),
              ("effective_rank", "effective rank", 1), ("replaced", "units replaced", 1))  # fmt: skip
    for ax, (col, label, scale) in zip(axes, panels):
        for a, g in table.groupby("algorithm"):
            if g[col].notna().any():
                tag = " (tuned)" if g["tuned"].iloc[0] else ""
                ax.plot(g["task"], scale * g[col], marker="o", color=colors[a], label=a + tag)
                if col == "gap_retrained":
                    ax.fill_between(
                        g["task"], scale * g[f"{col}_lo"], scale * g[f"{col}_hi"], color=colors[a], alpha=0.2
                    )
        ax.set(xlabel="task", ylabel=label)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].legend(fontsize=8)
    last = table[table["task"] == table["task"].max()].dropna(subset=["gap_retrained"])
    text = "; ".join(
        f"{r.algorithm} - retrained at the last task: {100 * r.gap_retrained:+.2f} points "
        f"[{100 * r.gap_retrained_lo:+.2f}, {100 * r.gap_retrained_hi:+.2f}] ({int(100 * level)}% t-CI, {r.n_orders} orders)"
        for r in last.itertuples()
    )
    fig.suptitle(text, fontsize=8, wrap=True)
    fig.tight_layout()
    fig.savefig(pdf)
    if png:
        fig.savefig(png, dpi=120)
    plt.close(fig)
    return text
