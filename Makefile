# vgrepro: `make figures` regenerates every figure; `make test` runs the test suite.
# Data flows one way: data -> results (runner) -> build (executed notebooks) -> figures.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= default
DEVICE ?= cpu
DATA_ROOT ?= data

SAMPLES := $(DATA_ROOT)/samples/sample-medical.jsonl
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
EXECUTED := $(NOTEBOOKS:notebooks/%=build/$(PROFILE)/notebooks/%)
RESULTS_STAMP := results/$(PROFILE)/.complete
SOURCES := $(wildcard vgutils/*.py vgutils/*/*.py)

.DEFAULT_GOAL := help
.PHONY: help setup test lint format data figures bench bench-full clean

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

test: $(STAMP) lint ## set up if needed, lint, run the tests and the notebooks (smoke profile)
	$(PY) -m pytest

data: $(SAMPLES) ## build the embedded sample sets offline into data/samples, check hashes

$(SAMPLES): vgutils/data/samples.py $(STAMP)
	$(PY) -m vgutils data samples --data-root $(DATA_ROOT)
	$(PY) -m vgutils data verify --data-root $(DATA_ROOT)

figures: $(EXECUTED) ## set up, extract (cached), run the notebooks of PROFILE (default|smoke|paper)
	@$(PY) -m vgutils report figures/$(PROFILE) --notebooks $(words $(NOTEBOOKS))

# the profile's extraction jobs; the runner skips jobs whose results are complete
$(RESULTS_STAMP): notebooks/params/$(PROFILE).yaml $(SOURCES) $(SAMPLES) $(STAMP)
	$(PY) -m vgutils jobs $(PROFILE)
	@touch $@

# one executed notebook per figure notebook; a failure keeps the partial notebook aside
build/$(PROFILE)/notebooks/%.ipynb: notebooks/%.ipynb $(RESULTS_STAMP)
	@mkdir -p $(@D)
	@echo "papermill $< -> $@"
	@MPLBACKEND=Agg $(PY) -m papermill $< $@.partial.ipynb -p profile $(PROFILE) \
		--cwd notebooks --log-level WARNING --no-progress-bar \
		&& mv $@.partial.ipynb $@ \
		|| { echo "FAILED: notebook $< (profile $(PROFILE)); the failing cell and its" \
			"traceback are above and in $@.partial.ipynb"; exit 1; }

bench: $(STAMP) $(SAMPLES) ## quick (~2 min on 2 CPU cores): reference vs runner q/s (DEVICE=cpu|cuda)
	$(PY) benchmarks/bench_runner.py --device $(DEVICE) --quick
	$(PY) benchmarks/forward_capture.py --device $(DEVICE) --skip-tiny --repeats 2

bench-full: $(STAMP) $(SAMPLES) ## the long benchmark: more questions, memory scaling, every family
	$(PY) benchmarks/bench_runner.py --device $(DEVICE)
	$(PY) benchmarks/forward_capture.py --device $(DEVICE)

clean: ## remove generated build/ and figures/ (keeps .venv, data/, results/)
	rm -rf build figures
