"""GET /v1/models is served from a list the gateway refreshes in the background: requests (public, no key)
never reach the inference service or Triton; a failed refresh keeps the last list."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path

import pytest

from inference_service.errors import ModelUnavailable
from inference_service.triton import ServedModel
from tests.gateway.harness import gateway
from tests.inference.test_limits import limited_server
from tests.waiting import eventually


class TritonModels:
    """Stands in for Triton's model repository behind a real inference service (no model is run here): the
    models it reports, whether Triton is reachable, and how many times the service asked."""

    def __init__(self) -> None:
        self.models = [ServedModel("isnet", "1", "the default"), ServedModel("isnet_int8", "", "smaller")]
        self.down = False
        self.asked = 0

    async def is_ready(self, model: str) -> bool:
        return True  # the service reports SERVING, so the gateway's health-checked channel sends it calls

    async def served_models(self) -> list[ServedModel]:
        self.asked += 1
        if self.down:
            raise ModelUnavailable("Triton is unavailable")
        return list(self.models)


@asynccontextmanager
async def service_over(triton: TritonModels, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """A real inference service whose Triton client asks `triton`; yields its address once it is SERVING."""
    async with limited_server() as (_channel, server):
        monkeypatch.setattr(server.segmenter, "served_models", triton.served_models)
        monkeypatch.setattr(server.segmenter, "is_ready", triton.is_ready)
        server.health.poke()
        await eventually(lambda: server.health.serving, message="the service SERVING")
        yield f"127.0.0.1:{server.port}"


def _listed(body: dict[str, object]) -> list[tuple[str, bool]]:
    data = body["data"]
    assert isinstance(data, dict)
    return [(model["name"], model["default"]) for model in data["models"]]


async def test_model_list_requests_never_reach_the_inference_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifty GET /v1/models without a key, some at once: all 200 with the same list, the default first, and
    the inference service (so Triton) was asked once, by the gateway's own refresh, not once per request."""
    triton = TritonModels()
    async with (
        service_over(triton, monkeypatch) as inference_url,
        gateway(inference_url=inference_url, data_dir=tmp_path, models_refresh_s=3600) as gw,
    ):
        responses = [await gw.client.get("/v1/models") for _ in range(20)]
        responses += await asyncio.gather(*(gw.client.get("/v1/models") for _ in range(30)))
        bodies = [await response.json() for response in responses]
    assert [response.status for response in responses] == [HTTPStatus.OK] * 50
    assert all(response.headers["Content-Type"].startswith("application/json") for response in responses)
    assert {_listed(body) == [("isnet", True), ("isnet_int8", False)] for body in bodies} == {True}
    assert triton.asked == 1


async def test_model_list_follows_the_service_and_outlives_its_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a short refresh, a model Triton unloads leaves the list within a refresh; while Triton is away
    the refreshes fail and the last list is still served (200), and no request waits on the service."""
    triton = TritonModels()
    async with (
        service_over(triton, monkeypatch) as inference_url,
        gateway(inference_url=inference_url, data_dir=tmp_path, models_refresh_s=0.2) as gw,
    ):

        async def listed() -> list[tuple[str, bool]]:
            response = await gw.client.get("/v1/models")
            assert response.status == HTTPStatus.OK
            return _listed(await response.json())

        assert await listed() == [("isnet", True), ("isnet_int8", False)]
        triton.models = triton.models[:1]

        async def unloaded() -> bool:
            return await listed() == [("isnet", True)]

        await eventually(unloaded, message="the unloaded model gone from the list")
        triton.down = True
        asked = triton.asked
        await eventually(lambda: triton.asked >= asked + 2, message="two refreshes failing")
        assert await listed() == [("isnet", True)]


async def test_model_list_is_503_until_the_service_first_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before any list was fetched (Triton away since the gateway started) the route answers 503 with
    Retry-After, in the envelope; once the service can list its models, the list is served."""
    triton = TritonModels()
    triton.down = True
    async with (
        service_over(triton, monkeypatch) as inference_url,
        gateway(inference_url=inference_url, data_dir=tmp_path, models_refresh_s=0.2, retry_after_s=4) as gw,
    ):
        response = await gw.client.get("/v1/models")
        assert response.status == HTTPStatus.SERVICE_UNAVAILABLE
        assert response.headers["Retry-After"] == "4"
        assert await response.json() == {"success": False, "error": {
            "code": "server_error", "status": 503,
            "message": "the inference service is temporarily unavailable; retry shortly",
        }}
        triton.down = False

        async def served() -> bool:
            return (await gw.client.get("/v1/models")).status == HTTPStatus.OK

        await eventually(served, message="the list served once the service answers")
