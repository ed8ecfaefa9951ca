"""The inference service's guards against callers that hold resources: a cap on concurrent calls and on the
image bytes they hold, refusals cut off quickly, health checks always answered, idle request streams closed,
and a default deadline for calls without one; and how the gateway maps the cap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contract.errors import Reason, is_retryable, reason_of
from gateway.domain import quota
from gateway.errors import InvalidRequest, ServiceUnavailable, from_grpc
from gateway.http.appkeys import SESSIONS
from inference_service.server import InferenceServer, create_server
from inference_service.settings import InferenceSettings
from removai.v1 import inference_pb2 as pb
from removai.v1 import inference_pb2_grpc as pb_grpc
from tests.gateway.harness import gateway
from tests.reference import DATA
from tests.waiting import eventually
from tools.triton_launcher import TritonServer, free_port

PHOTO = (DATA / "chelsea.jpg").read_bytes()
# None of these guards needs a model: the stream is refused or ended before Triton would be called, so the
# real server runs against a Triton address where nothing listens.


@asynccontextmanager
async def limited_server(**overrides: Any) -> AsyncIterator[tuple[grpc.aio.Channel, InferenceServer]]:
    """A real inference server with `overrides`, and a channel to it."""
    overrides.setdefault("triton_url", f"127.0.0.1:{free_port()}")  # nothing there unless a test says so
    settings = InferenceSettings(port=0, metrics_port=-1, health_interval_s=5.0, **overrides)
    server = create_server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield channel, server
    finally:
        await server.stop(0.5)


async def _options_then_silence(release: asyncio.Event) -> AsyncIterator[pb.RemoveBackgroundRequest]:
    """A caller that sends its options and then nothing, keeping the stream open until `release`."""
    yield pb.RemoveBackgroundRequest(options=pb.RemovalOptions())
    await release.wait()


Outcome = tuple[grpc.StatusCode, str, str | None]


async def _status_of(call: Any) -> Outcome:
    """The status, details and ErrorInfo reason a call ends with (it must fail)."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass
    error = raised.value
    return error.code(), error.details() or "", reason_of(error)


async def _probe(stub: pb_grpc.BackgroundRemovalAsyncStub) -> Outcome:
    """A complete, quick call: admitted, it fails fast (no Triton behind the server, and its bytes are not an
    image); refused, it is RESOURCE_EXHAUSTED."""

    async def not_an_image() -> AsyncIterator[pb.RemoveBackgroundRequest]:
        yield pb.RemoveBackgroundRequest(options=pb.RemovalOptions())
        yield pb.RemoveBackgroundRequest(chunk=b"not an image")

    return await _status_of(stub.RemoveBackground(not_an_image(), timeout=30))


async def hold_every_slot(
    channel: grpc.aio.Channel, server: InferenceServer, release: asyncio.Event
) -> list[asyncio.Future[Outcome]]:
    """Open as many silent streams as the server has removal slots and wait (bounded) until it serves them
    all; returns their outcomes, known once `release` is set."""
    stub = pb_grpc.BackgroundRemovalStub(channel)
    slots = server.settings.max_concurrent_rpcs
    held: list[asyncio.Future[Outcome]] = [
        asyncio.ensure_future(_status_of(stub.RemoveBackground(_options_then_silence(release), timeout=120)))
        for _ in range(slots)
    ]

    def all_served() -> bool:  # calls reach the server asynchronously
        assert not any(result.done() for result in held), [result.result() for result in held if result.done()]
        return server.servicer.active >= slots

    await eventually(all_served, message="the held streams all served")
    return held


async def test_idle_request_stream_is_closed_with_deadline_exceeded() -> None:
    """A stream that sends its options and then falls silent is ended by the server after
    stream_idle_timeout_s (the client set no deadline of its own), with a clear message."""
    release = asyncio.Event()
    async with limited_server(stream_idle_timeout_s=0.5, default_deadline_s=120.0) as (channel, _server):
        call = pb_grpc.BackgroundRemovalStub(channel).RemoveBackground(_options_then_silence(release))
        try:
            code, details, reason = await asyncio.wait_for(_status_of(call), 60)
        finally:
            release.set()
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert details == "no message on the request stream for 0.5s; closed"
    assert reason is None


