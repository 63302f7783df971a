# Two entry points for a fresh machine (README): `make demo` and `make test`.
# Each creates .venv and installs the pinned dependencies on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint dag dryrun-paper bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Whole pipeline on scikit-learn's bundled digits: memo scores, incremental runs, probes, stats, figures, report.
demo: $(STAMP)
	$(BIN)/snakemake --profile profiles/demo
	$(BIN)/snakemake --profile profiles/demo --report results/report.html

# Unit tests, end-to-end workflow tests (marked slow), lint and format checks.
test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .

# Rule graph and job DAG as SVG (needs graphviz `dot`) and Mermaid (needs nothing).
dag: $(STAMP)
	$(BIN)/python scripts/render_dag.py --outdir docs/dag

# Paper-scale dry run: job counts per rule and DAG build time.
dryrun-paper: $(STAMP)
	$(BIN)/python benchmarks/bench_dryrun.py

clean:
	rm -rf results/* logs .snakemake benchmarks/*/
