"""Operator endpoints: a liveness check on the public port, and Prometheus metrics on a port of their own
(settings.metrics_port, served by gateway.http.app): the public API port never answers /metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.http.middlewares import public


async def serve_metrics(request: web.Request) -> web.Response:
    """GET /metrics in Prometheus' text format."""
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def create_metrics_app() -> web.Application:
    """The metrics listener's application: GET /metrics and nothing else (no API key: the port is the guard)."""
    app = web.Application()
    app.router.add_get("/metrics", serve_metrics, name="metrics")
    return app


@public
async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the gateway process answers (inference health is the gRPC service's own)."""
    return web.json_response({"success": True, "data": {"status": "ok"}, "meta": {}})
