"""Two real Tritons behind two real inference services behind a gateway: round robin, and kill -9 of one replica."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import psutil
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from inference_service.settings import InferenceSettings
from tests.conftest import start_triton
from tests.gateway.harness import Gateway, gateway
from tests.reference import DATA
from tests.waiting import eventually
from tools.triton_launcher import TritonServer, free_port

ROOT = Path(__file__).resolve().parent.parent.parent
PHOTO = (DATA / "coffee.jpg").read_bytes()
LOAD = 12  # with max_batch_size 4 and one instance, 6 calls per Triton leave some queued behind a batch

pytestmark = [pytest.mark.isnet, pytest.mark.timeout(600)]


def test_triton_url_lists_are_parsed_and_checked() -> None:
    """triton_url takes one host:port or a comma-separated list; anything else is refused at start."""
    settings = InferenceSettings(triton_url="127.0.0.1:8001, triton-2:8001")
    assert settings.triton_urls == ["127.0.0.1:8001", "triton-2:8001"]
    assert InferenceSettings(triton_url="triton:8001").triton_urls == ["triton:8001"]
    for bad in ("triton", "127.0.0.1:8001,", "127.0.0.1:99999"):
        with pytest.raises(ValidationError, match="is not host:port"):
            InferenceSettings(triton_url=bad)


@pytest.fixture(scope="module")
def tritons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TritonServer]]:
    """Two Tritons for this module (about 1 GB each): started once, some tests kill them."""
    servers: list[TritonServer] = []
    try:
        for _ in range(2):
            servers.append(start_triton(tmp_path_factory.mktemp("triton")))
        yield servers
    finally:
        for server in servers:
            pid = server.pid
            server.stop()
            if pid is not None:  # a Triton killed by a test leaves its backend stubs in its process group
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def inference_services(
    tritons: list[TritonServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[tuple[int, int]]]:
    """Two `python -m inference_service` processes on both Tritons: [(pid, port), ...]."""
    triton_url = ",".join(triton.grpc_url for triton in tritons)
    logs = tmp_path_factory.mktemp("inference")
    processes: list[tuple[int, int]] = []
    children: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(2):
            port = free_port()
            with (logs / f"inference-{i}.log").open("wb") as log:
                child = subprocess.Popen(
                    [sys.executable, "-m", "inference_service", f"--port={port}", "--metrics-port=-1",
                     f"--triton-url={triton_url}", "--health-interval-s=0.2"],
                    cwd=ROOT, stdout=log, stderr=log,
                )
            children.append(child)
            processes.append((child.pid, port))
        for (_, port), child in zip(processes, children, strict=True):
            _wait_serving(f"127.0.0.1:{port}", child)
        yield processes
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
            child.wait(30)


def _wait_serving(address: str, child: subprocess.Popen[bytes], within_s: float = 180.0) -> None:
    deadline = time.monotonic() + within_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert child.poll() is None, f"inference service on {address} exited"
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.1)
    raise AssertionError(f"inference service on {address} not SERVING within {within_s} s")


@pytest_asyncio.fixture
async def gw(inference_services: list[tuple[int, int]], tmp_path: Path) -> AsyncIterator[Gateway]:
    inference_url = ",".join(f"127.0.0.1:{port}" for _, port in inference_services)
    # The load is one account's: lift the per-account upload cap (4) above it, or the surplus would get 429.
    async with gateway(
        inference_url=inference_url, data_dir=tmp_path / "data", inference_timeout_s=300,
        max_concurrent_uploads_per_account=LOAD + 4,
    ) as running:
        yield running


def _metric(triton: TritonServer, name: str) -> float:
    """The isnet model's value of one of Triton's Prometheus metrics."""
    with urllib.request.urlopen(triton.metrics_url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + "{") and 'model="isnet"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _form() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", PHOTO, filename="coffee.jpg", content_type="image/jpeg")
    return form


async def _load(gw: Gateway, key: str, count: int) -> list[asyncio.Task[aiohttp.ClientResponse]]:
    return [
        asyncio.create_task(gw.client.post("/v1/remove-background/file", data=_form(), headers={"X-API-Key": key}))
        for _ in range(count)
    ]


async def _assert_completed(response: aiohttp.ClientResponse) -> None:
    body = await response.json()
    assert response.status == 200, body
    assert response.headers["Content-Type"].startswith("application/json")
    assert body["success"] is True
    assert body["data"]["status"] == "completed"


async def _wait_for_queued_request(triton: TritonServer, calls: list[asyncio.Task[aiohttp.ClientResponse]]) -> None:
    """Returns once `triton` holds a request in its queue (so in flight there) while no call has finished."""

    async def queued() -> bool:
        assert not any(call.done() for call in calls), "a call finished before any was queued in Triton"
        return await asyncio.to_thread(_metric, triton, "nv_inference_pending_request_count") >= 1

    await eventually(queued, 120, message="a request queued in the Triton")


async def test_calls_are_spread_over_both_tritons(gw: Gateway, tritons: list[TritonServer]) -> None:
    """Round robin: concurrent calls through two inference services all succeed, and each Triton served some."""
    before = [_metric(triton, "nv_inference_request_success") for triton in tritons]
    _, key = await gw.account("enterprise")
    for response in await asyncio.gather(*await _load(gw, key, 6)):
        await _assert_completed(response)
    served = [_metric(triton, "nv_inference_request_success") - b for triton, b in zip(tritons, before, strict=True)]
    assert all(count > 0 for count in served), served
    assert sum(served) == 6, served


async def test_an_inference_service_killed_with_calls_in_flight_costs_none(
    gw: Gateway, inference_services: list[tuple[int, int]], tritons: list[TritonServer]
) -> None:
    """kill -9 of one inference service while every call of a concurrent load is unfinished (round robin gave
    it half of them): each call is retried on the other service and answers 200 with a cut-out."""
    _, key = await gw.account("enterprise")
    for response in await asyncio.gather(*await _load(gw, key, 2)):  # both replicas connected and used
        await _assert_completed(response)
    calls = await _load(gw, key, LOAD)
    await _wait_for_queued_request(tritons[0], calls)
    os.kill(inference_services[0][0], signal.SIGKILL)
    for response in await asyncio.gather(*calls):
        await _assert_completed(response)
    for response in await asyncio.gather(*await _load(gw, key, 2)):
        await _assert_completed(response)


async def test_a_triton_killed_with_a_request_queued_costs_none_and_readiness_follows(
    gw: Gateway, inference_services: list[tuple[int, int]], tritons: list[TritonServer]
) -> None:
    """kill -9 of one Triton holding queued requests: the inference service retries them on the other Triton,
    every call answers 200 and health stays SERVING; only with both Tritons gone is it NOT_SERVING and the
    gateway answers 503 with Retry-After."""
    _, key = await gw.account("enterprise")
    calls = await _load(gw, key, LOAD)
    await _wait_for_queued_request(tritons[0], calls)
    assert tritons[0].pid is not None
    os.kill(tritons[0].pid, signal.SIGKILL)
    for response in await asyncio.gather(*calls):
        await _assert_completed(response)

    live = [port for pid, port in inference_services if _alive(pid)]
    assert live, inference_services
    async with grpc.aio.insecure_channel(f"127.0.0.1:{live[0]}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        for response in await asyncio.gather(*await _load(gw, key, 2)):
            await _assert_completed(response)

        assert tritons[1].pid is not None
        os.kill(tritons[1].pid, signal.SIGKILL)

        async def not_serving() -> bool:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            return bool(reply.status != health_pb2.HealthCheckResponse.SERVING)

        await eventually(not_serving, message="health not SERVING with both Tritons killed")
    response = await gw.client.post("/v1/remove-background/file", data=_form(), headers={"X-API-Key": key})
    body = await response.json()
    assert response.status == 503, body
    assert int(response.headers["Retry-After"]) >= 1
    assert body["success"] is False
    assert body["error"]["code"] == "server_error"


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
