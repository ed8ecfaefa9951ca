# One place for the project's commands; see README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Every dependency, dev tools included, pinned with hashes for Linux x86_64 / CPython 3.11 (`make lock`), and
# the run-time subset at the same versions, which the Dockerfile installs.
LOCK := requirements.lock
RUNTIME_LOCK := requirements-runtime.lock
TRITON_LOCK := deploy/triton/requirements.lock
INT8_LOCK := tools/int8-requirements.txt
REMBG_LOCK := bench/rembg-requirements.txt
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_35

.PHONY: setup system-packages stubs weights int8 parity test test-fast deploy-test lint proto-release run bench bench-grpc bench-png tune tune-sweep tune-analyzer lock audit quality

# Virtual environment, install from the lock (hashes checked), stub generation and model weights
# (sha256-checked).
setup: system-packages
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(MAKE) stubs weights
	# The project itself, its dependencies being installed already. After the stubs: an editable install
	# maps only the packages present when it runs, and scripts (removai, examples/) import the stubs from
	# outside the repo root. No build isolation: the locked setuptools builds it, nothing unpinned is fetched.
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .

# Re-resolve after changing pyproject.toml's dependencies: pins already in the lock are kept where they still
# fit; `make lock LOCK_FLAGS=--upgrade` moves everything to the newest allowed versions.
LOCK_FLAGS ?=
lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes $(LOCK_TARGET) $(LOCK_FLAGS) --quiet \
		--custom-compile-command 'make lock' -o $(LOCK)
	$(BIN)/uv pip compile pyproject.toml --constraint $(LOCK) --generate-hashes $(LOCK_TARGET) --quiet \
		--custom-compile-command 'make lock' -o $(RUNTIME_LOCK)
	# The Triton image's Python backend packages, at the main lock's versions where they meet. Python 3.10: NVIDIA's
	# image (Ubuntu 22.04); the hashes cover every wheel of each pinned version, so the stand-in's 3.11 installs too.
	$(BIN)/uv pip compile $(TRITON_LOCK:.lock=.in) --constraint $(LOCK) --generate-hashes --python-version 3.10 \
		--python-platform x86_64-manylinux_2_35 --quiet $(LOCK_FLAGS) --custom-compile-command 'make lock' -o $(TRITON_LOCK)
	# NNCF for `make int8`, in an environment of its own, at the main lock's versions of what both share.
	$(BIN)/uv pip compile $(INT8_LOCK:.txt=.in) --constraint $(LOCK) --generate-hashes $(LOCK_TARGET) --quiet \
		$(LOCK_FLAGS) --custom-compile-command 'make lock' -o $(INT8_LOCK)
	# rembg's server for the bench's comparison (bench/rembg.py), in an environment of its own; not constrained by the
	# main lock: rembg needs numpy 2, which the service's lock rules out.
	$(BIN)/uv pip compile $(REMBG_LOCK:.txt=.in) --generate-hashes $(LOCK_TARGET) --quiet $(LOCK_FLAGS) \
		--custom-compile-command 'make lock' -o $(REMBG_LOCK)

# Known advisories (PyPI's vulnerability data) for every locked version. --strict: a package that could not
# be checked fails the audit instead of being skipped in silence.
audit:
	$(BIN)/pip-audit -r $(LOCK) --require-hashes --disable-pip --strict --progress-spinner off

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

# The INT8 model (triton_models/isnet_int8/1/model.xml, .bin) from the pinned isnet weights: NNCF post-training
# quantization on 56 calibration images made from tests/data, in its own environment var/tools/int8/ (made
# once, about 300 MB). About 2.5 minutes of calibration on 2 quiet cores; not part of setup (tools/int8.py).
int8:
	$(BIN)/python -m tools.int8 $(ARGS)

# Mean and soft-edge (hair, fur) mask error of isnet and isnet_int8 against a direct ONNX Runtime f32 run of the
# pinned weights, on the repository's photos (tools/parity.py); `make quality` measures against ground truth.
parity:
	$(BIN)/python -m tools.parity $(ARGS)

