# Voxgate. `make run` serves, `make test` tests; each sets up what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.voxgate-setup
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup system-deps run test test-fast lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-venv.sh
	bash scripts/system-deps.sh
	bash scripts/setup-venv.sh $(PYTHON) $(VENV)
	touch $(STAMP)

system-deps:
	bash scripts/system-deps.sh

run: setup
	$(PY) -m server serve --host $(HOST) --port $(PORT)

lint: setup
	$(VENV)/bin/ruff check server loadtests tests
	$(VENV)/bin/ruff format --check server loadtests tests
	$(VENV)/bin/mypy

test: setup lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

format: setup
	$(VENV)/bin/ruff format server loadtests tests
	$(VENV)/bin/ruff check --fix server loadtests tests

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