async def test_call_without_deadline_gets_the_default_one() -> None:
    """A caller that sets no deadline and keeps the stream open (not idle long enough to trip the idle guard)
    is ended by the service's default deadline."""
    release = asyncio.Event()

    async def trickle() -> AsyncIterator[pb.RemoveBackgroundRequest]:
        yield pb.RemoveBackgroundRequest(options=pb.RemovalOptions())
        while not release.is_set():  # one byte every 0.1 s: never idle for the 30 s idle guard
            yield pb.RemoveBackgroundRequest(chunk=b"\xff")
            await asyncio.sleep(0.1)

    async with limited_server(stream_idle_timeout_s=30.0, default_deadline_s=1.0) as (channel, _server):
        call = pb_grpc.BackgroundRemovalStub(channel).RemoveBackground(trickle())
        try:
            code, details, reason = await asyncio.wait_for(_status_of(call), 60)
        finally:
            release.set()
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert details == "the call took longer than its 1s deadline"
    assert reason is None


async def test_calls_over_the_cap_get_resource_exhausted_at_once() -> None:
    """With max_concurrent_rpcs=2 and two streams held open, the next removal is refused at once with
    RESOURCE_EXHAUSTED and the ErrorInfo reason SERVICE_BUSY; health checks are still answered (they are never
    counted against the cap); once the streams end, removals are served again."""
    release = asyncio.Event()
    async with limited_server(max_concurrent_rpcs=2, stream_idle_timeout_s=60.0) as (channel, server):
        held = await hold_every_slot(channel, server, release)
        try:
            refused = await _probe(pb_grpc.BackgroundRemovalStub(channel))
            answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        finally:
            release.set()
            await asyncio.gather(*held, return_exceptions=True)
        assert refused == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, "2 removals are running; retry shortly", Reason.SERVICE_BUSY
        )
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING  # answered; no Triton behind it
        # Freed slots are served again (the held streams' ends reach the server asynchronously).
        await eventually(lambda: server.servicer.active == 0, message="the slots freed")
        outcome = await _probe(pb_grpc.BackgroundRemovalStub(channel))
    assert outcome[0] in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE), outcome


async def test_an_image_over_max_image_bytes_is_resource_exhausted_image_too_large() -> None:
    """An upload over max_image_bytes is RESOURCE_EXHAUSTED with the reason IMAGE_TOO_LARGE, which the
    contract calls final (the busy refusal above shares the status and is retryable)."""

    async def too_large() -> AsyncIterator[pb.RemoveBackgroundRequest]:
        yield pb.RemoveBackgroundRequest(options=pb.RemovalOptions())
        yield pb.RemoveBackgroundRequest(chunk=b"\xff" * 2048)

    async with limited_server(max_image_bytes=1024) as (channel, _server):
        outcome = await _status_of(pb_grpc.BackgroundRemovalStub(channel).RemoveBackground(too_large(), timeout=30))
    assert outcome == (grpc.StatusCode.RESOURCE_EXHAUSTED, "the image is larger than 1024 bytes", Reason.IMAGE_TOO_LARGE)
    assert not is_retryable(outcome[0], outcome[2])
    assert is_retryable(grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.SERVICE_BUSY)


