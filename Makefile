# Two commands for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# TensorFlow flavour: cpu (default, runs anywhere) or gpu (NVIDIA CUDA wheels): make run TF=gpu
TF ?= cpu
STAMP := $(VENV)/.installed-$(TF)
CORES ?= all

.PHONY: venv run test test-random test-reversed bench bench-chain bench-rerun bench-probe bench-survey bench-finetune-scale bench-uncertainty bench-gpu bench-encoders timm-env test-timm scale finetune-bases active-learning recalibration-study cross-cpu lint format clean system-deps lock

# LOCKED=1: the exact versions of requirements.lock (make lock), then the project without resolving again
LOCKED ?=
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	if [ "$(LOCKED)" = 1 ]; then \
		$(BIN)/pip install --quiet -r requirements.lock && $(BIN)/pip install --quiet --no-deps -e .; \
	else \
		$(BIN)/pip install --quiet -e '.[$(TF),test]'; \
	fi
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

## run: the whole pipeline on config/config.yaml (the embedded synthetic default)
run: venv
	$(BIN)/snakemake --cores $(CORES)

## test: the test suite (unit tests, workflow runs on tiny data, the real sample when ../shared is present)
# REQUIRE_SERVICES=1 turns the SLURM and browser tests' "not installed" skips into failures (CI sets it)
test: venv
	REQUIRE_SERVICES=$(REQUIRE_SERVICES) $(BIN)/pytest

## test-random / test-reversed: the suite in a random order (pytest-randomly; SEED=<n> repeats one, its seed is printed at the top) or back to front (pytest-reverse): tests may not depend on what ran before them
SEED ?= $(shell date +%s)
test-random: venv
	REQUIRE_SERVICES=$(REQUIRE_SERVICES) $(BIN)/pytest -p randomly --randomly-seed=$(SEED)

test-reversed: venv
	REQUIRE_SERVICES=$(REQUIRE_SERVICES) $(BIN)/pytest --reverse

