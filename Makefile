# bzpeer: every command a newcomer needs. Everything installed lives under .local/.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .local/venv
PY := $(VENV)/bin/python
export KAFKA_BOOTSTRAP_SERVERS ?= 127.0.0.1:9092
export MONGODB_URI ?= mongodb://127.0.0.1:27017

.PHONY: lint help venv web-assets browser-deps infra-up infra-down infra-status topics test test-unit test-integration test-browser test-faults up down status demo schemas bench clean

help:
	@echo "make up          install what is missing, start Kafka, FerretDB, the services and the web app, load the seed"
	@echo "make down        stop everything make up started"
	@echo "make test        install, start Kafka + FerretDB, run unit, integration, end-to-end and browser tests"
	@echo "make test-browser the web app in Debian's chromium (Playwright) over the whole system"
	@echo "make lint        ruff (lint and format) and mypy, zero findings expected"
	@echo "make test-faults whole-system fault tests (SIGKILL, broker/store outages, poison), slow"
	@echo "make demo        play the seed story on a running system"
	@echo "make infra-up    start only Kafka and FerretDB (infra-down, infra-status)"
	@echo "make schemas     re-export the contracts' JSON Schemas"
	@echo "make bench       run every benchmark under bench/ (needs infra-up)"

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "python3 (>= 3.11) is required" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

venv: $(VENV)/.installed

# The web app's front-end libraries, pinned in package-lock.json, from the npm registry.
WEB_ASSETS := services/web/node_modules/.package-lock.json
$(WEB_ASSETS): services/web/package.json services/web/package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node.js 20) is required for the web app's front-end packages" >&2; exit 1; }
	cd services/web && npm ci --no-audit --no-fund
	@touch $@

web-assets: $(WEB_ASSETS)

# The browser tests drive Debian's chromium (never a browser Playwright downloads).
browser-deps: venv web-assets
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "Debian's chromium is required for the browser tests: sudo apt-get install chromium" >&2; exit 1; fi; }

infra-up:
	@scripts/infra.sh up

infra-down:
	@scripts/infra.sh down

infra-status:
	@scripts/infra.sh status

topics: venv infra-up
	$(PY) -m bzpeer_cli.main topics

test: venv browser-deps infra-up
	@$(PY) -m pytest || { test ! -s .local/logs/test-stall.txt || cat .local/logs/test-stall.txt; exit 1; }

# Habits that keep the code readable: ruff (lint, format) and mypy (strict on contracts/
# and service_runtime/, checked everywhere else, tests and benchmarks included);
# configured in pyproject.toml.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy contracts service_runtime services importers bzpeer_cli tests bench

test-unit: venv
	$(PY) -m pytest tests/unit

test-integration: venv infra-up
	$(PY) -m pytest tests/integration

test-browser: venv browser-deps infra-up
	$(PY) -m pytest tests/browser

# Whole-system fault tests (SIGKILL, broker and store outages, poison records) over a
# stream of BZPEER_FAULT_EVENTS mixed events (default 10,000). They stop and start the
# broker through scripts/infra.sh, so they need the infrastructure it started.
test-faults: venv infra-up
	$(PY) -m pytest tests/faults -m faults

up: venv web-assets infra-up
	@scripts/services.sh up

down:
	@scripts/services.sh down
	@scripts/infra.sh down

status:
	@scripts/infra.sh status
	@scripts/services.sh status

demo: venv
	$(PY) -m bzpeer_cli.main demo

schemas: venv
	$(PY) -m contracts.schemas_io

bench: venv infra-up
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean: down
	rm -rf .local