async def test_gateway_answers_503_with_retry_after_while_the_service_is_at_its_cap(
    tmp_path: Path, triton: TritonServer
) -> None:
    """The whole path: with the service's only slot held by another caller, an upload through a real gateway
    is 503 server_error with Retry-After (retryable) and no quota is used. The service is backed by the real
    Triton, so it reports SERVING and the gateway's health-checked channel sends it the call."""
    release = asyncio.Event()
    form = aiohttp.FormData()
    form.add_field("file", PHOTO, filename="photo.jpg", content_type="image/jpeg")
    async with limited_server(
        max_concurrent_rpcs=1, stream_idle_timeout_s=60.0, triton_url=triton.grpc_url
    ) as (channel, server):
        health = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        await eventually(serving, message="the service reports SERVING")
        held = await hold_every_slot(channel, server, release)
        try:
            async with gateway(inference_url=f"127.0.0.1:{server.port}", data_dir=tmp_path, retry_after_s=3) as gw:
                account_id, key = await gw.account("pro")
                response = await gw.client.post("/v1/remove-background/file", data=form, headers={"X-API-Key": key})
                assert response.status == HTTPStatus.SERVICE_UNAVAILABLE
                assert response.headers["Retry-After"] == "3"
                assert response.headers["Content-Type"].startswith("application/json")
                assert await response.json() == {"success": False, "error": {
                    "code": "server_error", "status": 503,
                    "message": "the inference service is at capacity; retry shortly",
                }}
                assert await quota.usage(gw.app[SESSIONS], account_id) == 0
        finally:
            release.set()
            await asyncio.gather(*held, return_exceptions=True)


def test_gateway_maps_the_cap_to_a_retryable_503_and_too_large_to_400() -> None:
    """RESOURCE_EXHAUSTED from the caps (the servicer's, reason SERVICE_BUSY, or gRPC's backstop, no
    details) is 503 with Retry-After; from the image-size check (reason IMAGE_TOO_LARGE) it stays 400."""
    busy = from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!", retry_after_s=7)
    own = from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", retry_after_s=7, reason=Reason.SERVICE_BUSY)
    assert isinstance(own, ServiceUnavailable) and own.headers == {"Retry-After": "7"}
    assert isinstance(busy, ServiceUnavailable)
    assert (busy.status, busy.code, busy.headers) == (HTTPStatus.SERVICE_UNAVAILABLE, "server_error", {"Retry-After": "7"})
    assert busy.message == "the inference service is at capacity; retry shortly"
    too_large = from_grpc(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "the image is larger than 10 bytes", retry_after_s=7,
        reason=Reason.IMAGE_TOO_LARGE,
    )
    assert isinstance(too_large, InvalidRequest)
    assert (too_large.status, too_large.message, too_large.headers) == (
        HTTPStatus.BAD_REQUEST, "the image is larger than 10 bytes", {}
    )


async def test_a_refused_caller_that_never_ends_its_stream_is_cut_off_quickly() -> None:
    """With every slot taken, a caller that sends its options and then nothing (never ending its stream) gets
    RESOURCE_EXHAUSTED / SERVICE_BUSY within refusal_drain_s, not after the 60 s idle timeout: a slow caller
    cannot keep a refusal open."""
    release = asyncio.Event()
    async with limited_server(
        max_concurrent_rpcs=1, stream_idle_timeout_s=60.0, default_deadline_s=120.0, refusal_drain_s=0.5
    ) as (channel, server):
        held = await hold_every_slot(channel, server, release)
        try:
            stub = pb_grpc.BackgroundRemovalStub(channel)
            refused = await asyncio.wait_for(_status_of(stub.RemoveBackground(_options_then_silence(release))), 15)
        finally:
            release.set()
            await asyncio.gather(*held, return_exceptions=True)
    assert refused == (grpc.StatusCode.RESOURCE_EXHAUSTED, "1 removals are running; retry shortly", Reason.SERVICE_BUSY)


async def test_health_checks_answer_while_slow_refused_callers_flood_the_service() -> None:
    """Every removal slot held, then 40 callers that send their options and fall silent: each is refused by
    the service itself (SERVICE_BUSY: at most 16 are read while refused, the rest at once), and grpc.health.v1
    answers all along, however many refusals are open (gRPC's own call cap, which counted them with the
    health checks, is gone)."""
    release = asyncio.Event()
    async with limited_server(
        max_concurrent_rpcs=1, stream_idle_timeout_s=60.0, refusal_drain_s=60.0
    ) as (channel, server):
        held = await hold_every_slot(channel, server, release)
        stub = pb_grpc.BackgroundRemovalStub(channel)
        flood = [
            asyncio.ensure_future(_status_of(stub.RemoveBackground(_options_then_silence(release), timeout=120)))
            for _ in range(40)
        ]
        try:
            # 16 are being read while refused (and held so by the long refusal_drain_s); the other 24 are
            # refused at once.
            await eventually(lambda: sum(call.done() for call in flood) == 24, message="24 refused at once")
            assert server.servicer.draining == 16
            health = health_pb2_grpc.HealthStub(channel)
            answers = [await health.Check(health_pb2.HealthCheckRequest(), timeout=10) for _ in range(5)]
        finally:
            release.set()
            outcomes = await asyncio.gather(*flood, return_exceptions=True)
            await asyncio.gather(*held, return_exceptions=True)
    assert [answer.status for answer in answers] == [health_pb2.HealthCheckResponse.NOT_SERVING] * 5
    assert outcomes == [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "1 removals are running; retry shortly", Reason.SERVICE_BUSY)
    ] * 40


