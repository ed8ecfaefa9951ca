"""Operator endpoints: Prometheus metrics and a liveness check; no API key (restrict them at the proxy)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.http.middlewares import public


@public
async def serve_metrics(request: web.Request) -> web.Response:
    """GET /metrics in Prometheus' text format."""
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


@public
async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the gateway process answers (inference health is the gRPC service's own)."""
    return web.json_response({"success": True, "data": {"status": "ok"}, "meta": {}})
