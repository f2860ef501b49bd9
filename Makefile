# Taishi — common tasks. `make` alone lists them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := bash deploy/local/stack.sh

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-fast test-integration lint bench stack-up stack-down stack-status clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(BIN)/taishi: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

setup: $(BIN)/taishi ## create .venv and install Taishi with every extra

demo: setup ## simulate a sector and run it through the pipeline in-process (no servers)
	$(BIN)/taishi demo

test: setup ## start the real Kafka + Elasticsearch, run every test, stop them
	$(STACK) up
	set -a; eval "$$($(STACK) env)"; set +a; $(BIN)/pytest; rc=$$?; $(STACK) down; exit $$rc

test-fast: setup ## unit tests only (no servers)
	$(BIN)/pytest -m "not integration"

test-integration: setup ## integration tests on an already running stack (make stack-up)
	set -a; eval "$$($(STACK) env)"; set +a; $(BIN)/pytest -m integration

lint: setup ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup ## benchmarks (figures printed beside their baselines); the pipeline one needs the stack
	$(BIN)/python -m tests.benchmarks.bench_wire
	$(BIN)/python -m tests.benchmarks.bench_netflow

stack-up: ## fetch (cached) and start Kafka 4.1.1 + Elasticsearch 9.2.4 on loopback
	$(STACK) up

stack-down: ## stop them
	$(STACK) down

stack-status: ## are they up?
	$(STACK) status

clean: ## remove the venv, caches and local stores (keeps downloaded servers)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info taishi-*.sqlite*
