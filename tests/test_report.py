"""The report's landing page: question and generated answer (plain sentences for every combination
of signs and significance, whether the run lost plasticity, the condition in words, a compact
table), valid reStructuredText with Snakemake's link targets."""

from __future__ import annotations

import itertools
import re

import jinja2
import pandas as pd
import pytest
from conftest import ROOT
from docutils.core import publish_parts

from memplast import report
from memplast import stats as S

OUTCOMES = ["d_loss", "d_log_grad", "d_dormant_t0.01"]
CATEGORIES = ("Answer", "Statistical tables", "Conditions", "Memorization vs plasticity")


def snakemake_links(files=()) -> str:
    """The link targets Snakemake appends to the landing page (snakemake/report/__init__.py):
    panels, one per category, one per report file."""
    targets = ["Workflow: javascript:show_panel('workflow')", "Statistics: javascript:show_panel('statistics')"]
    targets += [f"{c}: javascript:app.showCategory('{c}')" for c in CATEGORIES]
    targets += [f"{f}: javascript:app.showResultInfo('{f}')" for f in files]
    return "\n\n" + "\n".join(f".. _{t}" for t in targets) + "\n"


@pytest.fixture(scope="module")
def headline():
    deltas = S.synthetic_deltas(n_orders=2, n_classes=6, n_per_class=25, seed=2)
    outcomes = [*OUTCOMES, "align_cos"]
    cfg = dict(seed=0, n_boot=100, n_permutations=50, epochs_per_task=12, window=3, outcomes=outcomes)
    return S.tables.association_tables(deltas[deltas.is_old], cfg, outcomes, ["immediate", "windowed"])["headline"]


def gaps(mean=-0.024, lo=-0.035, hi=-0.013, n=20, task=4):
    rows = [
        {"task": t, "algorithm": "base", "reference": "retrained", "n": n, "n_negative": 17}
        | {"mean": mean / 2, "lo": lo, "hi": hi}
        for t in range(task)
    ]
    rows.append(
        {"task": task, "algorithm": "base", "reference": "retrained", "n": n, "n_negative": 17}
        | dict(mean=mean, lo=lo, hi=hi)
    )
    return pd.DataFrame(rows)


def render(path, config, files=()) -> str:
    class Snakemake:
        pass

    Snakemake.config = config
    text = jinja2.Environment().from_string(open(path).read() + snakemake_links(files)).render(snakemake=Snakemake)
    return publish_parts(text, writer="html")["html_body"]  # as Snakemake renders it (warnings shown)


def rst_ok(text: str) -> str:
    html = publish_parts(text + snakemake_links([f for f, _ in report.FIGURE_LINKS]), writer="html")["html_body"]
    assert "System Message" not in html and "system-message" not in html, html
    return html


def test_landing_page_answers_in_sentences_then_a_compact_table(headline, tmp_path, demo_config):
    (tmp_path / "results" / "stats").mkdir(parents=True)
    (tmp_path / "results" / "figures").mkdir(parents=True)
    headline.to_csv(tmp_path / report.HEADLINE, index=False)
    gaps().to_csv(tmp_path / report.PLASTICITY, index=False)
    files = ["plasticity_gap.pdf", "accuracy_curves.pdf", "memo_vs_dloss.pdf"]
    for f in files:
        (tmp_path / "results" / "figures" / f).write_text("%PDF")
    primary = demo_config["conditions"]["primary"]
    page = report.landing_page(ROOT / "report" / "workflow.rst", tmp_path, ci_level=0.95, primary=primary)
    html = render(page, demo_config, files)
    assert "System Message" not in html and "system-message" not in html
    text = re.sub(r"<[^>]+>", "", html)
    # order: question, the sentences, the loss-of-plasticity verdict, condition, compact table, setup
    i = [
        text.index(s)
        for s in ("Question.", "Answer. Within their class", "This run shows loss of plasticity", "Condition:")
    ]
    assert i == sorted(i) and i[-1] < html.index("<table") < html.index("Setup: digits")
    rows = re.findall(r"<tr>\s*<td>([^<]+)</td>", html)
    assert rows == ["loss change", "log-gradient-norm change", "dormant-fraction change (τ = 0.01)"]
    assert "−2.40 points" in text and "95% CI [−3.50, −1.30] over 20 class orders" in text
    assert "all training samples, reshuffled every epoch, unweighted loss, plain SGD (base)" in text
    assert "{'filter'" not in html and "{&#x27;filter" not in html  # no Python dict
    # the compact table: the primary outcomes only, one column per kind of delta
    table = html[html.index("<table") : html.index("</table>")]
    assert table.count("<tr") == 1 + 3 and "align_cos" not in table
    assert "immediate Δ" in table and "windowed Δ" in table
    part = headline[(headline.estimator == "partial") & headline.outcome.isin(OUTCOMES)]
    for _, r in part.iterrows():  # every primary estimate is in the table
        assert report._num(r["estimate"]) in table
    assert len(table) < 1500  # compact: 3 x 3 short cells (the old one held 12 x 8)
    # links open the figures and the full tables
    for f in files:
        assert f"app.showResultInfo(&#x27;{f}&#x27;)" in html or f"app.showResultInfo('{f}')" in html
    assert "memo_vs_dgrad.pdf" not in html  # absent figure: no dangling link
    assert "showCategory" in html and "Answer" in text


