# vgrepro: `make figures` regenerates every figure; `make test` runs the test suite.
# Data flows one way: data -> results (runner) -> build (executed notebooks) -> figures.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= default

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
EXECUTED := $(NOTEBOOKS:notebooks/%=build/$(PROFILE)/notebooks/%)

.DEFAULT_GOAL := help
DATA_ROOT ?= data
SAMPLES := $(DATA_ROOT)/samples/sample-medical.jsonl

.PHONY: help setup test lint format data figures clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install vgutils with its pinned dependencies

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: $(STAMP) lint ## set up if needed, lint, run the test suite
	$(PY) -m pytest

data: $(SAMPLES) ## build the embedded sample sets offline into data/samples and check their hashes

$(SAMPLES): vgutils/data/samples.py $(STAMP)
	$(PY) -m vgutils data samples --data-root $(DATA_ROOT)
	$(PY) -m vgutils data verify --data-root $(DATA_ROOT)

figures: $(STAMP) $(EXECUTED) ## set up if needed and regenerate the figures of PROFILE (default: embedded run)
	@$(PY) -m vgutils report figures/$(PROFILE) --notebooks $(words $(NOTEBOOKS))

build/$(PROFILE)/notebooks/%.ipynb: notebooks/%.ipynb notebooks/params/$(PROFILE).yaml $(STAMP)
	@mkdir -p $(@D) figures/$(PROFILE)
	$(PY) -m papermill --cwd notebooks -f notebooks/params/$(PROFILE).yaml $< $@

clean: ## remove generated build/ and figures/ (keeps .venv, data/, results/)
	rm -rf build figures
