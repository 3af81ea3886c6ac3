# fluentdream pipeline. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export WANDB_MODE ?= offline
export WANDB_SILENT := true

.DEFAULT_GOAL := help
.PHONY: help install test figures clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed ## create .venv and install the package with its test extras

test: install ## run the test suite (CPU, offline)
	$(PY) -m pytest tests

figures: install ## run the main job on the embedded model and write the figures
	$(PY) paper_figures/make_all.py

clean: ## remove results and figures (keeps .venv)
	rm -rf results paper_figures/out