def verdict_row(outcome, kind, verdict, i):
    est = {"+": 0.2, "-": -0.15, "0": 0.01, "nominal": 0.06, "na": float("nan")}[verdict]
    lo, hi = {"+": (0.1, 0.3), "-": (-0.25, -0.05), "0": (-0.04, 0.06), "nominal": (0.01, 0.11)}.get(
        verdict, (float("nan"), float("nan"))
    )
    p = {"+": 0.001, "-": 0.002, "0": 0.6, "nominal": 0.09}.get(verdict, float("nan"))
    return dict(
        outcome=outcome,
        kind=kind,
        estimator="partial",
        pooling="fixed",
        boundary="all",
        estimate=est + i * 1e-3,
        ci_low=lo,
        ci_high=hi,
        p_bh=p,
        n_orders=3,
    )


VERDICTS = ["+", "-", "0", "nominal", "na"]


@pytest.mark.parametrize("combo", list(itertools.product(VERDICTS, repeat=3)), ids="".join)
def test_answer_reads_well_for_every_combination_of_signs_and_significance(combo):
    rows = [verdict_row(o, "windowed", v, i) for i, (o, v) in enumerate(zip(OUTCOMES, combo))]
    rows += [verdict_row(o, "immediate", "0", i) for i, o in enumerate(OUTCOMES)]
    text = report.answer_rst(pd.DataFrame(rows), 0.95, gaps=gaps(), primary={})
    assert text.startswith("**Answer.** ")
    para = text.split("\n\n")[0].removeprefix("**Answer.** ")
    sentences = re.split(r"(?<=\.) (?=[A-Z])", para)
    assert all(s[0].isupper() and s.endswith(".") for s in sentences), sentences
    assert "nan" not in para.lower() and "  " not in para and ", ," not in para and ".." not in para
    assert para.count("95% CI") == 1  # the level once, not in every parenthesis
    for o, v in zip(OUTCOMES, combo):
        words = report.outcome_words(o)
        assert para.count(words) == 1 + (v != "0"), (o, para)  # once in the windowed verdicts (+ the immediate ones)
        clause = para[para.index(words) - 12 : para.index(words) + len(words)]
        if v == "+":
            assert "a higher " + words in clause
        elif v == "-":
            assert "a lower " + words in clause
        elif v == "na":
            assert "No estimate exists" in para
        r = verdict_row(o, "windowed", v, OUTCOMES.index(o))
        if v != "na":
            assert f"ρ = {report._num(r['estimate'])}" in para  # estimate and CI next to each verdict
            assert f"[{report._num(r['ci_low'])}, {report._num(r['ci_high'])}]" in para
    if not {"+", "-"} & set(combo):
        assert "more memorized samples had" not in para
        if "0" in combo:
            assert "showed no detectable association" in para
    if "nominal" in combo:
        assert "not survive the Benjamini-Hochberg correction" in para
    if set(combo) == {"0"}:
        assert "Immediate deltas give the same verdicts." in para
    else:
        assert "Immediate deltas differ:" in para or set(combo) <= {"0"}
    rst_ok(text)


