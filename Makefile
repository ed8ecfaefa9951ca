# One place for the project's commands; see README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup stubs weights test lint run bench

# Virtual environment, install, stub generation and model weights (sha256-checked).
setup:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(MAKE) stubs weights
	# Again, now that the generated removai/ package exists: an editable install maps only the packages
	# present when it runs, and scripts (removai, examples/) import the stubs from outside the repo root.
	$(BIN)/python -m pip install --quiet --no-deps -e .

stubs:
	$(BIN)/python -m tools.codegen

weights:
	$(BIN)/python -m tools.fetch_weights

test:
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check inference_service gateway removai_cli tools tests bench
	$(BIN)/python -m mypy

run: setup
	$(BIN)/python -m tools.stack

bench:
	$(BIN)/python -m bench.throughput
