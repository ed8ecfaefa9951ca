# One image for the inference service and the gateway (Triton runs from NVIDIA's own image).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos protos
COPY tools tools
COPY inference_service inference_service
COPY gateway gateway
COPY removai_cli removai_cli
RUN pip install --no-cache-dir . && python -m tools.codegen
ENV PYTHONUNBUFFERED=1
