# Two commands on a fresh machine (Python 3.11+, git, make):
#   make dev    install the broker into .venv and run it with the embedded simulator
#   make test   install the test dependencies into .venv and run every check
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check --no-input

.PHONY: dev test bench check lint typecheck openapi chart-schema lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: $(BIN)/python requirements/runtime.lock requirements/build.lock pyproject.toml
	$(PIP) install --quiet --require-hashes -r requirements/build.lock -r requirements/runtime.lock
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.test: $(BIN)/python requirements/test.lock requirements/build.lock pyproject.toml
	$(PIP) install --quiet --require-hashes -r requirements/build.lock -r requirements/test.lock
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	touch $@ $(VENV)/.runtime

# make dev PORT=8180 SIM_PORT=8190 to run beside something already on 8080/8090.
PORT      ?= 8080
SIM_PORT  ?= 8090
AUDIT_DIR ?= var/audit

dev: $(VENV)/.runtime
	$(BIN)/broker dev --port $(PORT) --sim-port $(SIM_PORT) --audit-dir $(AUDIT_DIR)

test: $(VENV)/.test
	scripts/ensure-chromium
	scripts/ensure-postgres
	scripts/ensure-redis
	$(BIN)/ruff check broker tests bench
	$(BIN)/ruff format --check broker tests bench
	$(BIN)/mypy
	@# The suite starts ~200 Python processes from this tree; with PYTHONDONTWRITEBYTECODE
	@# set (as on CI) each would compile the package again (~0.15 s of CPU a start).
	$(BIN)/python -m compileall -q broker bench
	@# pytest rewrites each test module's asserts on import, in every worker; it keeps the
	@# result only where bytecode may be written (about 2 s of CPU a worker a run otherwise).
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest

# The benchmark (a few minutes): results in bench/results/ and bench/RESULTS.md.
bench: $(VENV)/.test
	$(BIN)/python -m bench.run

lint: $(VENV)/.test
	$(BIN)/ruff check broker tests bench
	$(BIN)/ruff format --check broker tests bench
	$(BIN)/mypy

typecheck: $(VENV)/.test
	$(BIN)/mypy

# Regenerate the chart's schema for the broker's settings after changing broker/config.py.
chart-schema: $(VENV)/.runtime
	$(BIN)/python -m broker.config_schema helm/mka1-token-broker/values.schema.json

# Regenerate the committed OpenAPI document after changing the HTTP surface.
openapi: $(VENV)/.runtime
	$(BIN)/broker openapi --output openapi/openapi.json

# Re-resolve the locked dependencies (needs network and uv: pip install uv).
lock:
	uv pip compile pyproject.toml --python-version 3.11 --generate-hashes -o requirements/runtime.lock
	uv pip compile pyproject.toml --extra test --python-version 3.11 --generate-hashes -o requirements/test.lock
	printf "hatchling==1.33.0\neditables\n" | uv pip compile - --python-version 3.11 --generate-hashes -o requirements/build.lock

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