@pytest.mark.parametrize(
    "mean, lo, hi, n, expect",
    [
        (
            -0.024,
            -0.035,
            -0.013,
            20,
            "**This run shows loss of plasticity**: at the last task (t = 4), base − retrained = −2.40 points (95% CI [−3.50, −1.30] over 20 class orders, 17 below zero).",
        ),
        (
            0.012,
            0.003,
            0.021,
            5,
            "**This run shows no loss of plasticity**: at the last task (t = 4), base − retrained = 1.20 points, above the reference",
        ),
        (
            -0.004,
            -0.019,
            0.011,
            2,
            "**Loss of plasticity: not resolved** (the CI spans 0): at the last task (t = 4), base − retrained = −0.40 points (95% CI [−1.90, 1.10]",
        ),
        (
            -0.004,
            float("nan"),
            float("nan"),
            1,
            "**Loss of plasticity: not resolved**: at the last task (t = 4), base − retrained = −0.40 points from 1 class order, too few",
        ),
    ],
)
def test_plasticity_sentence_says_whether_the_run_lost_plasticity(mean, lo, hi, n, expect):
    text = report.plasticity_sentence(gaps(mean, lo, hi, n), 0.95)
    assert text.startswith(expect), text
    rst_ok(text)


def test_plasticity_sentence_without_the_reference_runs():
    assert "not measured" in report.plasticity_sentence(None, 0.95)
    other = gaps().assign(algorithm="cbp")
    assert "not measured" in report.plasticity_sentence(other, 0.95)


@pytest.mark.parametrize(
    "condition, expect",
    [
        (
            {"filter": "none", "ordering": "random", "weighting": "none", "algorithm": "base"},
            "all training samples, reshuffled every epoch, unweighted loss, plain SGD (base)",
        ),
        (
            {"filter": "per_class-q0.9", "ordering": "ascending", "weighting": "alpha0.5", "algorithm": "cbp"},
            "training samples below the 0.9 memo quantile of their class, ordered by ascending memo, "
            "loss weighted by memo (α = 0.5), continual backprop",
        ),
        (
            {"filter": "global_random-q0.8", "ordering": "fixed", "weighting": "none", "algorithm": "retrained"},
            "a random drop the size of the memo filter at quantile 0.8 of all samples, one fixed order every epoch, "
            "unweighted loss, re-initialised every task (retrained)",
        ),
    ],
)
def test_condition_in_words(condition, expect):
    assert report.condition_words(condition) == expect


def test_primary_outcomes_are_loss_gradient_and_dormancy():
    assert report.primary_outcomes(["align_cos", "d_dormant_t0", "d_dormant_t0.01", "d_log_grad", "d_loss"]) == [
        "d_loss",
        "d_log_grad",
        "d_dormant_t0.01",
    ]


def test_landing_page_before_the_statistics_exist(tmp_path):
    page = report.landing_page(ROOT / "report" / "workflow.rst", tmp_path)
    assert "**Answer.** *It appears here once the statistics" in open(page).read()
    with pytest.raises(ValueError, match="marker"):
        (tmp_path / "t.rst").write_text("no marker")
        report.landing_page(tmp_path / "t.rst", tmp_path)


def test_floored_p_values_print_as_bounds_and_the_answer_says_what_it_generalises_to(headline):
    row = headline[(headline.estimator == "partial") & (headline.kind == "windowed")].assign(
        p=1 / 101,
        p_bh=1 / 101,
        p_at_floor=True,
        n_orders=6,
        random_estimate=0.2,
        random_ci_low=0.1,
        random_ci_high=0.3,
    )
    text = report.answer_rst(row, 0.95)
    assert "BH p at the resampling floor, a bound:" in text and "< 1/101 (0.0099)" in text
    assert "fixed pooling over these 6 class orders" in text
    assert "for new class orders (random effects):" in text and "ρ = 0.200, 95% CI [0.100, 0.300]" in text
    adjusted = report.answer_rst(row.assign(p_bh=0.03), 0.95)
    assert "< 0.03" in adjusted and "< 1/" not in adjusted  # BH-adjusted from a bound: still a bound
    exact = report.answer_rst(row.assign(p_at_floor=False, p_bh=0.0123, random_estimate=float("nan")), 0.95)
    assert "resampling floor" not in exact and "< 0.012" not in exact
    assert "random effects from 5 orders on" in exact and "for new class orders (random" not in exact


