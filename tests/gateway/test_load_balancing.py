"""The gateway over several inference replicas: address forms, round robin with health checks, retry on a dead one."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError

from contract.channel import TargetError, balanced_target
from gateway.settings import GatewaySettings
from inference_service.server import InferenceServer
from tests.gateway.harness import gateway
from tests.reference import DATA
from tools.triton_launcher import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
PHOTO = (DATA / "coffee.jpg").read_bytes()

# A replica that passes health checks (or reports NOT_SERVING) and holds every removal call without answering,
# printing "in-flight" once it has read one, so a test can kill -9 it with a call provably in flight.
STALLING_REPLICA = """
import asyncio, sys
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from removai.v1 import inference_pb2_grpc as pb_grpc

class Stalling(pb_grpc.BackgroundRemovalServicer):
    async def RemoveBackground(self, request_iterator, context):
        async for _ in request_iterator:
            pass
        print("in-flight", flush=True)
        await asyncio.Event().wait()
        yield

async def main():
    server = grpc.aio.server()
    pb_grpc.add_BackgroundRemovalServicer_to_server(Stalling(), server)
    checks = health.aio.HealthServicer()
    serving = health_pb2.HealthCheckResponse.SERVING if sys.argv[2] == "serving" else health_pb2.HealthCheckResponse.NOT_SERVING
    await checks.set("", serving)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    print("listening", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


@asynccontextmanager
async def stalling_replica(serving: bool) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STALLING_REPLICA, str(port), "serving" if serving else "not-serving",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        assert line == b"listening\n", line
        yield process, port
    finally:
        if process.returncode is None:
            os.kill(process.pid, signal.SIGKILL)
        await process.wait()


def _form() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", PHOTO, filename="coffee.jpg", content_type="image/jpeg")
    return form


@pytest.mark.parametrize(
    ("value", "target"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("inference:50051", "inference:50051"),
        ("dns:///inference-headless:50051", "dns:///inference-headless:50051"),
        ("10.0.0.1:50051, 10.0.0.2:50052", "ipv4:10.0.0.1:50051,10.0.0.2:50052"),
        ("[::1]:50051,[fe80::1]:50051", "ipv6:[::1]:50051,[fe80::1]:50051"),
    ],
)
def test_inference_url_forms_become_grpc_targets(value: str, target: str) -> None:
    """One address or a gRPC target URI is kept as it is; a list of IP:port becomes the ipv4:/ipv6: form."""
    assert balanced_target(value) == target
    assert GatewaySettings(inference_url=value).inference_url == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("inference", "is not host:port"),
        ("127.0.0.1:0", "is not host:port"),
        ("127.0.0.1:1,", "has an empty address"),
        ("inference-1:50051,inference-2:50051", "dns:///name:port"),
        ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
    ],
)
def test_unusable_inference_urls_are_refused_at_start(value: str, message: str) -> None:
    """A list gRPC cannot balance over is a settings error that says what to write instead."""
    with pytest.raises(TargetError, match=message):
        balanced_target(value)
    with pytest.raises(ValidationError, match=message):
        GatewaySettings(inference_url=value)


async def test_a_replica_killed_with_a_call_in_flight_costs_no_request(
    inference_server: InferenceServer, tmp_path: Path
) -> None:
    """kill -9 of a replica holding a call: that call is retried on the live replica and answers 200 with a
    cut-out, and every later call succeeds on the survivor."""
    async with stalling_replica(serving=True) as (doomed, doomed_port):
        inference_url = f"127.0.0.1:{inference_server.port},127.0.0.1:{doomed_port}"
        async with gateway(inference_url=inference_url, data_dir=tmp_path / "data", inference_timeout_s=60) as gw:
            _, key = await gw.account("enterprise")
            headers = {"X-API-Key": key}
            assert doomed.stdout is not None
            in_flight = asyncio.ensure_future(doomed.stdout.readline())
            # Round robin sends one of any two calls to each ready replica: the first call that does not
            # finish on the live replica is held by the doomed one (a few tries while both connect).
            held: asyncio.Future[aiohttp.ClientResponse] | None = None
            for _ in range(4):
                call = asyncio.ensure_future(
                    gw.client.post("/v1/remove-background/file", data=_form(), headers=headers)
                )
                await asyncio.wait({call, in_flight}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
                if in_flight.done():
                    held = call
                    break
                response = call.result()
                assert response.status == 200, await response.text()
            assert held is not None and in_flight.result() == b"in-flight\n"
            assert not held.done()

            os.kill(doomed.pid, signal.SIGKILL)
            response = await asyncio.wait_for(held, 120)
            body = await response.json()
            assert response.status == 200, body
            assert response.headers["Content-Type"].startswith("application/json")
            assert body["success"] is True
            assert body["data"]["status"] == "completed"

            for _ in range(3):
                after = await gw.client.post("/v1/remove-background/file", data=_form(), headers=headers)
                assert after.status == 200, await after.text()
                assert (await after.json())["data"]["status"] == "completed"


async def test_a_replica_reporting_not_serving_gets_no_calls(
    inference_server: InferenceServer, tmp_path: Path
) -> None:
    """A replica whose health is NOT_SERVING (its Triton is down) is skipped: every call succeeds on the other,
    and the unhealthy one never receives a call."""
    async with stalling_replica(serving=False) as (unhealthy, unhealthy_port):
        inference_url = f"127.0.0.1:{unhealthy_port},127.0.0.1:{inference_server.port}"
        async with gateway(inference_url=inference_url, data_dir=tmp_path / "data", inference_timeout_s=60) as gw:
            _, key = await gw.account("enterprise")
            headers = {"X-API-Key": key}
            for _ in range(4):
                response = await gw.client.post("/v1/remove-background/file", data=_form(), headers=headers)
                body = await response.json()
                assert response.status == 200, body
                assert response.headers["Content-Type"].startswith("application/json")
                assert body["data"]["status"] == "completed"
            assert unhealthy.stdout is not None
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(unhealthy.stdout.readline(), 0.5)
