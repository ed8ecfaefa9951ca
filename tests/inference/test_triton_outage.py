"""Triton stopped mid-run: calls fail fast with UNAVAILABLE, health follows, and service resumes on its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inference_service.client import remove_background
from inference_service.server import create_server
from inference_service.settings import InferenceSettings
from inference_service.triton_launcher import TritonServer
from removai.v1 import inference_pb2 as pb
from removai.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import start_triton
from tests.reference import DATA

PHOTO = (DATA / "astronaut.jpg").read_bytes()
DEADLINE_S = 30.0


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[TritonServer]:
    """A Triton of this test's own, so stopping it disturbs no other test."""
    server = start_triton(tmp_path / "triton")
    yield server
    server.stop()


async def _wait_for_health(health: health_pb2_grpc.HealthStub, status: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        reply = await health.Check(health_pb2.HealthCheckRequest(service="removai.v1.BackgroundRemoval"))
        if reply.status == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"health did not become {status} within {within_s} s")


async def test_triton_killed_mid_load_then_back(own_triton: TritonServer) -> None:
    """In-flight and new calls fail with UNAVAILABLE well before their deadline; health goes NOT_SERVING;
    after Triton restarts, health is SERVING and calls succeed without restarting the inference service."""
    running = create_server(InferenceSettings(port=0, metrics_port=0, triton_url=own_triton.grpc_url, health_interval_s=0.2))
    await running.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.BackgroundRemovalStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            await _wait_for_health(health, health_pb2.HealthCheckResponse.SERVING, 10)
            ok = await remove_background(stub, PHOTO, pb.RemovalOptions(), timeout_s=DEADLINE_S)
            assert ok.metadata.width == 512

            in_flight = [
                asyncio.ensure_future(remove_background(stub, PHOTO, pb.RemovalOptions(), timeout_s=DEADLINE_S))
                for _ in range(3)
            ]
            await asyncio.sleep(0.3)  # the calls are decoding or inside Triton now
            started = time.monotonic()
            own_triton.stop(kill=True)
            results = await asyncio.gather(*in_flight, return_exceptions=True)
            failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert failures, "killing Triton failed no in-flight call"
            assert {f.code() for f in failures} == {grpc.StatusCode.UNAVAILABLE}
            assert time.monotonic() - started < DEADLINE_S / 2

            before = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await remove_background(stub, PHOTO, pb.RemovalOptions(), timeout_s=DEADLINE_S)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert dict(caught.value.trailing_metadata() or ()).get("removai-error-code") == "server_error"
            assert time.monotonic() - before < DEADLINE_S / 2
            await _wait_for_health(health, health_pb2.HealthCheckResponse.NOT_SERVING, 5)

            own_triton.start()
            await _wait_for_health(health, health_pb2.HealthCheckResponse.SERVING, 15)
            again = await remove_background(stub, PHOTO, pb.RemovalOptions(), timeout_s=DEADLINE_S)
            assert (again.metadata.width, again.metadata.height) == (512, 512)
    finally:
        await running.stop()