## lock: pin every package of .venv into requirements.lock (install from it: make venv LOCKED=1)
lock: venv
	{ echo "# Exact environment of a working .venv (make lock): Python $$($(BIN)/python -c 'import platform; print(platform.python_version())'), $$(uname -sm), TF=$(TF)."; \
	  echo "# Install: make venv LOCKED=1 (or: pip install -r requirements.lock && pip install --no-deps -e .)"; \
	  $(BIN)/pip freeze --exclude-editable | LC_ALL=C sort -f; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock

## system-deps: Debian's SLURM + munge (tests/test_slurm.py) and chromium (tests/test_report.py); root; CI runs it, `make test` never does
system-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge chromium

## bench: performance benchmarks, each printing its baseline beside ours (figures in docs/benchmarks.md)
bench: venv
	$(BIN)/python tests/benchmarks/bench_resize.py
	$(BIN)/python tests/benchmarks/bench_shards.py
	$(BIN)/python tests/benchmarks/bench_predict.py
	$(BIN)/python tests/benchmarks/bench_cluster.py
	cd tests/benchmarks && ../../$(BIN)/python bench_finetune_scores.py
	$(BIN)/python tests/benchmarks/bench_acquisition.py
	$(BIN)/python tests/benchmarks/bench_chain.py --n 3000

## bench-chain: images to shards, the whole `snakemake shards` command (validation, the chunk jobs, combine and gather) against Zoobot's one-process loop, at 3,000 and 30,000 real cutouts (about 25 min on 2 cores; docs/benchmarks.md)
bench-chain: venv
	$(BIN)/python tests/benchmarks/bench_chain.py --n 3000 --n 30000 --cpu-split --out results/bench_chain.json

## bench-rerun: adding 10 galaxies to a 3,000- and a 30,000-galaxy finetuning catalog, then changing its labels, and the same on the main catalog (votes corrected instead): each rerun's whole command (validate, shard chunks, gather) beside the first run's; AGAINST=<a checkout before issue 25> also runs the old design side by side (about 40 min on 2 cores with AGAINST; docs/benchmarks.md)
bench-rerun: venv
	$(BIN)/python tests/benchmarks/bench_rerun.py --n 3000 --n 30000 $(if $(AGAINST),--against $(AGAINST)) --out results/bench_rerun.json
	$(BIN)/python tests/benchmarks/bench_rerun.py --chain main --size 64 --n 3000 --n 30000 $(if $(AGAINST),--against $(AGAINST)) --out results/bench_rerun_main.json

## bench-probe: the linear probe's regularisation search, the whole grid beside the walk that stops past the best, on features of 2,000 and 12,000 distinct galaxies from a pipeline-trained base (about 20 min on 2 cores; docs/benchmarks.md)
bench-probe: venv
	$(BIN)/python tests/benchmarks/bench_probe_search.py --n 2000 --n 12000 --out results/bench_probe_search.json

## bench-survey: survey prediction throughput, 1,500 hard-linked real cutouts at 64 px: the pipeline's path (chunk shards, then predict_survey: 4 rotations, MC dropout, streamed per shard) beside one process that decodes, resizes and calls model.predict, each a whole process, 3 alternating runs (about 6 min on 2 cores; docs/benchmarks.md)
bench-survey: venv
	$(BIN)/python tests/benchmarks/bench_survey_predict.py --n 1500 --repeats 3 --out results/bench_survey_predict.json

## bench-finetune-scale: `snakemake finetune` with 1,000 and 4,000 distinct labelled galaxies (the real cutouts jittered) and surveys 4x that (hard links), 32 px, from a base this pipeline trains first: per rule jobs, wall and CPU seconds and peak memory beside its request; AGAINST=<a checkout before issue 25> runs the old design side by side (about 25 min on 2 cores with AGAINST; docs/benchmarks.md)
bench-finetune-scale: venv
	$(BIN)/python tests/benchmarks/bench_finetune_scale.py --n 1000 --n 4000 $(if $(AGAINST),--against $(AGAINST)) --out results/bench_finetune_scale.json

## bench-uncertainty: peak memory of calibration, acquisition and the HDF5 file streamed by row group beside the whole samples table, at 10,000 and 40,000 galaxies x 1 and 8 views (each task a fresh process; about 25 min on 2 cores; docs/benchmarks.md)
bench-uncertainty: venv
	$(BIN)/python tests/benchmarks/bench_uncertainty_memory.py --n 10000 --n 40000 --views 1 --views 8 --out results/bench_uncertainty_memory.json

## timm-env: a side venv (.venv-timm) with torch and timm, for the encoders' full-size comparison with timm and their speed beside timm's (about 4 min, 5.5 GB; the project itself never needs torch)
TIMM_VENV := .venv-timm
$(TIMM_VENV)/.installed:
	$(PYTHON) -m venv $(TIMM_VENV)
	$(TIMM_VENV)/bin/pip install --quiet --upgrade pip
	$(TIMM_VENV)/bin/pip install --quiet torch timm safetensors huggingface_hub
	touch $@

timm-env: $(TIMM_VENV)/.installed

## test-timm: the encoders against timm at full size, every architecture (tests/test_encoders_timm.py; skipped by `make test` where .venv-timm is absent)
test-timm: venv timm-env
	$(BIN)/pytest tests/test_encoders_timm.py -q -rA

## bench-encoders: Zoobot 2's encoders in Keras beside timm in the same run: full-size agreement of every architecture, and images/s and peak memory at 224 px for convnext_nano and efficientnet_b0 (about 10 min on 2 cores; docs/encoders.md)
bench-encoders: venv timm-env
	$(BIN)/python tests/benchmarks/bench_encoders.py --agreement convnext_pico convnext_nano convnext_tiny convnext_small convnext_base convnext_large efficientnet_b0 resnet18 resnet50 greyscale-convnext_nano --out results/bench_encoders.json

## bench-gpu: EfficientNetB0 + the Dirichlet-Multinomial loss, train and predict img/s at 224 and 300 px, float32 / bfloat16 / float16, with and without XLA, two batch sizes, and the input side; for a GPU machine (KERAS_BACKEND=jax works without TensorFlow; docs/benchmarks.md)
bench-gpu: venv
	$(BIN)/python tests/benchmarks/bench_gpu.py --out results/bench_gpu.json

## recalibration-study: on finished runs (RUNS=, default results/demo: `make run` first), each recalibration map fitted on validation and scored on test, and BALD's top 100 raw vs recalibrated (seconds; docs/results.md)
RUNS ?= results/demo
recalibration-study: venv
	$(BIN)/python tests/benchmarks/recalibration_study.py $(RUNS) --out results/recalibration_study

## scale: 300,000 real cutouts (hard links, 32 px) through the whole workflow (one epoch), with every rule's time and peak memory (about 20 min on 2 cores; docs/benchmarks.md)
scale: venv
	$(BIN)/python tests/benchmarks/scale.py --n 300000 --until all --out results/scale.json

## finetune-bases: finetuning on the real rings (../shared) by base (none, the demo model, a 128 px one) and seed, beside the baselines (docs/results.md)
finetune-bases: venv
	$(BIN)/python tests/benchmarks/finetune_bases.py

## active-learning: BALD vs random acquisition on the synthetic universe, 3 seeds (about 55 min on 2 cores; docs/results.md)
active-learning: venv
	$(BIN)/python tests/benchmarks/active_learning.py --out results/active_learning

## lint: snakemake --lint, snakefmt and ruff
lint: venv
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check workflow
	$(BIN)/ruff check zoobot_core tests workflow/scripts

format: venv
	$(BIN)/snakefmt workflow

clean:
	rm -rf results logs benchmarks .snakemake

## cross-cpu: does CPU training give the same bits across instruction sets and thread counts? (about 40 min; docs/results.md)
cross-cpu: venv
	$(BIN)/python tests/benchmarks/cross_cpu.py --shards results/demo/shards --out results/cross_cpu
