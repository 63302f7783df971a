"""scripts/render_dag.py (`make dag`): Mermaid graphs always, SVG when graphviz `dot` is (or can be) installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

from conftest import ROOT, ensure_debian_package

SCRIPT = ROOT / "scripts" / "render_dag.py"
# Rules the tiny configuration runs (CIFAR download and the Feldman-Zhang import are not in it).
TINY_RULES = {
    "all",
    "prepare",
    "class_order",
    "memo_scorer",
    "memo_curvature",
    "memo_scores",
    "subset",
    "train_task",
    "probe",
    "deltas",
    "run_summary",
    "stats_primary",
    "stats_conditions",
    "figure_memo_vs_outcome",
    "figure_conditions",
    "figure_class_balance",
    "order_diagnostics",
    "figure_order_diagnostics",
    "memo_validation",
    "training_curves",
    "heldout",
    "heldout_dependence",
    "heldout_analysis",
}
# Dependencies between rule families that the rule graph must show (upstream, downstream).
EDGES = [
    ("prepare", "memo_scorer"),
    ("memo_scorer", "memo_curvature"),
    ("memo_curvature", "memo_scores"),
    ("class_order", "train_task"),
    ("subset", "train_task"),
    ("train_task", "probe"),
    ("probe", "deltas"),
    ("memo_scores", "deltas"),
    ("deltas", "stats_primary"),
    ("stats_primary", "figure_memo_vs_outcome"),
    ("train_task", "heldout"),
    ("memo_scorer", "heldout_dependence"),
    ("heldout", "heldout_analysis"),
    ("heldout_dependence", "heldout_analysis"),
    ("heldout_dependence", "memo_validation"),
]
TINY_JOBS = 56  # `snakemake -n` of the tiny configuration: 56 jobs, `all` included


def render(outdir, *formats, env=None):
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--outdir", str(outdir), "--formats", *formats],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def mermaid_graph(text: str):
    """(node id -> label, set of (from label, to label)) of a Snakemake Mermaid flowchart."""
    nodes = dict(re.findall(r"^\s*(id\d+)\[(.*)\]\s*$", text, flags=re.M))
    edges = {(nodes[a], nodes[b]) for a, b in re.findall(r"^\s*(id\d+) --> (id\d+)\s*$", text, flags=re.M)}
    return nodes, edges


def test_mermaid_rulegraph_and_dag(tmp_path):
    out = render(tmp_path, "mermaid")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dag.mmd", "rulegraph.mmd"]

    rulegraph = (tmp_path / "rulegraph.mmd").read_text()
    assert "flowchart" in rulegraph
    nodes, edges = mermaid_graph(rulegraph)
    assert set(nodes.values()) == TINY_RULES
    missing = [e for e in EDGES if e not in edges]
    assert not missing, f"rule graph lacks the edges {missing}"

    dag_nodes, dag_edges = mermaid_graph((tmp_path / "dag.mmd").read_text())
    assert len(dag_nodes) == TINY_JOBS
    labels = [label.split(" - ")[0] for label in dag_nodes.values()]
    assert labels.count("train_task") == 2 * 2 * 3 and labels.count("probe") == 2 * 2 * 2
    assert len(dag_edges) > len(dag_nodes)  # every job but `all` feeds at least one other


def ensure_dot():
    """graphviz `dot` on PATH, installed with apt when missing (or skip with the reason)."""
    ensure_debian_package("dot", "graphviz")


def test_svg_rulegraph_and_dag(tmp_path):
    ensure_dot()
    out = render(tmp_path, "svg")
    assert out.returncode == 0, out.stderr
    for name in ("rulegraph", "dag"):
        svg = ET.parse(tmp_path / f"{name}.svg").getroot()
        assert svg.tag.endswith("svg")
        texts = {t.text for t in svg.iter() if t.tag.endswith("text") and t.text}
        assert {"train_task", "probe", "stats_primary"} <= texts, f"{name}.svg lacks rule labels"
    # one box per job in the DAG: a <g class="node"> each
    dag = ET.parse(tmp_path / "dag.svg").getroot()
    assert sum(1 for g in dag.iter() if g.tag.endswith("g") and g.get("class") == "node") == TINY_JOBS


def test_missing_dot_names_the_fix(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # an empty PATH: no `dot`
    out = render(tmp_path / "out", "svg", "mermaid", env=env)
    assert out.returncode != 0
    message = out.stderr.strip()
    assert message.count("\n") == 0 and "apt-get install graphviz" in message and "--formats mermaid" in message
    assert not (tmp_path / "out").exists()  # failed before writing anything


HEAVY = ("torch", "scipy", "statsmodels")


def workflow_imports() -> list[str]:
    """The import statements of the Snakefile and rules/*.smk (a parenthesized import joined into one line)."""
    statements = []
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        lines, current = path.read_text().splitlines(), ""
        for line in lines:
            if not current and not re.match(r"(from \S+ import |import )", line):
                continue
            current += " " + line.strip()
            if current.count("(") == current.count(")"):
                statements.append(current.strip())
                current = ""
    return statements


def test_building_the_dag_imports_no_heavy_module():
    """Snakemake imports what the Snakefile and the rules import for every dry run: none of torch,
    scipy or statsmodels (the training and statistics stacks are the jobs' business)."""
    imports = workflow_imports()
    assert any("memplast.grid" in s for s in imports) and any("memplast.report" in s for s in imports)
    code = "\n".join(["import sys", *imports, f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"])
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]", f"the Snakefile's imports load {out.stdout.strip()}"
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert not [m for m in imported if m.split(".")[0] in HEAVY]