def test_no_report_category_clashes_with_snakemakes_own_link_targets():
    """Snakemake appends '.. _Workflow:' and '.. _Statistics:' plus one target per category to the
    landing page; a category named like those is a duplicate target ("System Message")."""
    categories = {
        m.lower() for f in (ROOT / "rules").glob("*.smk") for m in re.findall(r'category="([^"]+)"', f.read_text())
    }
    assert categories and not categories & {"workflow", "statistics"}
    rules = (ROOT / "rules" / "stats.smk").read_text()
    assert '"Answer"' in rules and '"Statistical tables"' in rules  # the landing page links to both


def render_caption(path, config, name=None) -> str:
    class Snakemake:
        pass

    Snakemake.config, Snakemake.wildcards = config, type("W", (), {"name": name})
    text = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(open(path).read())
    html = publish_parts(text.render(snakemake=Snakemake) + snakemake_links(), writer="html")["body"]
    assert "System Message" not in html and "system-message" not in html, html
    return re.sub(r"<[^>]+>", "", html)


def test_every_report_figure_caption_states_its_main_number(headline, tmp_path, demo_config):
    w = tmp_path
    for d in ("results/stats", "results/memo", "results/subsets/per_class-q0.9", "results/orderings/ascending"):
        (w / d).mkdir(parents=True)
    headline.to_csv(w / report.HEADLINE, index=False)
    g = gaps().assign(test_acc_algorithm=0.851, test_acc_reference=0.875)
    g.to_csv(w / report.PLASTICITY, index=False)
    sig = g.assign(measure="effective_rank", mean=-3.25, lo=-4.5, hi=-2.0)
    sig.to_csv(w / "results/stats/plasticity_signature.csv", index=False)
    pd.DataFrame({"method": ["exact_ggn", "csl"], "auroc": [0.934, 0.998], "n": 900, "n_noisy": 90}).to_csv(
        w / "results/memo/noise_auroc.csv", index=False
    )
    pd.DataFrame(
        {"filter": ["per_class-q0.9"], "summary_n_before": [1000], "summary_n_kept": [900]}
        | {"summary_min_max_ratio": [0.935]}
    ).to_csv(w / "results/subsets/per_class-q0.9/class_balance.csv", index=False)
    pd.DataFrame({"ordering": ["ascending"], "lag1_autocorr": [0.997], "mean_gap": [1.0]}).to_csv(
        w / "results/orderings/ascending/gap_summary.csv", index=False
    )
    pd.DataFrame({"run": ["a", "b", "c"], "status": ["ok", "diverging", "ok"]}).to_csv(
        w / "results/stats/training_flags.csv", index=False
    )
    outcomes = {"dgrad": "d_log_grad", "dloss": "d_loss"}
    cap = lambda name, **kw: report.figure_caption(ROOT / "report" / f"{name}.rst", w, 0.95, **kw)  # noqa: E731
    text = render_caption(cap("plasticity_gap"), demo_config)
    assert "Main number: base - retrained at the last task (t=4): -2.40 points, 95% CI [-3.50, -1.30]" in text
    assert "85.1%" in render_caption(cap("condition_figure"), demo_config, "accuracy_curves")
    assert "retrained 87.5%" in render_caption(cap("condition_figure"), demo_config, "accuracy_curves")
    assert "effective rank −3.250 [−4.500, −2.000]" in render_caption(
        cap("condition_figure"), demo_config, "dormant_and_rank"
    )
    part = headline[(headline.estimator == "partial") & (headline.kind == "windowed")].set_index("outcome")
    for name, outcome in outcomes.items():
        text = render_caption(cap("memo_vs_outcome", outcomes=outcomes), demo_config, name)
        assert f"with {outcome}," in text and f"windowed ρ = {report._num(part.loc[outcome, 'estimate'])}" in text
    assert "exact_ggn 0.93, csl 1.00" in render_caption(cap("memo_validation"), demo_config)
    assert "keeps 90.0% of the training samples, min/max class ratio 0.94" in render_caption(
        cap("class_balance"), demo_config
    )
    assert "ascending 0.997" in render_caption(cap("order_diagnostics"), demo_config)
    assert "3 runs, 1 flagged (non-finite or diverging loss): b." in render_caption(cap("training_curves"), demo_config)
    # before the results exist, the caption says where the number will come from
    empty = tmp_path / "empty"
    text = render_caption(report.figure_caption(ROOT / "report" / "plasticity_gap.rst", empty), demo_config)
    assert "Main number: (appears once results/stats/plasticity_gap.csv exists)" in text


