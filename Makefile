# Two entry points for a fresh machine; each installs what it needs into .venv first.
#   make run    the paper's workflow on config.yaml (snakemake --cores all)
#   make test   the whole test suite
# and one for the cluster set-up:
#   make test-slurm   the smoke config on a real one-node SLURM on localhost (root, Debian 12)
#   make scale        the scaled-up config in five dataset-seed replicates
#   make benchmark-workflow   the paper's run on random stand-ins of its models' shapes, timed from nothing
# TORCH picks the PyTorch build: plain `torch` on a GPU machine; CI passes torch==2.13.0 (a CPU build).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch
CORES ?= all
CONFIG ?= config.yaml
BIN := $(VENV)/bin

.PHONY: run test test-slurm smoke scale examples lint benchmark-workflow

run: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)

test: $(VENV)/.installed
	$(BIN)/pytest

# Installs slurm-wlm, slurmdbd, munge and MariaDB on first use, starts a cluster in a temporary directory,
# runs the smoke config locally and through workflow/profiles/slurm, compares, and shuts the cluster down.
test-slurm: $(VENV)/.installed
	SLURM_TEST_PYTHON=$(abspath $(BIN))/python tests/slurm/run_slurm_test.sh

# The offline smoke configuration, written under smoke/ so it never mixes with the paper's results.
smoke: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES) --snakefile $(CURDIR)/workflow/Snakefile \
		--configfile $(CURDIR)/workflow/configs/smoke.yaml --directory smoke

# The paper scaled up (GPT-2 small to XL, 3000 prompts) in five dataset-seed replicates under runs/scale/,
# and runs/scale/seed_variation.csv. On a cluster: make scale SNAKEMAKE_ARGS="--profile workflow/profiles/slurm"
SNAKEMAKE_ARGS ?= --cores $(CORES)
scale: $(VENV)/.installed
	$(BIN)/python scripts/run_replicates.py --configfile workflow/configs/scale.yaml --out runs/scale -- $(SNAKEMAKE_ARGS)

# The README's figures (figures/{config name}/) and notebooks/example_data/ regenerated from a fresh run of
# EXAMPLES_CONFIG, under runs/examples/.
EXAMPLES_CONFIG ?= workflow/configs/smoke.yaml
examples: $(VENV)/.installed
	$(BIN)/python scripts/refresh_examples.py --configfile $(EXAMPLES_CONFIG) -- --cores $(CORES)

# workflow/configs/paper_shapes.yaml from nothing under runs/benchmark/paper_shapes/ (emptied first), with
# every task cut to N prompts when N is given: the wall time, each rule's start-up and compute, the critical path.
N ?=
benchmark-workflow: $(VENV)/.installed
	$(BIN)/python scripts/benchmark_workflow.py --fresh --cores $(CORES) $(if $(N),--n-prompts $(N))

lint: $(VENV)/.installed
	$(BIN)/ruff check circuit_reuse scripts tests
	$(BIN)/snakemake --lint

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@
