# One image for the inference service and the gateway (Triton runs from NVIDIA's own image).
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
RUN python -m tools.codegen && pip install --no-cache-dir --no-deps --no-build-isolation .
ENV PYTHONUNBUFFERED=1
