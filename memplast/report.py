"""The report's landing page: the question, and the answer generated from results/stats/headline.csv.

``landing_page`` fills the marker line ``.. answer`` of the report template (report/workflow.rst)
with an RST table of the headline within-class associations (outcome x kind, pooled over class
orders and boundaries, with CIs, the within-class permutation null band and BH-adjusted p) and
one generated sentence per outcome. Every number says what it generalises to: the headline is
fixed pooling (these class orders); from 5 class orders on, the random-effects interval (new class
orders) stands next to it. A p-value at the resampling floor is a bound, printed "< 1/(B+1)".
The page is written under ``.snakemake/memplast`` of the working
directory and returns its absolute path (for Snakefile's ``report:``). Before the statistics
exist, the answer says so.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

MARKER = ".. answer"
HEADLINE = "results/stats/headline.csv"


def _fmt(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.3f}"


def _p(x: float, bound: bool = False) -> str:
    """A p-value; ``bound`` (at the resampling floor): "< 1/(B+1) (value)", or "< value" once
    BH-adjusted above the floor."""
    if not math.isfinite(x):
        return "n/a"
    text = f"{x:.2g}" if x >= 1e-3 else f"{x:.1e}"
    if not bound:
        return text
    n = round(1 / x)
    return f"< 1/{n} ({text})" if abs(n * x - 1) < 1e-9 else f"< {text}"


def _bound(r, col: str = "p_at_floor") -> bool:
    return bool(r.get(col, False)) and not pd.isna(r.get(col))


def _random(r) -> str:
    """The random-effects (new class orders) estimate and interval of a headline row, if shown."""
    est = r.get("random_estimate", float("nan"))
    if pd.isna(est):
        return "n/a (needs ≥ 5 class orders)"
    return f"{_fmt(est)} [{_fmt(r['random_ci_low'])}, {_fmt(r['random_ci_high'])}]"


def answer_rst(headline: pd.DataFrame, ci_level: float, alpha: float = 0.05) -> str:
    """RST list-table of the headline rows and one sentence per outcome."""
    pct = f"{100 * ci_level:g}%"
    h = headline.copy()
    h["boundary"] = h["boundary"].astype(str)
    h = h[(h["boundary"] == "all") & (h["pooling"] == "fixed")]
    part = h[h["estimator"] == "partial"].set_index(["outcome", "kind"])
    raw = h[h["estimator"] == "raw"].set_index(["outcome", "kind"])
    lines = [
        f".. list-table:: Answer: within-class association of memo with each boundary outcome (Spearman, adjusted "
        f"for class and baseline loss; pooled over boundaries and over these class orders (fixed); {pct} "
        f"sample-bootstrap CI; p marked < is at the resampling floor, a bound)",
        "   :header-rows: 1",
        "",
        "   * - outcome",
        "     - kind",
        "     - within-class ρ",
        f"     - {pct} CI",
        "     - null band (memo permuted within class)",
        "     - p (BH)",
        "     - new class orders: ρ [CI] (random effects)",
        "     - raw ρ [CI]",
        "     - samples x orders",
    ]
    for (outcome, kind), r in part.iterrows():
        rr = raw.loc[(outcome, kind)] if (outcome, kind) in raw.index else None
        raw_text = f"{_fmt(rr['estimate'])} [{_fmt(rr['ci_low'])}, {_fmt(rr['ci_high'])}]" if rr is not None else "n/a"
        lines += [
            f"   * - {outcome}",
            f"     - {kind}",
            f"     - {_fmt(r['estimate'])}",
            f"     - [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]",
            f"     - [{_fmt(r['null_low'])}, {_fmt(r['null_high'])}]",
            f"     - {_p(r['p_bh'], _bound(r))}",
            f"     - {_random(r)}",
            f"     - {raw_text}",
            f"     - {int(r['n_samples'])} x {int(r['n_orders'])}",
        ]
    lines.append("")
    for outcome, g in part.reset_index().groupby("outcome", sort=False):
        bits = []
        for _, r in g.iterrows():
            if not math.isfinite(r["estimate"]):
                bits.append(f"no estimate for the {r['kind']} deltas")
                continue
            sig = math.isfinite(r["p_bh"]) and r["p_bh"] < alpha
            direction = "higher" if r["estimate"] > 0 else "lower"
            verdict = (
                f"samples memorized more than others of their class have {direction} {outcome}"
                if sig
                else f"no within-class association of memo with {outcome} is detected"
            )
            orders = int(r["n_orders"])
            ran = (
                ""
                if pd.isna(r.get("random_estimate", float("nan")))
                else (
                    f"; for new class orders (random effects over the {orders}): ρ = {_fmt(r['random_estimate'])}, "
                    f"{pct} CI [{_fmt(r['random_ci_low'])}, {_fmt(r['random_ci_high'])}]"
                )
            )
            bits.append(
                f"{verdict} in the {r['kind']} deltas (these {orders} class orders, fixed pooling: "
                f"ρ = {_fmt(r['estimate'])}, {pct} CI [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}], "
                f"BH p {'' if _bound(r) else '= '}{_p(r['p_bh'], _bound(r))}; "
                f"null band [{_fmt(r['null_low'])}, {_fmt(r['null_high'])}]{ran})"
            )
        lines += [f"- **{outcome}**: " + "; ".join(bits) + ".", ""]
    lines += [
        "Fixed pooling answers for these class orders; the random-effects interval (from 5 class orders on) "
        "answers for new class orders. A p marked < is at the resampling floor 1/(B+1) of B draws: a bound, "
        "not an exact value.",
        "",
    ]
    return "\n".join(lines)


def landing_page(template: str | Path, workdir: str | Path = ".", ci_level: float = 0.95) -> str:
    """Write the landing page (template with the answer filled in); return its absolute path."""
    text = Path(template).read_text()
    headline = Path(workdir) / HEADLINE
    if headline.exists():
        answer = answer_rst(pd.read_csv(headline), ci_level)
    else:
        answer = "*The answer appears here once the statistics (results/stats/headline.csv) exist.*\n"
    if MARKER not in text:
        raise ValueError(f"landing_page: {template} lacks the marker line {MARKER!r}")
    out = Path(workdir).resolve() / ".snakemake" / "memplast" / "workflow.rst"
    out.parent.mkdir(parents=True, exist_ok=True)
    new = text.replace(MARKER, answer)
    if not out.exists() or out.read_text() != new:
        out.write_text(new)
    return str(out)
