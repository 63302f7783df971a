"""The report's landing page: the question, and the answer generated from the statistics.

``landing_page`` fills the marker line ``.. answer`` of the report template (report/workflow.rst)
and writes the page under ``.snakemake/memplast`` of the working directory; it returns its absolute
path (for Snakefile's ``report:``). The answer, read from results/stats/headline.csv and
results/stats/plasticity_gap.csv, is short enough to read at a glance beside the workflow graph:
plain sentences on the within-class association of memo with the primary outcomes (loss, gradient
and dormancy changes: estimate and CI, for every combination of signs and significance) and on
whether the run lost plasticity (base - retrained at the last task with its CI; "not resolved"
when the CI spans 0), the primary condition in words, a compact table (primary outcomes x kind of
delta) and links to the full tables and the figures. Before the statistics exist, the answer says so.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

MARKER = ".. answer"
HEADLINE = "results/stats/headline.csv"
HELDOUT = "results/stats/heldout_answer.csv"  # the held-out sentence (memplast.heldout_analysis)


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


def scope_words(part: pd.DataFrame, orders: int, pct: str) -> str:
    """What the numbers generalise to (fixed pooling: these class orders; random effects: new class
    orders, shown from 5 orders on) and, where a BH-adjusted p sits at the resampling floor
    1/(B+1), that p as a bound."""
    text = f"fixed pooling over these {orders} class orders"
    rand = part[part["random_estimate"].notna()] if "random_estimate" in part else part.iloc[:0]
    if len(rand):
        items = [
            f"{outcome_words(r['outcome'])} ρ = {_num(r['random_estimate'])}, {pct} CI "
            f"[{_num(r['random_ci_low'])}, {_num(r['random_ci_high'])}]"
            for _, r in rand.iterrows()
        ]
        text += f"; for new class orders (random effects): {'; '.join(items)}"
    else:
        text += " (new class orders: random effects from 5 orders on)"
    floored = [r for _, r in part.iterrows() if _bound(r)]
    if floored:
        items = [f"{outcome_words(r['outcome'])} {_p(float(r['p_bh']), True)}" for r in floored]
        text += f"; BH p at the resampling floor, a bound: {', '.join(items)}"
    return text


PLASTICITY = "results/stats/plasticity_gap.csv"
ALGORITHMS_TABLE = "results/stats/algorithms.csv"
FIGURE_LINKS = (  # (report file name, link text) offered on the landing page when the figure exists
    ("plasticity_gap.pdf", "gap to retrained"),
    ("accuracy_curves.pdf", "accuracy"),
    ("dormant_and_rank.pdf", "dormancy and rank"),
    ("memo_vs_dloss.pdf", "memo vs loss"),
    ("memo_vs_dgrad.pdf", "memo vs gradient"),
    ("memo_vs_ddormant.pdf", "memo vs dormancy"),
    ("heldout_slices.pdf", "held-out slices"),
)
WORDS = {"d_loss": "loss change", "d_log_grad": "log-gradient-norm change", "grad_drop": "gradient drop"}
KIND_WORDS = {"immediate": "immediate deltas (first epoch after the boundary)", "windowed": "windowed deltas"}


def _num(x: float, digits: int = 3) -> str:
    """A number for prose: fixed decimals, a true minus sign."""
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}".replace("-", "\u2212")


def outcome_words(outcome: str) -> str:
    """``d_dormant_t0.01`` -> "dormant-fraction change (τ = 0.01)"; the primary outcomes in words."""
    if outcome.startswith("d_dormant_score_t"):
        return f"dormancy-score change (τ = {outcome.removeprefix('d_dormant_score_t')})"
    if outcome.startswith("d_dormant_t"):
        return f"dormant-fraction change (τ = {outcome.removeprefix('d_dormant_t')})"
    return WORDS.get(outcome, outcome)


def primary_outcomes(outcomes) -> list[str]:
    """The outcomes the landing page answers for: loss, gradient and dormancy changes (those present)."""
    outcomes = list(outcomes)
    out = [o for o in ("d_loss", "d_log_grad") if o in outcomes]
    dormant = sorted(o for o in outcomes if o.startswith("d_dormant_t"))
    return out + dormant[-1:]  # the largest tau: the threshold the figures use


FILTER_MODES = {
    "global": "of all samples",
    "per_class": "of their class",
    "balanced": "of their class, classes then subsampled to equal size",
}
ORDERINGS = {
    "random": "reshuffled every epoch",
    "fixed": "one fixed order every epoch",
    "ascending": "ordered by ascending memo",
    "descending": "ordered by descending memo",
    "stratified": "memo strata visited round-robin",
    "file": "in the order of a file",
}
ALGORITHMS = {
    "base": "plain SGD (base)",
    "retrained": "re-initialised every task (retrained)",
    "head_reset": "output head reset every task",
    "shrink_perturb": "shrink-and-perturb",
    "cbp": "continual backprop",
    "upgd": "UPGD",
    "upgd_cbp": "UPGD with continual backprop",
}


def condition_words(condition: dict) -> str:
    """A run condition in words: "all training samples, reshuffled every epoch, unweighted loss, plain SGD (base)"."""
    f = str(condition.get("filter", "none"))
    if f == "none":
        data = "all training samples"
    else:
        mode, _, q = f.partition("-q")
        random = mode.endswith("_random")
        mode = mode.removesuffix("_random")
        where = FILTER_MODES.get(mode, mode)
        data = (
            f"a random drop the size of the memo filter at quantile {q} {where}"
            if random
            else f"training samples below the {q} memo quantile {where}"
        )
    w = str(condition.get("weighting", "none"))
    weighting = "unweighted loss" if w == "none" else f"loss weighted by memo ({w.replace('alpha', 'α = ')})"
    order = ORDERINGS.get(str(condition.get("ordering", "random")), str(condition.get("ordering")))
    algorithm = ALGORITHMS.get(str(condition.get("algorithm", "base")), str(condition.get("algorithm")))
    return f"{data}, {order}, {weighting}, {algorithm}"


def _verdict(r, alpha: float) -> str:
    """+ / - (BH p < alpha), "nominal" (CI excludes 0, BH p >= alpha), 0 (not detected), na."""
    est, lo, hi, p = (float(r[k]) for k in ("estimate", "ci_low", "ci_high", "p_bh"))
    if not math.isfinite(est):
        return "na"
    if math.isfinite(p) and p < alpha:
        return "+" if est > 0 else "-"
    if (math.isfinite(lo) and lo > 0) or (math.isfinite(hi) and hi < 0):
        return "nominal"
    return "0"


def _rho(r, pct: str | None = None) -> str:
    ci = f"{pct} CI " if pct else ""
    return f"ρ = {_num(r['estimate'])}, {ci}[{_num(r['ci_low'])}, {_num(r['ci_high'])}]"


def _join(items: list[str], word: str = "and") -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {word} " + items[-1]


def memo_sentences(part: pd.DataFrame, kind: str, pct: str, alpha: float) -> list[str]:
    """Sentences on the within-class association of memo with each outcome of ``part`` (rows of
    one kind, one per outcome), for every combination of signs and significance."""
    rows = [(r["outcome"], r, _verdict(r, alpha)) for _, r in part.iterrows()]
    where = f"at task boundaries ({KIND_WORDS.get(kind, kind)}, pooled over class orders and boundaries)"
    sig = [
        f"a {'higher' if v == '+' else 'lower'} {outcome_words(o)} ({_rho(r, pct if i == 0 else None)})"
        for i, (o, r, v) in enumerate([x for x in rows if x[2] in "+-"])
    ]
    null = [(o, r) for o, r, v in rows if v == "0"]
    nominal = [(o, r) for o, r, v in rows if v == "nominal"]
    missing = [o for o, _, v in rows if v == "na"]
    out = []
    if sig:
        out.append(
            f"Within their class, more memorized samples had {_join(sig)} {where}; "
            f"Benjamini-Hochberg-adjusted p < {alpha:g}."
        )
    if null:
        items = [f"the {outcome_words(o)} ({_rho(r, None if sig or i else pct)})" for i, (o, r) in enumerate(null)]
        if sig:
            out.append(f"No within-class association was detected with {_join(items, 'or')}.")
        else:
            out.append(
                f"Within their class, memorization showed no detectable association with {_join(items, 'or')} {where}."
            )
    if nominal:
        items = [
            f"the {outcome_words(o)} ({_rho(r, None if sig or null or i else pct)})" for i, (o, r) in enumerate(nominal)
        ]
        one = len(items) == 1
        text = _join(items)
        out.append(
            f"{text[0].upper()}{text[1:]} {'has an association whose CI excludes' if one else 'have associations whose CIs exclude'} "
            f"0 but {'does' if one else 'do'} not survive the Benjamini-Hochberg correction (p ≥ {alpha:g})"
            f"{'' if sig or null else ' ' + where}."
        )
    if missing:
        out.append(f"No estimate exists for the {_join([outcome_words(o) for o in missing])} ({kind} deltas).")
    return out


def agreement_sentence(part: pd.DataFrame, main: str, other: str, alpha: float, pct: str | None = None) -> str:
    """One sentence comparing the verdicts of the ``other`` kind of delta with the ``main`` one's
    (``pct``: name the CI level at the first interval)."""
    a = {r["outcome"]: (_verdict(r, alpha), r) for _, r in part[part["kind"] == main].iterrows()}
    b = {r["outcome"]: (_verdict(r, alpha), r) for _, r in part[part["kind"] == other].iterrows()}
    differ = [o for o in a if o in b and a[o][0] != b[o][0]]
    name = KIND_WORDS.get(other, other).split(" (")[0].capitalize()
    if not differ:
        return f"{name} give the same verdicts."
    said = {
        "+": "higher with more memo",
        "-": "lower with more memo",
        "0": "no association detected",
        "nominal": "not significant after BH",
        "na": "no estimate",
    }
    items = [
        f"the {outcome_words(o)}: {said[b[o][0]]} ({_rho(b[o][1], None if i else pct)})" for i, o in enumerate(differ)
    ]
    return f"{name} differ: {'; '.join(items)}."


def plasticity_sentence(gaps: pd.DataFrame | None, ci_level: float, algorithm: str = "base") -> str:
    """Did this run lose plasticity? ``algorithm`` - retrained at the last task with its CI."""
    pct = f"{100 * ci_level:g}%"
    g = None if gaps is None else gaps[gaps["algorithm"] == algorithm]
    if g is None or g.empty:
        return (
            f"**Loss of plasticity: not measured** (it needs runs of ``{algorithm}`` and ``retrained``; "
            "add both to conditions.algorithms)."
        )
    r = g.loc[g["task"].idxmax()]
    mean, lo, hi = (100 * float(r[k]) for k in ("mean", "lo", "hi"))
    n = int(r["n"])
    at = f"at the last task (t = {int(r['task'])}), {algorithm} − {r['reference']} = {_num(mean, 2)} points"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return (
            f"**Loss of plasticity: not resolved**: {at} from {n} class order{'s' if n != 1 else ''}, "
            "too few for an interval (add class orders)."
        )
    ci = f"{pct} CI [{_num(lo, 2)}, {_num(hi, 2)}] over {n} class orders, {int(r['n_negative'])} below zero"
    if hi < 0:
        return f"**This run shows loss of plasticity**: {at} ({ci})."
    if lo > 0:
        return f"**This run shows no loss of plasticity**: {at}, above the reference ({ci})."
    return f"**Loss of plasticity: not resolved** (the CI spans 0): {at} ({ci})."


def compact_table(part: pd.DataFrame, kinds: list[str], pct: str, alpha: float) -> list[str]:
    """RST list-table: one row per primary outcome, one column per kind of delta (within-class ρ [CI])."""
    lines = [
        f".. list-table:: Within-class ρ of memo with the outcome ({pct} CI; \\* = BH p < {alpha:g})",
        "   :header-rows: 1",
        "",
        "   * - outcome",
        *[f"     - {k} Δ" for k in kinds],
    ]
    cells = part.set_index(["outcome", "kind"])
    for o in dict.fromkeys(part["outcome"]):
        lines.append(f"   * - {outcome_words(o)}")
        for k in kinds:
            if (o, k) not in cells.index:
                lines.append("     - n/a")
                continue
            r = cells.loc[(o, k)]
            star = "\\*" if _verdict(r, alpha) in "+-" else ""
            lines.append(f"     - {_num(r['estimate'])}{star} [{_num(r['ci_low'])}, {_num(r['ci_high'])}]")
    return lines


def answer_rst(
    headline: pd.DataFrame,
    ci_level: float,
    alpha: float = 0.05,
    gaps: pd.DataFrame | None = None,
    primary: dict | None = None,
    figures=(),
) -> str:
    """The landing page's answer: plain sentences (memo's within-class association with the primary
    outcomes; whether the run lost plasticity), the condition in words, a compact table of the
    primary outcomes and links to the full tables and the figures (report file names in ``figures``)."""
    pct = f"{100 * ci_level:g}%"
    h = headline.copy()
    h["boundary"] = h["boundary"].astype(str)
    h = h[(h["boundary"] == "all") & (h["pooling"] == "fixed") & (h["estimator"] == "partial")]
    order = {o: i for i, o in enumerate(primary_outcomes(h["outcome"].unique()))}  # loss, gradient, dormancy
    h = h[h["outcome"].isin(order)].sort_values("outcome", key=lambda c: c.map(order), kind="stable")
    kinds = [k for k in ("immediate", "windowed") if (h["kind"] == k).any()]
    main = "windowed" if "windowed" in kinds else kinds[0]
    sentences = memo_sentences(h[h["kind"] == main], main, pct, alpha)
    if len(kinds) > 1:
        named = any(f"{pct} CI" in x for x in sentences)
        sentences.append(
            agreement_sentence(h, main, next(k for k in kinds if k != main), alpha, None if named else pct)
        )
    orders = int(h["n_orders"].max()) if "n_orders" in h and len(h) else 0
    lines = [
        "**Answer.** " + " ".join(sentences),
        "",
        plasticity_sentence(gaps, ci_level),
        "",
        f"*Condition:* {condition_words(primary or {})}; "
        + (scope_words(h[h["kind"] == main], orders, pct) if len(h) else f"{orders} class orders")
        + ".",
        "",
        *compact_table(h, kinds, pct, alpha),
        "",
    ]
    links = [f"`{text} <{name}_>`_" for name, text in FIGURE_LINKS if name in figures]
    more = "Full tables: Answer_ (raw ρ, null bands, p) and `Statistical tables`_."
    lines += [more + (f" Figures: {', '.join(links)}." if links else ""), ""]
    return "\n".join(lines)


def landing_page(
    template: str | Path, workdir: str | Path = ".", ci_level: float = 0.95, primary: dict | None = None
) -> str:
    """Write the landing page (template with the answer filled in); return its absolute path."""
    text = Path(template).read_text()
    headline = Path(workdir) / HEADLINE
    if headline.exists():
        gaps = Path(workdir) / PLASTICITY
        figures = {p.name for p in (Path(workdir) / "results" / "figures").glob("*.pdf")}
        answer = answer_rst(
            pd.read_csv(headline),
            ci_level,
            gaps=pd.read_csv(gaps) if gaps.exists() else None,
            primary=primary,
            figures=figures,
        )
    else:
        answer = "**Answer.** *It appears here once the statistics (results/stats/headline.csv) exist.*\n"
    if MARKER not in text:
        raise ValueError(f"landing_page: {template} lacks the marker line {MARKER!r}")
    out = Path(workdir).resolve() / ".snakemake" / "memplast" / "workflow.rst"
    out.parent.mkdir(parents=True, exist_ok=True)
    new = text.replace(MARKER, answer)
    if not out.exists() or out.read_text() != new:
        out.write_text(new)
    return str(out)


# --------------------------------------------------------------------------- figure captions
CAPTIONS = ".snakemake/memplast/captions"


def _pending(path: str) -> str:
    return f"*(appears once {path} exists)*"


def _csv(workdir: Path, path: str) -> pd.DataFrame | None:
    p = workdir / path
    return pd.read_csv(p) if p.exists() and p.stat().st_size > 0 else None


def _branches(wildcard: str, texts: dict) -> str:
    """A Jinja if/elif over ``snakemake.wildcards.<wildcard>``: one caption text per value."""
    parts = [
        f"{{% {'if' if i == 0 else 'elif'} snakemake.wildcards.{wildcard} == {value!r} %}}{text}"
        for i, (value, text) in enumerate(texts.items())
    ]
    return "".join(parts) + "{% endif %}"


def _main_plasticity_gap(workdir: Path, ci_level: float, outcomes: dict) -> str:
    gaps = _csv(workdir, PLASTICITY)
    if gaps is None or gaps.empty:
        return _pending(PLASTICITY)
    from memplast import plasticity  # scipy: only once there is a table

    return plasticity.caption(gaps, ci_level, _csv(workdir, "results/stats/plasticity_trend.csv"))


def _main_condition_figure(workdir: Path, ci_level: float, outcomes: dict) -> str:
    gaps, sig = _csv(workdir, PLASTICITY), _csv(workdir, "results/stats/plasticity_signature.csv")
    pct = f"{100 * ci_level:g}%"
    acc = _pending(PLASTICITY)
    if gaps is not None and not gaps.empty:
        last = gaps[gaps["task"] == gaps["task"].max()]
        ref = last.iloc[0]
        accs = [f"{r['algorithm']} {100 * r['test_acc_algorithm']:.1f}%" for _, r in last.iterrows()]
        accs.append(f"{ref['reference']} {100 * ref['test_acc_reference']:.1f}%")
        acc = (
            f"Primary data condition, test accuracy at the last task (t = {int(ref['task'])}, mean over "
            f"{int(ref['n'])} class orders): {', '.join(accs)}."
        )
    rank = _pending("results/stats/plasticity_signature.csv")
    if sig is not None and not sig.empty:
        last = sig[(sig["task"] == sig["task"].max()) & (sig["algorithm"] == sig["algorithm"].iloc[0])]
        items = [
            f"{r['measure'].replace('_', ' ')} {_num(r['mean'], 3)} [{_num(r['lo'], 3)}, {_num(r['hi'], 3)}]"
            for _, r in last.iterrows()
        ]
        if len(last):
            r = last.iloc[0]
            rank = (
                f"{r['algorithm']} − {r['reference']} at the last task (t = {int(r['task'])}, {pct} CI over "
                f"{int(r['n'])} class orders): {'; '.join(items)}."
            )
    return _branches("name", {"accuracy_curves": acc, "dormant_and_rank": rank})


def _main_memo_vs_outcome(workdir: Path, ci_level: float, outcomes: dict) -> str:
    h = _csv(workdir, HEADLINE)
    if h is None:
        return _pending(HEADLINE)
    h = h[(h["boundary"].astype(str) == "all") & (h["pooling"] == "fixed") & (h["estimator"] == "partial")]
    texts = {}
    for name, outcome in outcomes.items():
        rows = h[h["outcome"] == outcome].set_index("kind")
        items = [f"{k} {_rho(rows.loc[k])}" for k in ("windowed", "immediate") if k in rows.index]
        texts[name] = (
            f"within-class association of memo with {outcome}, pooled over class orders and boundaries "
            f"({100 * ci_level:g}% CI): {'; '.join(items)}."
            if items
            else f"no pooled estimate for {outcome} in {HEADLINE}."
        )
    return _branches("name", texts)


def _main_memo_validation(workdir: Path, ci_level: float, outcomes: dict) -> str:
    auroc, agree = _csv(workdir, "results/memo/noise_auroc.csv"), _csv(workdir, "results/memo/agreement.csv")
    if auroc is not None and not auroc.empty:
        items = [f"{r['method']} {r['auroc']:.2f}" for _, r in auroc.iterrows()]
        return f"AUROC of each score for the {int(auroc['n_noisy'].iloc[0])} planted noisy labels: {', '.join(items)}."
    if agree is not None and not agree.empty:
        r = agree.iloc[0]
        return f"Spearman agreement of {r['method_a']} and {r['method_b']}: {r['spearman']:.2f} (n = {int(r['n'])})."
    return _pending("results/memo/noise_auroc.csv")


def _main_class_balance(workdir: Path, ci_level: float, outcomes: dict) -> str:
    items = []
    for p in sorted((workdir / "results" / "subsets").glob("*/class_balance.csv")):
        r = pd.read_csv(p).iloc[0]
        items.append(
            f"{r['filter']} keeps {100 * r['summary_n_kept'] / r['summary_n_before']:.1f}% of the training samples, "
            f"min/max class ratio {r['summary_min_max_ratio']:.2f}"
        )
    return "; ".join(items) + "." if items else _pending("results/subsets/*/class_balance.csv")


def _main_order_diagnostics(workdir: Path, ci_level: float, outcomes: dict) -> str:
    items = []
    for p in sorted((workdir / "results" / "orderings").glob("*/gap_summary.csv")):
        r = pd.read_csv(p).iloc[0]
        items.append(f"{r['ordering']} {_num(r['lag1_autocorr'], 3)} (mean gap {r['mean_gap']:.1f})")
    if not items:
        return _pending("results/orderings/*/gap_summary.csv")
    return f"lag-1 autocorrelation of memo along the order, and mean gap between top-10% samples: {'; '.join(items)}."


def _main_heldout_slices(workdir: Path, ci_level: float, outcomes: dict) -> str:
    answer = _csv(workdir, HELDOUT)
    return _pending(HELDOUT) if answer is None or answer.empty else str(answer["sentence"].iloc[0])


def _main_training_curves(workdir: Path, ci_level: float, outcomes: dict) -> str:
    flags = _csv(workdir, "results/stats/training_flags.csv")
    if flags is None:
        return _pending("results/stats/training_flags.csv")
    bad = flags[flags["status"] != "ok"]
    named = f": {', '.join(bad['run'])}" if 0 < len(bad) <= 5 else ""
    return f"{len(flags)} runs, {len(bad)} flagged (non-finite or diverging loss){named}."


def _main_algorithms(workdir: Path, ci_level: float, outcomes: dict) -> str:
    table = _csv(workdir, ALGORITHMS_TABLE)
    if table is None or table.empty:
        return _pending(ALGORITHMS_TABLE)
    last = table[table["task"] == table["task"].max()]
    items = [
        f"{r['algorithm']} − base {100 * r['gap_base']:+.1f} [{100 * r['gap_base_lo']:+.1f}, "
        f"{100 * r['gap_base_hi']:+.1f}] points ({'tuned' if r['tuned'] else 'not tuned'})"
        for _, r in last.iterrows()
        if r["algorithm"] not in ("base", "retrained")
    ]
    return (
        f"Test accuracy at the last task (t = {int(last['task'].iloc[0])}), paired difference to base with its "
        f"{100 * ci_level:g}% CI over class orders: " + ("; ".join(items) or "no mitigation in this run") + "."
    )


MAIN_NUMBER = {
    "plasticity_gap": _main_plasticity_gap,
    "condition_figure": _main_condition_figure,
    "memo_vs_outcome": _main_memo_vs_outcome,
    "memo_validation": _main_memo_validation,
    "class_balance": _main_class_balance,
    "order_diagnostics": _main_order_diagnostics,
    "training_curves": _main_training_curves,
    "heldout_slices": _main_heldout_slices,
    "algorithms": _main_algorithms,
}


def figure_caption(
    template: str | Path, workdir: str | Path = ".", ci_level: float = 0.95, outcomes: dict | None = None
) -> str:
    """The caption template of a report figure (report/<name>.rst) with the figure's main number
    appended (read from the results when they exist), written under .snakemake/memplast/captions;
    returns its absolute path (for ``report(caption=...)``). ``outcomes``: memo_vs_<name> -> outcome."""
    template = Path(template)
    number = MAIN_NUMBER[template.stem](Path(workdir), ci_level, outcomes or {})
    text = template.read_text().rstrip("\n") + f"\n\n**Main number:** {number}\n"
    out = Path(workdir).resolve() / CAPTIONS / template.name
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.read_text() != text:
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, out)
    return str(out)
