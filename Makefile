# The two commands a newcomer needs: `make run` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PORT    ?= 3000

.PHONY: run test lint typecheck venv dev-venv services-start services-stop bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.runtime
dev-venv: $(VENV)/.dev

## Start the gateway on the in-process defaults (no Redis, no Kafka needed).
run: venv
	$(BIN)/python server.py --port $(PORT)

## Install test tools, start real Redis and Kafka, run lint and the whole suite, stop the services.
test: dev-venv
	scripts/test.sh

lint: dev-venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

bench: dev-venv
	$(BIN)/python -m bench.fanout

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache artifacts
	rm -rf client-js/node_modules client-js/dist scripts/asyncapi/node_modules