async def _sends(*parts: pb.RemoveBackgroundRequest, release: asyncio.Event) -> AsyncIterator[pb.RemoveBackgroundRequest]:
    """A caller that sends `parts` and then keeps its stream open until `release`."""
    for part in parts:
        yield part
    await release.wait()


async def test_image_bytes_in_flight_are_bounded_across_calls() -> None:
    """max_buffered_bytes bounds the image and background bytes all calls hold at once, whatever the number of
    calls: with 1.5 MiB held by two open calls and a 2 MiB budget, a call bringing 768 KiB more is refused
    with SERVICE_BUSY (retryable; its bytes are dropped), and so is one announcing a 1 MiB background; once
    the held calls end, the same call is admitted, and the budget is back to 0."""
    mib = 1024 * 1024
    release_first, release_second, release_last = asyncio.Event(), asyncio.Event(), asyncio.Event()
    options = pb.RemoveBackgroundRequest(options=pb.RemovalOptions())
    async with limited_server(
        max_concurrent_rpcs=8, max_image_bytes=mib, max_buffered_bytes=2 * mib, stream_idle_timeout_s=60.0,
        refusal_drain_s=0.5,
    ) as (channel, server):
        stub = pb_grpc.BackgroundRemovalStub(channel)
        first = asyncio.ensure_future(_status_of(stub.RemoveBackground(
            _sends(options, pb.RemoveBackgroundRequest(chunk=b"\xff" * mib), release=release_first), timeout=60
        )))
        await eventually(lambda: server.servicer.buffered_bytes == mib, message="the first call's MiB held")
        second = asyncio.ensure_future(_status_of(stub.RemoveBackground(
            _sends(options, pb.RemoveBackgroundRequest(chunk=b"\xff" * (mib // 2)), release=release_second),
            timeout=60,
        )))
        await eventually(lambda: server.servicer.buffered_bytes == mib + mib // 2, message="1.5 MiB held")

        over = await _status_of(stub.RemoveBackground(
            _sends(options, pb.RemoveBackgroundRequest(chunk=b"\xff" * (3 * mib // 4)), release=release_last),
            timeout=60,
        ))
        announced = await _status_of(stub.RemoveBackground(
            _sends(pb.RemoveBackgroundRequest(options=pb.RemovalOptions(bg_image_bytes=mib)), release=release_last),
            timeout=60,
        ))
        assert server.servicer.buffered_bytes == mib + mib // 2  # the refused calls' bytes were dropped

        release_first.set()
        release_second.set()
        held = await asyncio.gather(first, second)
        await eventually(lambda: server.servicer.buffered_bytes == 0, message="the budget given back")

        async def admitted() -> AsyncIterator[pb.RemoveBackgroundRequest]:
            yield options
            yield pb.RemoveBackgroundRequest(chunk=b"\xff" * (3 * mib // 4))

        after = await _status_of(stub.RemoveBackground(admitted(), timeout=60))
        release_last.set()
    busy = (grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.SERVICE_BUSY)
    assert (over[0], over[2]) == busy and over[1].startswith("the service holds 1,572,864 bytes"), over
    assert (announced[0], announced[2]) == busy, announced
    # Admitted calls end on their bytes (not an image) or on the missing Triton, never on the budget.
    admitted_codes = {grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE}
    assert all(outcome[0] in admitted_codes for outcome in (*held, after)), (held, after)
    assert server.servicer.buffered_bytes == 0
