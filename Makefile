# Two entry points for a fresh machine: `make run` and `make test`. Each builds the virtual
# environment on first use (and again whenever pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit simulate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/venice-e2ee-proxy serve $(ARGS)

simulate: $(STAMP)
	$(BIN)/venice-e2ee-proxy simulate $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check proxy tests benchmarks scripts
	$(BIN)/ruff format --check proxy tests benchmarks scripts
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q $(ARGS)

test: lint typecheck unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants

# Mutation testing of the sans-I/O core (not part of `make test`; tens of minutes):
# make mutation, or make mutation ARGS='proxy/core/sse.py --jobs 1'. See mutation/targets.toml.
.PHONY: mutation
mutation: $(STAMP)
	$(BIN)/python scripts/mutation.py $(ARGS)

# Benchmarks against the built-in simulator (not part of `make test`): make bench ARGS=--quick
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(ARGS)
