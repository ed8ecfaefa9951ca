"""Prometheus metrics of the inference service (served on their own port; Triton keeps its own)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "removai_inference_requests_total", "RemoveBackground calls by final gRPC status", ["status"]
)
IN_FLIGHT = Gauge("removai_inference_calls_in_flight", "RemoveBackground calls being served now (refused ones not counted)")
IMAGES = Counter("removai_inference_images_total", "Images cut out successfully", ["output_format"])
BYTES_IN = Counter("removai_inference_bytes_in_total", "Image bytes received")
BYTES_OUT = Counter("removai_inference_bytes_out_total", "Cut-out bytes sent")
STAGE_SECONDS = Histogram(
    "removai_inference_stage_seconds", "Time per pipeline stage", ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TRITON_SECONDS = Histogram(
    "removai_inference_triton_call_seconds", "Latency of one Triton inference call",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60),
)
