# Two entry points for a fresh machine (README): `make demo` and `make test`.
# Each creates .venv and installs the pinned dependencies on first use.
# pyproject.toml requires Python 3.11: use python3.11 when present, else `make ... PYTHON=/path/to/python3.11`.
PYTHON ?= $(shell command -v python3.11 2>/dev/null)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Config files for `make status` / `make budget` (paper-scale defaults; the demo: CONFIG="config.yaml config/demo.yaml").
CONFIG ?= config.yaml

.PHONY: demo rehearsal test lint dag dryrun-paper bench budget calibrate gpu-check status check-python clean

check-python:
	@test -n "$(PYTHON)" || { echo "memplast needs Python 3.11 (pyproject.toml: requires-python >=3.11,<3.12) and found no python3.11 on PATH; install it or run make with PYTHON=/path/to/python3.11"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { echo "memplast needs Python 3.11 but PYTHON=$(PYTHON) is not Python 3.11 (or does not run); run make with PYTHON=/path/to/python3.11"; exit 1; }

# Installing .venv needs about DISK_GB free (torch's CUDA build): said before pip fills the disk.
DISK_GB ?= 8
$(STAMP): pyproject.toml | check-python
	@$(PYTHON) scripts/check_disk.py --need-gb $(DISK_GB)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Whole pipeline on scikit-learn's bundled digits: memo scores, incremental runs, probes, stats, figures, report.
demo: $(STAMP)
	$(BIN)/snakemake --profile profiles/demo
	$(BIN)/snakemake --profile profiles/demo --report results/report.html

# The paper path at paper shapes on CPU (README "Rehearsal at paper shapes"): a generated archive in
# CIFAR-100's format, 100 classes in 20 tasks, ResNet-18, five algorithms; <= 30 min on 2 idle cores.
rehearsal: $(STAMP)
	$(BIN)/snakemake --profile profiles/rehearsal
	$(BIN)/snakemake --profile profiles/rehearsal --report results/report.html

# Unit tests, end-to-end workflow tests (marked slow), lint and format checks.
test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Rule graph and job DAG as SVG (needs graphviz `dot`) and Mermaid (needs nothing).
dag: $(STAMP)
	$(BIN)/python scripts/render_dag.py --outdir docs/dag

# Paper-scale dry run: job counts per rule and DAG build time.
dryrun-paper: $(STAMP)
	$(BIN)/python benchmarks/bench_dryrun.py

# Jobs per rule, GPU-hours by rule and disk by output kind of the whole study and of the headline
# figure alone, from the config (paper-scale defaults unless CONFIG is given).
budget: $(STAMP)
	$(BIN)/python scripts/budget.py --configfile $(CONFIG)

# Per-image costs of the heavy jobs on this device at the config's shapes -> calibration/<device>.yaml
# (point resources.calibration at it; `make budget` and the runtime requests then use it).
# DEVICE=auto|cpu|cuda; on a shared CPU machine add ARGS="--clock cpu".
DEVICE ?= auto
calibrate: $(STAMP)
	$(BIN)/python scripts/calibrate.py --configfile $(CONFIG) --device $(DEVICE) $(ARGS)

# Before the first real submission on a GPU node: device, wheel architectures, bitwise determinism,
# resume of a CPU-saved state, calibration, throughput with 1-3 concurrent jobs (docs/gpu.md).
gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_check.py --configfile $(CONFIG) --device $(DEVICE) $(ARGS)

# Per-rule jobs done / remaining / total of the run in this directory (demo: CONFIG="config.yaml config/demo.yaml").
status: $(STAMP)
	$(BIN)/python scripts/status.py --configfile $(CONFIG)

clean:
	rm -rf results/* logs .snakemake benchmarks/*/
