"""The report's landing page: question and generated answer, valid reStructuredText."""

from __future__ import annotations

import jinja2
import pytest
from conftest import ROOT
from docutils.core import publish_parts

from memplast import report
from memplast import stats as S

# the link targets Snakemake appends to the landing page (snakemake/report/__init__.py)
SNAKEMAKE_LINKS = (
    "\n\n.. _Workflow: javascript:show_panel('workflow')\n.. _Statistics: javascript:show_panel('statistics')\n"
)


@pytest.fixture(scope="module")
def headline():
    deltas = S.synthetic_deltas(n_orders=2, n_classes=6, n_per_class=25, seed=2)
    cfg = dict(seed=0, n_boot=100, n_permutations=50, epochs_per_task=12, window=3, outcomes=["d_loss", "align_cos"])
    return S.tables.association_tables(deltas[deltas.is_old], cfg, ["d_loss", "align_cos"], ["immediate", "windowed"])[
        "headline"
    ]


def render(path, config) -> str:
    class Snakemake:
        pass

    Snakemake.config = config
    text = jinja2.Environment().from_string(open(path).read() + SNAKEMAKE_LINKS).render(snakemake=Snakemake)
    html = publish_parts(text, writer="html")["html_body"]  # as Snakemake renders it (warnings shown)
    return html


def test_landing_page_states_question_and_answer_without_rst_errors(headline, tmp_path):
    (tmp_path / "results" / "stats").mkdir(parents=True)
    headline.to_csv(tmp_path / report.HEADLINE, index=False)
    page = report.landing_page(ROOT / "report" / "workflow.rst", tmp_path, ci_level=0.95)
    from memplast import config as mpconfig

    cfg = mpconfig.load(str(ROOT / "config.yaml"), str(ROOT / "config" / "demo.yaml"))
    html = render(page, cfg)
    assert "System Message" not in html and "system-message" not in html
    assert "Answer: within-class association of memo" in html and "<table" in html
    assert html.index("Question.") < html.index("Answer: within-class") < html.index("Setup: dataset")
    part = headline[headline.estimator == "partial"]
    for _, r in part.iterrows():
        assert f"{r['estimate']:.3f}" in html  # every headline estimate is in the table
    for outcome in part["outcome"].unique():
        assert html.count(f"<strong>{outcome}</strong>") == 1  # one sentence per outcome
    d_loss = part[(part.outcome == "d_loss") & (part.kind == "windowed")].iloc[0]
    assert d_loss["p_bh"] < 0.05 and "memorized more than others of their class have higher d_loss" in html


def test_landing_page_before_the_statistics_exist(tmp_path):
    page = report.landing_page(ROOT / "report" / "workflow.rst", tmp_path)
    assert "The answer appears here once the statistics" in open(page).read()
    with pytest.raises(ValueError, match="marker"):
        (tmp_path / "t.rst").write_text("no marker")
        report.landing_page(tmp_path / "t.rst", tmp_path)


def test_answer_sentence_says_when_nothing_is_detected(headline):
    flat = headline.assign(estimate=0.01, ci_low=-0.05, ci_high=0.07, p_bh=0.6)
    text = report.answer_rst(flat, 0.9)
    assert "no within-class association of memo with d_loss is detected" in text and "90% CI" in text


def test_floored_p_values_print_as_bounds_and_rows_say_what_they_generalise_to(headline):
    row = (
        headline[(headline.estimator == "partial")]
        .iloc[[0]]
        .assign(
            p=1 / 101,
            p_bh=1 / 101,
            p_at_floor=True,
            n_orders=6,
            random_estimate=0.2,
            random_ci_low=0.1,
            random_ci_high=0.3,
        )
    )
    text = report.answer_rst(row, 0.95)
    assert "BH p < 1/101 (0.0099)" in text and "< 1/101 (0.0099)" in text.split("* - ")[-1]
    assert "these 6 class orders, fixed pooling" in text
    assert "for new class orders (random effects over the 6): ρ = 0.200, 95% CI [0.100, 0.300]" in text
    adjusted = report.answer_rst(row.assign(p_bh=0.03), 0.95)
    assert "BH p < 0.03" in adjusted  # BH-adjusted from a bound: still a bound
    exact = report.answer_rst(row.assign(p_at_floor=False, p_bh=0.0123, random_estimate=float("nan")), 0.95)
    assert "BH p = 0.012" in exact and "<" not in exact.split("BH p")[1][:3]
    assert "n/a (needs ≥ 5 class orders)" in exact and "for new class orders (random" not in exact


def test_no_report_category_clashes_with_snakemakes_own_link_targets():
    """Snakemake appends '.. _Workflow:' and '.. _Statistics:' plus one target per category to the
    landing page; a category named like those is a duplicate target ("System Message")."""
    import re

    categories = {
        m.lower() for f in (ROOT / "rules").glob("*.smk") for m in re.findall(r'category="([^"]+)"', f.read_text())
    }
    assert categories and not categories & {"workflow", "statistics"}
