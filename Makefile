# cryostack developer entry points. Quick start:
#   make demo   - install into .venv and run `cryostack demo`
#   make test   - install test dependencies (RELION, PostgreSQL) and run lint, type checks, tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this kind of machine's disk; CUDA machines may override this.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install install-dev system-deps demo test lint typecheck pytest web-build web-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e ".[dev,web]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev system-deps

system-deps:
	bash scripts/install-system-deps.sh

FRONTEND := web/frontend

$(FRONTEND)/node_modules/.package-lock.json: $(FRONTEND)/package.json $(FRONTEND)/package-lock.json
	cd $(FRONTEND) && npm ci --no-audit --no-fund

# The single-page web application, built into the Python package (src/cryostack/web/static).
web-build: $(FRONTEND)/node_modules/.package-lock.json
	cd $(FRONTEND) && npm run build

web-check: $(FRONTEND)/node_modules/.package-lock.json
	cd $(FRONTEND) && npm run typecheck && npm run lint && npm test

demo: install
	$(BIN)/cryostack demo

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: install-dev
	$(BIN)/mypy

pytest: install-dev web-build
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck web-check pytest

clean:
	rm -rf $(VENV) demo-project .pytest_cache .mypy_cache .ruff_cache $(FRONTEND)/node_modules src/cryostack/web/static