# Every test: ISNet through Triton, whole stacks, the browser, fuzzing. The release gate CI runs.
test:
	$(BIN)/python -m pytest -q

# The everyday loop: every test but the tiers tests/tiers.py marks (ISNet, whole stacks, the browser, fuzzing,
# generated clients),
# still on the real PostgreSQL and Redis, real gateways and a real Triton serving the `held` test model; on
# pytest-xdist workers (2 measured fastest on 2 cores: the tests mostly wait on processes and sockets).
TEST_WORKERS ?= 2
test-fast:
	$(BIN)/python -m pytest -q -m "not isnet and not stack and not browser and not fuzz and not clients" -n $(TEST_WORKERS) --dist worksteal

# What we ship for production, built and run for real under podman: stand-in base images, the project's images,
# docker-compose.yml driven with traffic and a kill, the manifests' pod templates under `podman kube play`
# (tests/deploy/). Installs podman, runc and debootstrap when missing (as root). About 2 GB of disk.
deploy-test:
	$(BIN)/python -m tests.deploy

# buf (npm @bufbuild/buf, pinned in tests/grpc_node/package-lock.json with the Node.js gRPC client test's
# packages): lints protos/ and checks that no change breaks a caller of the contract as last released.
BUF := tests/grpc_node/node_modules/.bin/buf
$(BUF): tests/grpc_node/package-lock.json
	cd tests/grpc_node && npm ci --no-audit --no-fund --loglevel=error
	touch $(BUF)

# ruff, mypy (strict), the import contracts ([tool.importlinter] in pyproject.toml: which part may import which,
# the gateway's layers) and buf on the gRPC contract.
lint: $(BUF)
	$(BIN)/ruff check contract common inference_service gateway removai_cli tools tests bench examples
	$(BIN)/lint-imports
	$(BIN)/python -m mypy
	$(BUF) lint
	$(BUF) breaking --against $(PROTO_RELEASED)

# The contract as last released (a buf image: every message, field and number callers rely on), what `make lint`
# checks protos/ against. The repository has no release tags yet, so the image is committed; rebuild it when a
# release ships: `make proto-release`.
PROTO_RELEASED := protos/released.json
proto-release: $(BUF)
	$(BUF) build --exclude-source-info -o $(PROTO_RELEASED)
	$(BIN)/python -c "import json, sys; p = sys.argv[1]; t = json.dumps(json.load(open(p)), indent=1); open(p, 'w').write(t + '\n')" $(PROTO_RELEASED)

run: setup
	$(BIN)/python -m tools.stack

# The service's figures against its targets, through the public HTTP API of a whole stack, the model alone as the ceiling,
# and rembg's own server on the same weights, measured first (bench/stack.py, bench/rembg.py).
bench:
	$(BIN)/python -m bench.stack

# The gRPC service against the bare single-process pipeline (bench/throughput.py).
bench-grpc:
	$(BIN)/python -m bench.throughput

# The inference service's PNG encoders timed and size-checked on one cut-out (inference_service/profile.py).
bench-png:
	$(BIN)/python -m inference_service.profile png

# perf_analyzer against the model in Triton, concurrency swept; report under var/tune/ (tools/tune.py).
tune:
	$(BIN)/python -m tools.tune

# The same over config variants (instances, intra_op_threads, dynamic batching), one table and the best
# variant; ARGS passes options, e.g. ARGS="--precision f32 --variants c1-t0-batch,c2-t1-batch".
tune-sweep:
	$(BIN)/python -m tools.tune --sweep $(ARGS)

# NVIDIA's Model Analyzer (own environment in var/tools/) over instance count x intra_op_threads, local launch
# of the bundled tritonserver; reports under var/tune/analyzer-*/ (tools/tune_analyzer.py).
tune-analyzer:
	$(BIN)/python -m tools.tune_analyzer $(ARGS)

# Every served model's cut-outs against ground truth (common/matting_truth.py), per option: the standard matting
# errors of alpha and the edge colour error (tools/quality.py; figures in docs/quality.md).
quality:
	$(BIN)/python -m tools.quality $(ARGS)
