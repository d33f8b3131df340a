# tokenomy: `make demo` runs a working gateway; `make test` runs every check.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
# What running the gateway needs (demo, serve, sim): no test tools, nothing to compile.
RUN    := $(VENV)/.installed

.PHONY: demo test lint typecheck unit browser-deps serve sim bench clean

$(RUN): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[postgres]'
	touch $(RUN)

# llama-cpp-python (a dev dependency) compiles from source, once: pip caches the wheel,
# built for any x86-64 CPU rather than this one's.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=OFF}" $(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP) $(RUN)

demo: $(RUN)
	$(BIN)/tokenomy demo --history 30d

serve: $(RUN)
	$(BIN)/tokenomy serve

sim: $(RUN)
	$(BIN)/tokenomy sim

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

# The dashboard's browser tests drive Debian's Chromium (no browser download); idempotent.
browser-deps:
	@test -x /usr/lib/chromium/chromium || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

unit: $(STAMP) browser-deps
	$(BIN)/pytest -q

test: lint typecheck unit

# Issue 6's harness: tokenomy against a bare relay, LiteLLM and Portkey (several minutes;
# not part of `make test`). BENCH_ARGS=--quick for a smoke run, --only SYSTEMS for some.
BENCH_ARGS ?=

bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
