# The README's commands. Each one runs scripts/setup.sh first, which installs what is missing
# (system packages, .venv, the sandbox's control plane) and leaves a good state alone.
SHELL := /bin/bash
PY := .venv/bin/python
# Keep Prefect from reaching for the network (this project's machines have none).
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup demo test lint unit sandbox stack benchmark

setup:
	@bash scripts/setup.sh

## The main job: rotate a 3-replica sandbox database with Prefect's embedded local API.
demo: setup
	$(PY) scripts/demo.py

## The whole check, as CI runs it: lint, types, then every test, in 3 parallel workers (each with its
## own sandbox and Prefect server; a test file stays in one worker). The tests mostly wait on restarts
## and Prefect's server, so 3 workers on 2 cores halve the time (docs/performance.md).
test: setup lint
	$(PY) -m pytest -n 3 --dist loadfile

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .

## Fast unit tests only (no sandbox).
unit: setup
	$(PY) -m pytest tests/unit

## A sandbox that stays up until Ctrl-C, for kubectl and the Prefect UI.
sandbox: setup
	$(PY) -m sandbox up

## Sandbox + Prefect server with UI + deployments + worker, until Ctrl-C.
## PREFECT_DB=postgres runs the server on a private PostgreSQL (started and stopped with the stack).
## IN_CLUSTER=1 runs the worker and the bridge as the pods of deployments/ (the production path).
PREFECT_DB ?= sqlite
IN_CLUSTER ?=
stack: setup
	$(PY) -m sandbox stack --db $(PREFECT_DB) $(if $(IN_CLUSTER),--in-cluster)

benchmark: setup
	$(PY) benchmarks/rotation_overhead.py
