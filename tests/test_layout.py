"""Code a newcomer can read top to bottom: no function over 100 lines, no module over 600
(memplast, scripts, benchmarks, tests), and no training-stack import at DAG-build time is checked
in tests/test_dag.py."""

from __future__ import annotations

import ast

import pytest
from conftest import ROOT

MAX_FUNCTION, MAX_MODULE = 100, 600
SOURCES = sorted(p for d in ("memplast", "scripts", "benchmarks", "tests") for p in (ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_and_modules_stay_short(path):
    source = path.read_text()
    n_lines = len(source.splitlines())
    assert n_lines <= MAX_MODULE, f"{path.name}: {n_lines} lines; split it by concept"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= MAX_FUNCTION
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION} lines: {long}"
