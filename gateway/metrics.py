"""Prometheus metrics of the gateway (served on a port of their own, settings.metrics_port, by handlers/ops.py)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("removai_gateway_requests_total", "HTTP requests", ["route", "method", "status"])
LATENCY = Histogram(
    "removai_gateway_request_seconds", "HTTP request latency", ["route"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 120),
)
IMAGES = Counter("removai_gateway_images_total", "Images processed, by outcome", ["status"])
BYTES_IN = Counter("removai_gateway_image_bytes_in_total", "Source image bytes sent to inference")
BYTES_OUT = Counter("removai_gateway_image_bytes_out_total", "Cut-out bytes stored")
REFUSALS = Counter("removai_gateway_limit_refusals_total", "Requests refused by a limit", ["reason"])
STORE_UNAVAILABLE = Counter(
    "removai_gateway_store_unavailable_total", "Requests answered 503 because a store was unreachable", ["store"]
)
ORPHANED_OBJECTS_REMOVED = Counter(
    "removai_gateway_orphaned_objects_removed_total",
    "Stored objects no image referenced (left by a replica killed between a put and its commit), removed by the"
    " orphan sweep, by prefix", ["prefix"],
)
