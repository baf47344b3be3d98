# Two entry points, each building .venv from nothing when needed:
#   make demo   an example FastAPI + scikit-learn service with live, drifting traffic
#   make test   the whole suite (unit, doctests, integration with real uvicorn, BentoML, Prometheus, Chromium)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: demo test bench tools clean

$(STAMP): pyproject.toml constraints.txt
	@echo "building $(VENV): the package and every extra (FastAPI, BentoML, OTLP, CLI, SHAP, PostgreSQL, tests); a few minutes the first time"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -c constraints.txt -e '.[fastapi,bentoml,otlp,cli,concept,explain,sklearn,postgres,dev,bench]'
	touch $(STAMP)

# What the suite uses beyond .venv: Debian's prometheus (promtool and a real server for the rules
# and the fleet PSI), chromium (the embedded dashboard in a headless browser, driven by
# Playwright) and postgresql (initdb and pg_ctl, which Debian keeps in /usr/lib/postgresql/*/bin:
# tests/postgres_server.py starts a private server for the shared prediction log's tests); from
# npm, Grafana's published dashboard types and the TypeScript compiler that checks our Grafana
# dashboard against them (versions pinned in tests/grafana/package-lock.json).
tools: tests/grafana/node_modules/.installed
tests/grafana/node_modules/.installed: tests/grafana/package-lock.json
	npm ci --prefix tests/grafana --silent --no-audit --no-fund
	touch $@

tools:
	@missing=; command -v promtool >/dev/null || missing="prometheus"; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  { command -v initdb && command -v pg_ctl; } >/dev/null || \
	    { ls /usr/lib/postgresql/*/bin/initdb && ls /usr/lib/postgresql/*/bin/pg_ctl; } >/dev/null 2>&1 || \
	    missing="$$missing postgresql"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian's $$missing"; \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi

demo: $(STAMP)
	$(BIN)/python examples/fastapi_sklearn/demo.py $(DEMO_ARGS)

# The suite runs on as many processes as the machine has cores (pytest-xdist), a test file's tests
# in one process (--dist loadscope: a file's servers and browser start once); each server a test
# starts takes ports the system hands out free (tests/http_helpers.py). `pytest tests/test_x.py`
# runs one file in one process.
test: $(STAMP) tools
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n auto --dist loadscope

# The benchmarks (not tests): request overhead (in-process ASGI, real uvicorn under wrk, memory),
# drift checks (against scipy and Evidently, which gets its own venv: its pandas pin clashes), the
# prediction log, explanations, and workers sharing (wrk, 1 and 3 workers; PostgreSQL's log); tail
# latency, instructions a request (valgrind), scaling, and every peer side by side (peers.py: NannyML, alibi-detect and whylogs get
# venvs of their own too, their pins clashing with ours; docs/dependencies.md says which).
EVIDENTLY := .bench-evidently/bin/python
$(EVIDENTLY):
	$(PYTHON) -m venv .bench-evidently
	.bench-evidently/bin/python -m pip install --quiet evidently 'pandas<3'
NANNYML := .bench-nannyml/bin/python
$(NANNYML):
	$(PYTHON) -m venv .bench-nannyml
	.bench-nannyml/bin/python -m pip install --quiet nannyml==0.13.1 statsmodels
ALIBI := .bench-alibi/bin/python
$(ALIBI):
	$(PYTHON) -m venv .bench-alibi
	.bench-alibi/bin/python -m pip install --quiet alibi-detect==0.13.0
WHYLOGS := .bench-whylogs/bin/python
$(WHYLOGS):
	$(PYTHON) -m venv .bench-whylogs
	.bench-whylogs/bin/python -m pip install --quiet 'whylogs[viz]==1.6.4' 'numpy<2' 'pandas<3' fastapi

bench: $(STAMP) $(EVIDENTLY) $(NANNYML) $(ALIBI) $(WHYLOGS)
	@command -v wrk >/dev/null && command -v valgrind >/dev/null || { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk valgrind >/dev/null; }
	$(BIN)/python benchmarks/overhead.py all
	$(BIN)/python benchmarks/drift.py --evidently-python $(EVIDENTLY)
	$(BIN)/python benchmarks/store.py
	$(BIN)/python benchmarks/explain.py
	$(BIN)/python benchmarks/fleet.py all
	$(BIN)/python benchmarks/tail.py
	$(BIN)/python benchmarks/instructions.py
	$(BIN)/python benchmarks/scaling.py
	$(BIN)/python benchmarks/peers.py requests
	$(BIN)/python benchmarks/peers.py drift

clean:
	rm -rf $(VENV) .demo test-artifacts .bench-evidently .bench-nannyml .bench-alibi .bench-whylogs
