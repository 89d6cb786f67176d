# Two commands for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# TensorFlow flavour: cpu (default, runs anywhere) or gpu (NVIDIA CUDA wheels): make run TF=gpu
TF ?= cpu
STAMP := $(VENV)/.installed-$(TF)
CORES ?= all

.PHONY: venv run test bench lint format clean slurm-install lock

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(TF),test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

## run: the whole pipeline on config/config.yaml (the embedded synthetic default)
run: venv
	$(BIN)/snakemake --cores $(CORES)

## test: the test suite (unit tests, workflow runs on tiny data, the real sample when ../shared is present)
# REQUIRE_SLURM=1 turns the SLURM test's "not installed" skip into a failure (CI sets it)
test: venv
	REQUIRE_SLURM=$(REQUIRE_SLURM) $(BIN)/pytest

## slurm-install: Debian's SLURM and munge, for tests/test_slurm.py (root; CI runs it; a plain `make test` never does)
slurm-install:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge

## bench: performance benchmarks, each printing its baseline beside ours (figures in docs/benchmarks.md)
bench: venv
	$(BIN)/python tests/benchmarks/bench_resize.py
	$(BIN)/python tests/benchmarks/bench_shards.py

## lint: snakemake --lint, snakefmt and ruff
lint: venv
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check workflow
	$(BIN)/ruff check zoobot_core tests workflow/scripts

format: venv
	$(BIN)/snakefmt workflow

clean:
	rm -rf results logs benchmarks .snakemake
