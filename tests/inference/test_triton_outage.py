"""Triton stopped mid-run: calls fail fast with UNAVAILABLE, health follows, and service resumes on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contract.client import remove_background
from contract.errors import is_retryable, reason_of
from inference_service.server import create_server
from inference_service.settings import InferenceSettings
from removai.v1 import inference_pb2 as pb
from removai.v1 import inference_pb2_grpc as pb_grpc
from tests.held_model import NAME, HeldModel
from tests.reference import DATA
from tests.waiting import eventually
from tools.triton_launcher import TritonServer

PHOTO = (DATA / "astronaut.jpg").read_bytes()
# Far longer than a failure takes: a call still waiting at its deadline would end DEADLINE_EXCEEDED instead.
DEADLINE_S = 120.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def held(tmp_path: Path) -> HeldModel:
    return HeldModel.create(tmp_path)


@pytest.fixture
def own_triton(held: HeldModel, tmp_path: Path) -> Iterator[TritonServer]:
    """A Triton of this test's own serving the "held" model, so stopping it disturbs no other test."""
    server = TritonServer(held.repository, tmp_path / "triton")
    server.start()
    yield server
    held.release()  # a held call would make a graceful stop wait
    server.stop()


async def _wait_for_health(health: health_pb2_grpc.HealthStub, status: int) -> None:
    async def reached() -> bool:
        reply = await health.Check(health_pb2.HealthCheckRequest(service="removai.v1.BackgroundRemoval"))
        return bool(reply.status == status)

    await eventually(reached, message=f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")


async def test_triton_killed_mid_load_then_back(held: HeldModel, own_triton: TritonServer) -> None:
    """Calls held inside Triton and new calls fail with UNAVAILABLE (not at their deadline); health goes
    NOT_SERVING; after Triton restarts, health is SERVING and calls succeed without restarting the service."""
    settings = InferenceSettings(
        port=0, metrics_port=0, triton_url=own_triton.grpc_url, health_interval_s=0.2, default_model=NAME
    )
    running = create_server(settings)
    await running.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.BackgroundRemovalStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            await _wait_for_health(health, SERVING)
            ok = await remove_background(stub, PHOTO, pb.RemovalOptions(), timeout_s=DEADLINE_S)
            assert (ok.metadata.width, ok.metadata.model_name) == (512, NAME)

            held.hold()
            already = held.entered()
            in_flight = [
                asyncio.ensure_future(remove_background(stub, PHOTO, pb.RemovalOptions(), timeout_s=DEADLINE_S))
                for _ in range(3)
            ]
            await held.wait_entered(already + 1)  # at least one call is inside Triton, none can finish
            own_triton.stop(kill=True)
            results = await asyncio.gather(*in_flight, return_exceptions=True)
            assert all(isinstance(r, grpc.aio.AioRpcError) for r in results), results
            assert {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)} == {grpc.StatusCode.UNAVAILABLE}

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await remove_background(stub, PHOTO, pb.RemovalOptions(), timeout_s=DEADLINE_S)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert is_retryable(caught.value.code(), reason_of(caught.value))
            await _wait_for_health(health, NOT_SERVING)

            held.release()
            own_triton.start()
            await _wait_for_health(health, SERVING)
            again = await remove_background(stub, PHOTO, pb.RemovalOptions(), timeout_s=DEADLINE_S)
            assert (again.metadata.width, again.metadata.height) == (512, 512)
    finally:
        await running.stop()
