"""Faults under load through the public API: Triton killed while requests are in flight."""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from pathlib import Path

import aiohttp

from gateway.domain import quota
from gateway.http.appkeys import SESSIONS
from inference_service.server import create_server
from inference_service.settings import InferenceSettings
from tests.gateway.harness import gateway
from tests.held_model import NAME, HeldModel
from tests.reference import DATA
from tests.waiting import eventually
from tools.triton_launcher import TritonServer

PHOTO = (DATA / "coffee.jpg").read_bytes()
LOAD = 6


def _form() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", PHOTO, filename="coffee.jpg", content_type="image/jpeg")
    return form


async def test_triton_killed_mid_load_gives_503_then_recovers(tmp_path: Path) -> None:
    """With Triton killed while requests are held inside it, every request answers 503 server_error with
    Retry-After (no hang, no quota used); once Triton is back, the same gateway and service succeed again."""
    held = HeldModel.create(tmp_path)
    triton = TritonServer(held.repository, tmp_path / "triton")
    triton.start()
    inference = create_server(
        InferenceSettings(
            port=0, metrics_port=-1, triton_url=triton.grpc_url, health_interval_s=0.2, default_model=NAME
        )
    )
    await inference.start()
    try:
        # Six held uploads at once: above the default per-account cap, which would answer some 429.
        async with gateway(
            inference_url=f"127.0.0.1:{inference.port}", data_dir=tmp_path / "data",
            max_concurrent_uploads_per_account=LOAD,
        ) as gw:
            account_id, key = await gw.account("enterprise")
            headers = {"X-API-Key": key}
            held.hold()
            load = [
                asyncio.ensure_future(gw.client.post("/v1/remove-background/file", data=_form(), headers=headers))
                for _ in range(LOAD)
            ]
            await held.wait_entered(1)  # a request is inside Triton and none can finish: kill now
            triton.stop(kill=True)
            responses = await asyncio.gather(*load)
            statuses = [r.status for r in responses]
            assert statuses == [HTTPStatus.SERVICE_UNAVAILABLE] * LOAD, statuses
            for response in responses:
                body = await response.json()
                assert body["success"] is False and body["error"]["code"] == "server_error"
                assert response.headers["Content-Type"].startswith("application/json")
                assert int(response.headers["Retry-After"]) >= 1
            assert await quota.usage(gw.app[SESSIONS], account_id) == 0

            held.release()
            triton.start()
            await eventually(inference.health.check, message="inference service healthy again")
            again = await gw.client.post("/v1/remove-background/file", data=_form(), headers=headers)
            assert again.status == HTTPStatus.OK, await again.text()
            done = await again.json()
            assert done["success"] is True and done["data"]["status"] == "completed"
            assert await quota.usage(gw.app[SESSIONS], account_id) == 1
    finally:
        held.release()
        await inference.stop()
        triton.stop()
