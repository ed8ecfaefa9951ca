# One image for the inference service and the gateway (Triton runs from its own image, deploy/triton/).
FROM python:3.11-slim
WORKDIR /app
# The run-time dependencies first, pinned with hashes (`make lock` writes requirements-runtime.lock), in a layer
# of their own that a code change does not rebuild.
COPY requirements-runtime.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements-runtime.lock
COPY pyproject.toml README.md ./
COPY protos protos
COPY tools tools
COPY contract contract
COPY common common
COPY inference_service inference_service
COPY gateway gateway
COPY removai_cli removai_cli
# The project itself: its dependencies are installed already, and the locked setuptools builds it.
RUN python -m tools.codegen && pip install --no-cache-dir --no-deps --no-build-isolation . \
    && rm -rf build ./*.egg-info
# Never root: uid 10001 (what the Kubernetes manifests' runAsUser names) owns only the gateway's scratch space.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin removai \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/removai
USER 10001:10001
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
