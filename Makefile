# Two entry points for a fresh machine: `make run` and `make test`. Each builds the virtual
# environment on first use (and again whenever pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit js simulate clean lock

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

# The JavaScript clients of the test matrix (tests/js), installed from their lock file.
js:
	scripts/ensure_js.sh

unit: $(STAMP) js
	./scripts/ensure_chromium.sh
	$(BIN)/pytest -q $(ARGS)

test: lint typecheck kubernetes-check unit

# The Kubernetes manifests (deploy/kubernetes): rendered, schema-validated and policy-scanned.
# Installs its tools into .venv-tools/ on first use (see scripts/check_kubernetes.py).
.PHONY: kubernetes-check
kubernetes-check:
	$(PYTHON) scripts/check_kubernetes.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants tests/js/node_modules

# Mutation testing, module by module (not part of `make test`; tens of minutes):
# make mutation, or make mutation ARGS='proxy/core/sse.py --jobs 1'. See mutation/targets.toml.
.PHONY: mutation
mutation: $(STAMP)
	$(BIN)/python scripts/mutation.py $(ARGS)

# Benchmarks against the built-in simulator (not part of `make test`): make bench ARGS=--quick
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(ARGS)

# The image built from the Dockerfile and run for real with podman, plus the compose demo
# profile (as root; installs podman and what else it needs). See README, "Container".
.PHONY: container-test
container-test: $(STAMP)
	$(BIN)/python scripts/container_test.py

# requirements.lock: the image's runtime dependencies pinned with their hashes (the Dockerfile
# installs exactly these), resolved for its Python 3.11 on x86_64 Linux. Run after changing
# [project] dependencies; pins still allowed are kept, ARGS=--upgrade moves them all forward.
LOCK_TOOL := uv==0.13.9
lock: $(STAMP)
	$(BIN)/pip install --quiet '$(LOCK_TOOL)'
	$(BIN)/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock' \
		--no-cache --quiet --output-file requirements.lock $(ARGS)
