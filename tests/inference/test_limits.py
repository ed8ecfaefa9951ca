"""The inference service's guards against callers that hold resources: a cap on concurrent calls, idle
request streams closed, and a default deadline for calls without one; and how the gateway maps the cap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.errors import InvalidRequest, ServiceUnavailable, from_grpc
from inference_service.errors import ERROR_CODE_METADATA_KEY
from inference_service.server import create_server
from inference_service.settings import InferenceSettings
from inference_service.triton_launcher import free_port
from removai.v1 import inference_pb2 as pb
from removai.v1 import inference_pb2_grpc as pb_grpc

# None of these guards needs a model: the stream is refused or ended before Triton would be called, so the
# real server runs against a Triton address where nothing listens.


@asynccontextmanager
async def limited_server(**overrides: Any) -> AsyncIterator[grpc.aio.Channel]:
    """A real inference server with `overrides`, and a channel to it."""
    settings = InferenceSettings(
        port=0, metrics_port=-1, triton_url=f"127.0.0.1:{free_port()}", health_interval_s=5.0, **overrides
    )
    server = create_server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield channel
    finally:
        await server.stop(0.5)


async def _options_then_silence(release: asyncio.Event) -> AsyncIterator[pb.RemoveBackgroundRequest]:
    """A caller that sends its options and then nothing, keeping the stream open until `release`."""
    yield pb.RemoveBackgroundRequest(options=pb.RemovalOptions())
    await release.wait()


async def _status_of(call: Any) -> tuple[grpc.StatusCode, str, str | None]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass
    error = raised.value
    return error.code(), error.details() or "", dict(error.trailing_metadata() or ()).get(ERROR_CODE_METADATA_KEY)


async def test_idle_request_stream_is_closed_with_deadline_exceeded() -> None:
    """A stream that sends its options and then falls silent is ended by the server after
    stream_idle_timeout_s (the client set no deadline of its own), with a trailer and a clear message."""
    release = asyncio.Event()
    async with limited_server(stream_idle_timeout_s=0.5, default_deadline_s=120.0) as channel:
        call = pb_grpc.BackgroundRemovalStub(channel).RemoveBackground(_options_then_silence(release))
        try:
            code, details, trailer = await asyncio.wait_for(_status_of(call), 60)
        finally:
            release.set()
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert details == "no message on the request stream for 0.5s; closed"
    assert trailer == "server_error"


async def test_call_without_deadline_gets_the_default_one() -> None:
    """A caller that sets no deadline and keeps the stream open (not idle long enough to trip the idle guard)
    is ended by the service's default deadline."""
    release = asyncio.Event()

    async def trickle() -> AsyncIterator[pb.RemoveBackgroundRequest]:
        yield pb.RemoveBackgroundRequest(options=pb.RemovalOptions())
        while not release.is_set():  # one byte every 0.1 s: never idle for the 30 s idle guard
            yield pb.RemoveBackgroundRequest(chunk=b"\xff")
            await asyncio.sleep(0.1)

    async with limited_server(stream_idle_timeout_s=30.0, default_deadline_s=1.0) as channel:
        call = pb_grpc.BackgroundRemovalStub(channel).RemoveBackground(trickle())
        try:
            code, details, trailer = await asyncio.wait_for(_status_of(call), 60)
        finally:
            release.set()
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert details == "the call took longer than its 1s deadline"
    assert trailer == "server_error"


async def test_calls_over_the_cap_get_resource_exhausted_at_once() -> None:
    """With max_concurrent_rpcs=2 and two streams held open, the next call is refused RESOURCE_EXHAUSTED
    by gRPC (no error-code trailer); once the streams end, calls are served again."""
    release = asyncio.Event()
    async with limited_server(max_concurrent_rpcs=2, stream_idle_timeout_s=60.0) as channel:
        stub = pb_grpc.BackgroundRemovalStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        held: list[tuple[Any, asyncio.Future[tuple[grpc.StatusCode, str, str | None]]]] = []

        def hold() -> None:
            call = stub.RemoveBackground(_options_then_silence(release), timeout=120)
            held.append((call, asyncio.ensure_future(_status_of(call))))

        hold()
        hold()
        try:
            # Calls reach the server asynchronously: a probe in flight when the held streams arrive may
            # take one of their slots (that stream is refused and reopened). Poll, bounded, until a probe
            # is refused while both held streams are open.
            refused: grpc.aio.AioRpcError | None = None
            deadline = time.monotonic() + 30
            while refused is None:
                assert time.monotonic() < deadline, "the third call was never refused"
                for index, (_call, result) in enumerate(list(held)):
                    if result.done():
                        assert result.result()[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
                        held.remove(held[index])
                        hold()
                try:
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                except grpc.aio.AioRpcError as error:
                    if not any(result.done() for _call, result in held):
                        refused = error
                await asyncio.sleep(0.05)
            assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.details() == "Concurrent RPC limit exceeded!"
            assert ERROR_CODE_METADATA_KEY not in dict(refused.trailing_metadata() or ())
        finally:
            release.set()
            await asyncio.gather(*(result for _call, result in held), return_exceptions=True)
        # Freed slots are served again (the release reaches the server asynchronously too).
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                break
            except grpc.aio.AioRpcError as error:
                assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "the cap was never released"
                await asyncio.sleep(0.05)
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING  # no Triton behind it


def test_gateway_maps_the_cap_to_a_retryable_503_and_too_large_to_400() -> None:
    """RESOURCE_EXHAUSTED from gRPC's own cap (no trailer) is 503 with Retry-After; from the servicer's
    image-size check (trailer invalid_request) it stays 400 invalid_request."""
    busy = from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!", retry_after_s=7)
    assert isinstance(busy, ServiceUnavailable)
    assert (busy.status, busy.code, busy.headers) == (HTTPStatus.SERVICE_UNAVAILABLE, "server_error", {"Retry-After": "7"})
    assert busy.message == "the inference service is at capacity; retry shortly"
    too_large = from_grpc(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "the image is larger than 10 bytes", retry_after_s=7,
        public_code="invalid_request",
    )
    assert isinstance(too_large, InvalidRequest)
    assert (too_large.status, too_large.message, too_large.headers) == (
        HTTPStatus.BAD_REQUEST, "the image is larger than 10 bytes", {}
    )
