# The two commands a newcomer needs: `make run` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PORT    ?= 3000

.PHONY: run test test-fast lint venv dev-venv bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

# The project and its Python SDK (client/, a distribution of its own), editable: their commands
# (realtime-gateway, -token, -client) land in .venv/bin and a script anywhere can
# `import realtime_gateway_client` with .venv/bin/python (PYTHONWARNINGS: setuptools warns about every
# editable install).
$(VENV)/.project: pyproject.toml client/pyproject.toml | $(BIN)/python
	PYTHONWARNINGS=ignore $(BIN)/pip install -q --no-deps -e . -e ./client
	touch $@

venv: $(VENV)/.runtime $(VENV)/.project
dev-venv: $(VENV)/.dev $(VENV)/.project

## Start the gateway on the in-process defaults (no Redis, no Kafka needed); `make run PORT=3001`
## for another port.
run: venv
	$(BIN)/python server.py --port $(PORT)

## Check the machine (scripts/prerequisites.sh), install test tools, start real Redis and Kafka, run lint
## and the whole suite, stop the services.
test:
	@scripts/prerequisites.sh
	@$(MAKE) --no-print-directory dev-venv
	scripts/test.sh

## The inner loop: the fast tier (no Redis, Kafka, browser or subprocess), on both cores, in about
## half a minute (docs/testing.md). `make test` stays the whole suite.
test-fast: dev-venv
	$(BIN)/python -m pytest -n 2

lint: dev-venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

bench: dev-venv
	$(BIN)/python -m bench.fanout

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache artifacts
	rm -rf client-js/node_modules client-js/dist scripts/asyncapi/node_modules
