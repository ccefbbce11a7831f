# The two commands: `make dev` serves the demo page and the API on :3001; `make test` runs
# every test. Both install what is missing first: a venv in .venv, the npm packages, and
# (as root) Debian's chromium for the browser tests.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
FRONTEND_STAMP := frontend/node_modules/.installed
FRONTEND_BUILD := frontend/dist/index.html
FRONTEND_SOURCES := $(shell find frontend/src frontend/index.html frontend/vite.config.ts frontend/tsconfig*.json -type f 2>/dev/null)

.PHONY: install dev cluster test test-python test-frontend lint format bench system-deps clean docs wheel

install: $(STAMP) $(FRONTEND_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(FRONTEND_STAMP): frontend/package.json frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund
	touch $@

$(FRONTEND_BUILD): $(FRONTEND_STAMP) $(FRONTEND_SOURCES)
	cd frontend && npm run build

# Browser tests use Debian's Chromium (never a downloaded browser); the multi-process
# tests use Debian's redis-server and nginx.
SYSTEM_PACKAGES := chromium:/usr/bin/chromium redis-server:/usr/bin/redis-server nginx:/usr/sbin/nginx

system-deps:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do \
	  [ -x "$${entry#*:}" ] || missing="$$missing $${entry%%:*}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing:$$missing: run 'sudo apt-get install$$missing'" >&2; exit 1; fi; \
	fi

dev: install $(FRONTEND_BUILD)
	$(BIN)/python -m server

# Redis, two server processes and nginx on :3001 (docs/scaling.md); Ctrl-C stops them all.
# SENTINEL=1: a primary, two replicas and three Sentinels instead of one Redis.
cluster: install system-deps $(FRONTEND_BUILD)
	$(BIN)/python deploy/cluster.py $(if $(filter 1 yes true,$(SENTINEL)),--sentinel)

test: install system-deps $(FRONTEND_BUILD) lint test-frontend test-python

test-frontend: $(FRONTEND_STAMP)
	cd frontend && npm run typecheck && npm test

# Two workers for most suites, then the ones that measure time or memory alone
# (tests/conftest.py SERIAL).
PYTEST_WORKERS ?= 2
test-python: $(STAMP) $(FRONTEND_BUILD)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not serial"
	$(BIN)/python -m pytest -q -m serial

lint: $(STAMP) $(FRONTEND_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check server providers tests bench deploy
	$(BIN)/mypy
	$(BIN)/lint-imports
	cd frontend && npm run lint:cycles

# The installable package, with the demo page inside (tests/test_wheel.py installs it in
# a fresh venv and runs it): dist/tiptap_streaming_server-*.whl.
wheel: install $(FRONTEND_BUILD)
	$(BIN)/python deploy/build_wheel.py dist

# docs/configuration.md from the Settings model (tests/test_settings_doc.py fails while stale).
docs: $(STAMP)
	$(BIN)/python -m server.settings_doc

format: $(STAMP)
	$(BIN)/ruff format server providers tests bench deploy
	$(BIN)/ruff check --fix .

# `make bench` also runs (b) and (c) on our server at this commit, alternating with this
# tree (issue 20's targets compare against it in the same run); empty to skip.
BENCH_BASELINE ?= 2ed2b33
bench: install
	bash bench/run.sh $(if $(BENCH_BASELINE),--baseline $(BENCH_BASELINE))
	$(BIN)/python bench/autocomplete.py --write
	$(BIN)/python bench/redis_cost.py --write
	$(BIN)/python bench/collab.py --write
	$(BIN)/python bench/redis_wait.py --write
	cd frontend && npm run bench:render

# Soak (issue 12): 500 concurrent demo sessions at 40 tokens/s for 5 minutes, with dropping,
# long-polling and slow viewers; writes bench/soak.json and bench/soak.png, prints a section
# for bench/RESULTS.md, fails if a chunk was lost, duplicated or out of order. Sizes:
# SOAK_SESSIONS, SOAK_SECONDS, SOAK_SESSION_SECONDS, SOAK_WORKERS (or bench/soak.py --help).
.PHONY: soak
soak: $(STAMP)
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache frontend/node_modules frontend/dist frontend/dist-lib