def test_every_report_figure_uses_a_caption_with_its_main_number():
    rules = "\n".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    figures = re.findall(r'report\(\s*"results/figures/[^"]+\.pdf",\s*caption=([^\n]+)', rules)
    assert len(figures) == 9 and all(c.startswith("report_caption(") for c in figures), figures
    names = {m for c in figures for m in re.findall(r'report_caption\("(\w+)"', c)}
    assert names == set(report.MAIN_NUMBER)


def test_held_out_sentence_is_the_caption_of_the_held_out_figure(headline, tmp_path, demo_config):
    from memplast.heldout_analysis import answer_sentence

    (tmp_path / "results" / "stats").mkdir(parents=True)
    headline.to_csv(tmp_path / report.HEADLINE, index=False)
    gaps().to_csv(tmp_path / report.PLASTICITY, index=False)
    keys = {"filter": "none", "ordering": "random", "weighting": "none"}
    comp = pd.DataFrame(
        [
            {**keys, "algorithm": "base", "contrast": "level", "estimate": -0.2, "ci_low": -0.3, "ci_high": -0.1, "n_orders": 3},
            {**keys, "algorithm": "retrained", "contrast": "vs_primary", "estimate": 0.15, "ci_low": 0.05, "ci_high": 0.25, "n_orders": 3},
        ]
    ).assign(measure="acc_gap", task=-1)  # fmt: skip
    sentence = answer_sentence(comp, 0.95, "proxy", 30, 400)
    assert "base −20.0 [−30.0, −10.0] points".replace("−", "-") in sentence
    assert (
        "retrained − base: +15.0 [+5.0, +25.0] points, so base loses the memo-dependent samples faster than retrained"
        in sentence
    )
    pd.DataFrame([{"definition": "proxy", "n_dependent": 30, "n_test": 400, "sentence": sentence}]).to_csv(
        tmp_path / report.HELDOUT, index=False
    )
    page = report.landing_page(ROOT / "report" / "workflow.rst", tmp_path, ci_level=0.95, primary={})
    text = re.sub(r"<[^>]+>", "", render(page, demo_config, []))
    # the landing page fits one window (tests/browser.py): the held-out sentence is the caption's main
    # number of the held-out figure, which the landing page links to
    assert "This run shows loss of plasticity" in text and "Held-out samples (proxy definition" not in text
    cap = render_caption(report.figure_caption(ROOT / "report" / "heldout_slices.rst", tmp_path, 0.95), demo_config)
    assert "Main number: Held-out samples (proxy definition" in cap and "faster than retrained" in cap


def test_algorithms_caption_quotes_each_mitigations_last_task_difference_to_base(tmp_path):
    rows = pd.DataFrame(
        {
            "algorithm": ["base", "cbp", "cbp", "retrained"],
            "task": [4, 3, 4, 4],
            "gap_base": [0.0, 0.01, 0.021, 0.03],
            "gap_base_lo": [0.0, 0.0, 0.011, 0.02],
            "gap_base_hi": [0.0, 0.02, 0.031, 0.04],
            "tuned": [False, True, True, False],
        }
    )
    assert "appears once" in report.MAIN_NUMBER["algorithms"](tmp_path, 0.95, {})
    (tmp_path / "results" / "stats").mkdir(parents=True)
    rows.to_csv(tmp_path / report.ALGORITHMS_TABLE, index=False)
    text = report.MAIN_NUMBER["algorithms"](tmp_path, 0.95, {})
    assert "(t = 4)" in text and "95% CI" in text
    assert "cbp − base +2.1 [+1.1, +3.1] points (tuned)" in text and "retrained −" not in text


def test_every_caption_template_renders_without_a_docutils_message(demo_config):
    """report/*.rst as Snakemake renders them (Jinja, then docutils; ``render_caption`` asserts there
    is no system message, e.g. from ``|x|``, a substitution reference in reStructuredText)."""
    for path in sorted((ROOT / "report").glob("*.rst")):
        assert render_caption(path, demo_config, "accuracy_curves").strip(), path.name
