# Voxgate. `make run` serves, `make test` tests; each sets up what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.voxgate-setup
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup system-deps run example test test-fast lint format clean

setup: $(STAMP)

# the llama.cpp build recipe is a dependency too: a venv built the old way is rebuilt
# (scripts/install_llama_cpp.sh keeps the build key in the venv and rebuilds on a mismatch)
$(STAMP): pyproject.toml scripts/setup-venv.sh scripts/install_llama_cpp.sh scripts/patch_llama_cpp.py
	bash scripts/system-deps.sh
	bash scripts/setup-venv.sh $(PYTHON) $(VENV)
	touch $(STAMP)

system-deps:
	bash scripts/system-deps.sh

run: setup
	$(PY) -m server serve --host $(HOST) --port $(PORT)

# the customer-service example (examples/customer_service/README.md); DB=path overrides its database
example: setup
	$(PY) -m examples.customer_service --host $(HOST) --port $(PORT) $(if $(DB),--db $(DB))

lint: setup
	$(VENV)/bin/ruff check server loadtests tests examples
	$(VENV)/bin/ruff format --check server loadtests tests examples
	$(VENV)/bin/mypy

test: setup lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

format: setup
	$(VENV)/bin/ruff format server loadtests tests examples
	$(VENV)/bin/ruff check --fix server loadtests tests examples

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
