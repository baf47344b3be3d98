# Two entry points, each building .venv from nothing when needed:
#   make demo   an example FastAPI + scikit-learn service with live, drifting traffic
#   make test   the whole suite (unit, doctests, integration with real uvicorn and promtool)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: demo test bench tools clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[fastapi,bentoml,otlp,cli,concept,explain,dev,bench]'
	touch $(STAMP)

# promtool (Debian's prometheus package) checks our /metrics output in the suite.
tools:
	@command -v promtool >/dev/null || { \
	  echo "installing Debian's prometheus package for promtool"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

demo: $(STAMP)
	$(BIN)/python examples/fastapi_sklearn/demo.py $(DEMO_ARGS)

test: $(STAMP) tools
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The benchmarks (not tests): request overhead (in-process ASGI, real uvicorn under wrk, memory)
# and drift checks (against scipy and Evidently, which gets its own venv: its pandas pin clashes).
EVIDENTLY := .bench-evidently/bin/python
$(EVIDENTLY):
	$(PYTHON) -m venv .bench-evidently
	.bench-evidently/bin/python -m pip install --quiet evidently 'pandas<3'

bench: $(STAMP) $(EVIDENTLY)
	@command -v wrk >/dev/null || { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python benchmarks/overhead.py all
	$(BIN)/python benchmarks/drift.py --evidently-python $(EVIDENTLY)
	$(BIN)/python benchmarks/store.py
	$(BIN)/python benchmarks/explain.py

clean:
	rm -rf $(VENV) .demo test-artifacts .bench-evidently
