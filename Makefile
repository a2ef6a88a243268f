# The README's two commands (`make run`, `make test`) and the checks around them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYPROJECT_SUM := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# Two install levels, each remembered by a stamp named after pyproject.toml's checksum: `make run` needs the
# runtime and the embedded servers (.[embedded]); everything else needs the dev tools too (.[dev], a superset,
# so installing it also satisfies `make run`).
STAMP := $(VENV)/.installed-dev-$(PYPROJECT_SUM)
RUN_STAMP := $(VENV)/.installed-run-$(PYPROJECT_SUM)
# `make run PORT=8080`: the API's port; the demo model takes PORT + 1 (or DEMO_MODEL_PORT).
PORT ?= 8000

.PHONY: run test lint typecheck check bench chaos clean install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP) $(RUN_STAMP)

$(RUN_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[embedded]'
	rm -f $(VENV)/.installed-run-* && touch $(RUN_STAMP)

install: $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/sse-relay dev --port $(PORT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The benchmark suite (bench/, ~30 min on 2 busy cores; writes bench/results/). BENCH_ARGS="--quick" or "--only ttft".
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The chaos suite at full size (~2 min): workers SIGKILLed, APIs and Redis restarted, upstream faults; prints the
# counts and exits 1 on any invariant violation. Its short form runs in `make test` (tests/chaos/test_chaos.py).
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
