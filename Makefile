# Two entry points for a fresh machine; each installs what it needs into .venv first.
#   make run    the paper's workflow on config.yaml (snakemake --cores all)
#   make test   the whole test suite
# TORCH picks the PyTorch build: plain `torch` on a GPU machine; CI passes torch==2.13.0 (a CPU build).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch
CORES ?= all
CONFIG ?= config.yaml
BIN := $(VENV)/bin

.PHONY: run test smoke lint

run: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)

test: $(VENV)/.installed
	$(BIN)/pytest

# The offline smoke configuration, written under smoke/ so it never mixes with the paper's results.
smoke: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES) --snakefile $(CURDIR)/workflow/Snakefile \
		--configfile $(CURDIR)/workflow/configs/smoke.yaml --directory smoke

lint: $(VENV)/.installed
	$(BIN)/ruff check circuit_reuse scripts tests
	$(BIN)/snakemake --lint

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@
