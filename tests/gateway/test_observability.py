"""Observability: Prometheus metrics on both services, and one request id from HTTP through gRPC into logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import pytest

from common.logs import REQUEST_ID, JsonFormatter
from gateway.http.appkeys import METRICS_PORT
from inference_service.server import InferenceServer
from tests.gateway.harness import Gateway, gateway
from tests.reference import DATA
from tools.triton_launcher import free_port


async def test_request_id_travels_from_http_into_inference_logs(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller's X-Request-Id comes back on the response and names the inference service's log line."""
    _, key = await gw.account("pro")
    form = aiohttp.FormData()
    form.add_field("file", (DATA / "chelsea.jpg").read_bytes(), filename="c.jpg", content_type="image/jpeg")
    with caplog.at_level(logging.INFO, logger="inference_service.servicer"):
        response = await gw.client.post(
            "/v1/remove-background/file", data=form, headers={"X-API-Key": key, "X-Request-Id": "trace-42abc"}
        )
    assert response.status == 200
    assert response.headers["X-Request-Id"] == "trace-42abc"
    lines = [r.getMessage() for r in caplog.records if r.name == "inference_service.servicer"]
    assert any(line.startswith("request trace-42abc: 451x300 -> 451x300 png") for line in lines), lines


async def test_unsafe_request_id_is_replaced(gw: Gateway) -> None:
    """A request id with characters unfit for logs is replaced by a generated one."""
    response = await gw.client.get("/healthz", headers={"X-Request-Id": "bad id; with spaces <script>"})
    assert response.status == 200
    assert response.headers["X-Request-Id"] != "bad id; with spaces <script>"
    assert len(response.headers["X-Request-Id"]) == 32


async def test_gateway_metrics(gw: Gateway) -> None:
    """The metrics port's GET /metrics counts requests per route template and status, and rate-limit refusals."""
    _, key = await gw.account("basic")
    for _ in range(11):
        await gw.client.get("/v1/account", headers={"X-API-Key": key})
    await gw.client.get("/v1/images/img_nothere000000", headers={"X-API-Key": key})
    async with aiohttp.ClientSession() as session, session.get(gw.metrics_url) as response:
        assert response.status == 200 and response.content_type == "text/plain"
        text = await response.text()
    assert 'removai_gateway_requests_total{method="GET",route="/v1/account",status="200"}' in text
    assert 'route="/v1/account",status="429"' in text
    assert 'route="/v1/images/{image_id}",status="429"' in text  # the 12th request, refused before routing
    assert 'removai_gateway_limit_refusals_total{reason="rate_limit"}' in text
    assert "removai_gateway_request_seconds_bucket" in text


async def test_metrics_are_served_on_their_own_port_never_on_the_api_port(tmp_path: Path) -> None:
    """GET /metrics on the public port is a 404 in the error envelope, like any unknown route (no key needed to
    learn that); the metrics port serves Prometheus' text (the public 404 counted in it) and nothing of the API;
    it closes with the gateway."""
    async with gateway(inference_url=f"127.0.0.1:{free_port()}", data_dir=tmp_path) as gw:
        public = await gw.client.get("/metrics")
        assert public.status == 404
        assert public.content_type == "application/json"
        assert public.headers["X-Request-Id"]
        body = await public.json()
        assert body["success"] is False
        assert body["error"]["code"] == "not_found"
        assert body["error"]["message"] == "no such endpoint"
        assert gw.app[METRICS_PORT] not in (0, gw.settings.port)

        async with aiohttp.ClientSession() as session:
            async with session.get(gw.metrics_url) as response:
                assert response.status == 200
                assert response.content_type == "text/plain"
                text = await response.text()
            assert "# TYPE removai_gateway_requests_total counter" in text
            assert 'removai_gateway_requests_total{method="GET",route="unmatched",status="404"}' in text
            async with session.get(gw.metrics_url.replace("/metrics", "/healthz")) as other:
                assert other.status == 404
        metrics_url = gw.metrics_url
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(metrics_url)


async def test_metrics_port_minus_one_serves_no_metrics(tmp_path: Path) -> None:
    """metrics_port -1 opens no metrics listener at all; the API port still answers /metrics with the 404."""
    async with gateway(inference_url=f"127.0.0.1:{free_port()}", data_dir=tmp_path, metrics_port=-1) as gw:
        assert METRICS_PORT not in gw.app
        response = await gw.client.get("/metrics")
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"


async def test_inference_metrics(inference_server: InferenceServer, gw: Gateway) -> None:
    """The inference service's own /metrics port reports calls by status, stage and Triton latencies."""
    assert inference_server.metrics_port
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{inference_server.metrics_port}/metrics"
    ) as response:
        text = await response.text()
    assert response.status == 200
    assert 'removai_inference_requests_total{status="OK"}' in text
    assert 'removai_inference_stage_seconds_count{stage="decode"}' in text
    assert "removai_inference_triton_call_seconds_count" in text


def test_json_log_lines_carry_the_request_id() -> None:
    """JSON logging writes one object per line with the request id of the context."""
    record = logging.LogRecord("gateway.x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    token = REQUEST_ID.set("req-7")
    try:
        record.request_id = REQUEST_ID.get()
        entry = json.loads(JsonFormatter().format(record))
    finally:
        REQUEST_ID.reset(token)
    assert entry["message"] == "hello world" and entry["request_id"] == "req-7" and entry["level"] == "INFO"


def test_access_log_leaves_out_query_strings(caplog: pytest.LogCaptureFixture) -> None:
    """A signed link's signature (in the query string) never reaches the access log."""
    from unittest import mock

    from gateway.http.access_log import AccessLogger

    request = mock.Mock(remote="127.0.0.1", method="GET", path="/v1/files/img_x.png",
                        path_qs="/v1/files/img_x.png?expires=1&signature=abc")
    response = mock.Mock(status=200, body_length=123)
    logger = logging.getLogger("aiohttp.access")
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        AccessLogger(logger, "").log(request, response, 0.0123)
    [line] = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert line == '127.0.0.1 "GET /v1/files/img_x.png" 200 123 12ms'
