# vgrepro: `make figures` regenerates every figure; `make test` runs the test suite.
# Data flows one way: data -> results (runner) -> build (executed notebooks) -> figures.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= default
DEVICE ?= cpu
DATA_ROOT ?= data
# REHEARSAL=1 (or small): rehearse PROFILE offline with random stand-in models and synthetic
# data (vgutils.rehearsal), into results|build|figures/<PROFILE>-rehearsal; REHEARSAL=full:
# the stand-ins at the real depths and widths (a GPU run), <PROFILE>-rehearsal-full
REHEARSAL ?=
ifneq ($(filter-out 0 1 small full,$(REHEARSAL)),)
$(error REHEARSAL=$(REHEARSAL): expected 1 (or small) or full)
endif
RUN := $(PROFILE)$(if $(filter full,$(REHEARSAL)),-rehearsal-full,$(if $(filter 1 small,$(REHEARSAL)),-rehearsal))

SAMPLES := $(DATA_ROOT)/samples/sample-medical.jsonl
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
EXECUTED := $(NOTEBOOKS:notebooks/%=build/$(RUN)/notebooks/%)
RESULTS_STAMP := results/$(RUN)/.complete
SOURCES := $(wildcard vgutils/*.py vgutils/*/*.py)

.DEFAULT_GOAL := help
.PHONY: help setup test test-ui lint format data figures lab bench bench-full gpu-check teach teach-seeds clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install vgutils with its pinned dependencies

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,ui]"
	touch $@

lint: $(STAMP) ## ruff lint and format check, and the import layers (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP) ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: $(STAMP) lint ## set up if needed, lint, run the tests and the notebooks (smoke profile)
	$(PY) -m pytest

test-ui: $(STAMP) ## browser test of the rating widget (JupyterLab + headless Debian chromium; not in make test)
	$(PY) -m pytest -m ui tests/test_ui.py

data: $(SAMPLES) ## build the embedded sample sets offline into data/samples, check hashes

$(SAMPLES): vgutils/data/samples.py $(STAMP)
	$(PY) -m vgutils data samples --data-root $(DATA_ROOT)
	$(PY) -m vgutils data verify --data-root $(DATA_ROOT) samples/

figures: $(EXECUTED) ## set up, extract (cached), run the notebooks of PROFILE (default|smoke|paper; REHEARSAL=1|full); numbers.json
	@$(PY) -m vgutils.notebook check build/$(RUN)/notebooks
	@$(PY) -m vgutils report --profile $(RUN)
	@$(PY) -m vgutils numbers --profile $(RUN)

# the profile's extraction jobs; the runner skips jobs whose results are complete
$(RESULTS_STAMP): notebooks/params/$(PROFILE).yaml $(SOURCES) vgutils/teach/registry.txt $(SAMPLES) $(STAMP)
	@mkdir -p build/$(RUN)/times
	@start=$$(date +%s); $(PY) -m vgutils jobs $(RUN) \
		&& echo $$(( $$(date +%s) - start )) > build/$(RUN)/times/jobs.s
	@touch $@

# one executed notebook per figure notebook; a failure keeps the partial notebook aside;
# its wall time goes to build/<run>/times/<notebook>.s (collected by `vgutils numbers`)
build/$(RUN)/notebooks/%.ipynb: notebooks/%.ipynb $(RESULTS_STAMP)
	@mkdir -p $(@D)
	@echo "papermill $< -> $@"
	@start=$$(date +%s); MPLBACKEND=Agg VGUTILS_PROFILE=$(RUN) $(PY) -m papermill $< \
		$@.partial.ipynb -p profile $(RUN) --cwd notebooks --log-level WARNING \
		--no-progress-bar \
		&& mv $@.partial.ipynb $@ \
		&& mkdir -p build/$(RUN)/times \
		&& echo $$(( $$(date +%s) - start )) > build/$(RUN)/times/$(basename $(notdir $<)).s \
		&& echo "  $(notdir $<): $$(( $$(date +%s) - start )) s" \
		|| { echo "FAILED: notebook $< (profile $(RUN)); the failing cell and its" \
			"traceback are above and in $@.partial.ipynb"; exit 1; }

lab: $(RESULTS_STAMP) ## open JupyterLab on notebooks/ (PROFILE's results computed first; Run All works)
	$(if $(filter-out default,$(RUN)),VGUTILS_PROFILE=$(RUN)) \
		$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

bench: $(STAMP) $(SAMPLES) ## quick (~2 min on 2 CPU cores): reference vs runner q/s (DEVICE=cpu|cuda)
	$(PY) benchmarks/bench_runner.py --device $(DEVICE) --quick
	$(PY) benchmarks/forward_capture.py --device $(DEVICE) --skip-tiny --repeats 2

bench-full: $(STAMP) $(SAMPLES) ## the long benchmark: more questions, memory scaling, every family
	$(PY) benchmarks/bench_runner.py --device $(DEVICE)
	$(PY) benchmarks/forward_capture.py --device $(DEVICE)

gpu-check: $(STAMP) $(SAMPLES) ## one H200, <= 8 min, < 60 GB: bench, full-size rehearsal of 2 models, 2-process torchrun, the table
	$(PY) benchmarks/gpu_check.py

# the pinned teaching model (vgutils/teach/pinned/) is what tiny:teach loads; this retrains
# the recipe (seed 0) beside it and compares; exit 1 if the retrained model fails acceptance
teach: $(STAMP) ## retrain the teaching model (one thread, ~30 min) into build/teach; acceptance vs the pinned copy
	$(PY) -m vgutils.teach.compare --out build/teach/retrained

teach-seeds: $(STAMP) ## the teaching recipe over 10 seeds (~5 h on one core): the acceptance spread
	$(PY) -m vgutils.teach.sweep --seeds 10

clean: ## remove generated build/ and figures/ (keeps .venv, data/, results/)
	rm -rf build figures
