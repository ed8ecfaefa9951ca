"""Faults under load through the public API: Triton killed while requests are in flight."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from gateway import quota
from gateway.appkeys import SESSIONS
from inference_service.server import create_server
from inference_service.settings import InferenceSettings
from tests.conftest import start_triton
from tests.gateway.harness import gateway
from tests.reference import DATA

PHOTO = (DATA / "coffee.jpg").read_bytes()


def _form() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", PHOTO, filename="coffee.jpg", content_type="image/jpeg")
    return form


async def test_triton_killed_mid_load_gives_503_then_recovers(tmp_path: Path) -> None:
    """With Triton killed under load, the requests it drops answer 503 server_error with Retry-After (no
    hang, no quota used for them); once Triton is back, the same gateway and service succeed again."""
    triton = start_triton(tmp_path / "triton")
    inference = create_server(
        InferenceSettings(port=0, metrics_port=-1, triton_url=triton.grpc_url, health_interval_s=0.2)
    )
    await inference.start()
    try:
        async with gateway(inference_url=f"127.0.0.1:{inference.port}", data_dir=tmp_path / "data") as gw:
            account_id, key = await gw.account("enterprise")
            headers = {"X-API-Key": key}
            load = [
                asyncio.ensure_future(gw.client.post("/v1/remove-background/file", data=_form(), headers=headers))
                for _ in range(6)
            ]
            await asyncio.sleep(0.3)
            killed_at = time.monotonic()
            triton.stop(kill=True)
            responses = await asyncio.gather(*load)
            assert time.monotonic() - killed_at < 30
            statuses = [r.status for r in responses]
            assert 503 in statuses and set(statuses) <= {200, 503}, statuses
            for response in responses:
                if response.status == 503:
                    body = await response.json()
                    assert body["error"]["code"] == "server_error"
                    assert int(response.headers["Retry-After"]) >= 1
            assert await quota.usage(gw.app[SESSIONS], account_id) == statuses.count(200)

            triton.start()
            deadline = time.monotonic() + 30
            while not await inference.health.check() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            again = await gw.client.post("/v1/remove-background/file", data=_form(), headers=headers)
            assert again.status == 200, await again.text()
    finally:
        await inference.stop()
        triton.stop()
