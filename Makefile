# Two commands on a fresh machine with Python 3.11+:  make demo   and   make test
# The first Python 3.11+ on PATH, found once (":=") and silently (a pyenv shim without that
# version prints to stderr); PYTHON=... on the command line chooses another
ifeq ($(origin PYTHON), undefined)
PYTHON := $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	>/dev/null 2>&1 && { echo $$p; break; }; done)
endif
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Demo size: small enough for a laptop in about a minute; scale up with e.g.
#   make clean demo DEMO_ACCOUNTS=1000000 DEMO_SNAPSHOTS=500000
# (synth refuses to mix other settings into an existing data/demo: clean it first)
DEMO_DAYS ?= 3
DEMO_INSTRUMENTS ?= 4
DEMO_ACCOUNTS ?= 50000
DEMO_SNAPSHOTS ?= 50000

LINT_STAMP := $(VENV)/.installed-lint

.PHONY: demo test test-gpu test-cluster lint bench clean env

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11+ not found"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/gpu-risk synth --out data/demo --days $(DEMO_DAYS) --instruments $(DEMO_INSTRUMENTS) \
		--accounts $(DEMO_ACCOUNTS) --snapshots-per-day $(DEMO_SNAPSHOTS)
	$(BIN)/gpu-risk run workflows/overnight.yaml || test $$? -eq 3   # 3: a limit breached (see the report)
	@echo "Report: $(CURDIR)/results/overnight.html"

$(LINT_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $(LINT_STAMP)

# ruff (style, imports, likely bugs) on everything; mypy on the package and its kernels
lint: $(LINT_STAMP)
	$(BIN)/ruff check gpu_risk kernels tests benchmarks workflows
	$(BIN)/mypy

# two test processes: the suite is mostly single-threaded work (kernels, subprocesses), and
# CI has two cores (5:45 against 9:30 one after the other)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slurm"

# a study on two workers started by a one-node SLURM on this machine (tests/slurm_node.py:
# root, and Debian's slurm-wlm and munge; it skips with the reason where it cannot start)
test-cluster: $(STAMP)
	$(BIN)/python -m pytest -q -m slurm -rs

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m cupy

clean:
	rm -rf data/demo results .pytest_cache .hypothesis
