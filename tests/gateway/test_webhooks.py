"""Webhook signing and delivery tests against a receiver on 127.0.0.1 (port 0), with the outbox on SQLite and
PostgreSQL."""

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.jobs.webhook_outbox import WebhookSender
from gateway.jobs.webhook_signing import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    signature_headers,
    verify,
)
from gateway.net.netguard import AddressPolicy
from gateway.store.database import Sessions
from gateway.store.tables import Account, WebhookDelivery
from tests.waiting import eventually

SECRET = "whsec_test_0123456789"
LOOPBACK_POLICY = AddressPolicy.from_config(allow_networks=["127.0.0.0/8"])
PAYLOAD = {"event": "image.completed", "data": {"id": "img_12345abcde", "status": "completed"}}


@dataclass
class Attempt:
    """One request the receiver saw."""

    path: str
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on loopback whose routes fail in scripted ways."""

    port: int
    attempts: list[Attempt] = field(default_factory=list)

    def url(self, path: str) -> str:
        """Absolute URL of `path` on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Attempt]:
        """The attempts made on `path`."""
        return [attempt for attempt in self.attempts if attempt.path == path]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """Routes: /ok 200, /flaky 503 twice then 200, /down always 500, /gone 410, /busy 429 once then 200,
    /hangup drops the connection, /moved 307 to /ok."""
    ref: list[Receiver] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        current = ref[0]
        current.attempts.append(Attempt(request.path, request.headers, await request.read()))
        seen = len(current.at(request.path))
        match request.path:
            case "/ok":
                return web.Response(text="thanks")
            case "/flaky":
                return web.Response(status=503 if seen <= 2 else 200)
            case "/down":
                return web.Response(status=500)
            case "/gone":
                return web.Response(status=410)
            case "/busy":
                return web.Response(status=429 if seen == 1 else 200)
            case "/hangup":
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            case "/moved":
                raise web.HTTPTemporaryRedirect("/ok")
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    ref.append(Receiver(port=int(runner.addresses[0][1])))
    yield ref[0]
    await runner.cleanup()


async def _join(sender: WebhookSender) -> None:
    await asyncio.wait_for(sender.join(), timeout=10)


def test_sign_is_hmac_sha256_over_timestamp_dot_body() -> None:
    """sign() equals hex HMAC-SHA256 of b"<timestamp>." + body, and headers carry it as v1=<hex>."""
    body = b'{"a":1}'
    expected = hmac.new(SECRET.encode(), b"1714000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1714000000, body) == expected
    assert signature_headers(SECRET, body, timestamp=1714000000) == {
        TIMESTAMP_HEADER: "1714000000",
        SIGNATURE_HEADER: f"v1={expected}",
    }


def test_verify_accepts_only_the_right_secret_body_and_fresh_timestamp() -> None:
    """verify() rejects a wrong secret, a tampered body, a stale or future timestamp, and junk headers."""
    body = b'{"event":"image.completed"}'
    header = signature_headers(SECRET, body, timestamp=1_000_000)[SIGNATURE_HEADER]
    assert verify(SECRET, 1_000_000, body, header, now=1_000_100)
    assert verify(SECRET, "1000000", body, f"v1=deadbeef, {header}", now=1_000_000)
    assert not verify("other-secret", 1_000_000, body, header, now=1_000_000)
    assert not verify(SECRET, 1_000_000, body + b" ", header, now=1_000_000)
    assert not verify(SECRET, 1_000_001, body, header, now=1_000_001)
    assert not verify(SECRET, 1_000_000, body, header, now=1_000_301)
    assert not verify(SECRET, 1_000_000, body, header, now=999_699)
    assert not verify(SECRET, "not-a-number", body, header, now=1_000_000)
    assert not verify(SECRET, 1_000_000, body, header.removeprefix("v1="), now=1_000_000)
    assert not verify(SECRET, 1_000_000, body, "v0=" + header.removeprefix("v1="), now=1_000_000)


async def test_delivery_is_signed_json_that_verifies(
    sender: WebhookSender, receiver: Receiver, account: Account
) -> None:
    """enqueue() returns once the row is recorded, before any attempt; the receiver then gets one POST of the
    JSON payload, under the returned delivery id, that verify() accepts with the account's secret."""
    sent_after = int(time.time())
    delivery_id = await sender.enqueue(account.id, receiver.url("/ok"), PAYLOAD)
    assert delivery_id is not None and delivery_id.startswith("whd_")
    assert receiver.attempts == []
    await _join(sender)
    sent_before = int(time.time()) + 1

    [attempt] = receiver.attempts
    assert json.loads(attempt.body) == PAYLOAD
    assert attempt.headers["Content-Type"] == "application/json"
    assert attempt.headers[DELIVERY_HEADER] == delivery_id
    timestamp = attempt.headers[TIMESTAMP_HEADER]
    assert sent_after <= int(timestamp) <= sent_before  # seconds since the epoch, taken while sending
    assert verify(account.webhook_secret, timestamp, attempt.body, attempt.headers[SIGNATURE_HEADER])
    assert not verify("wrong", timestamp, attempt.body, attempt.headers[SIGNATURE_HEADER])


async def test_receiver_failing_twice_then_succeeding_gets_three_attempts(
    sender: WebhookSender, receiver: Receiver, account: Account
) -> None:
    """Two 503s are retried; the third attempt succeeds and nothing more is sent; the delivery id is stable."""
    await sender.enqueue(account.id, receiver.url("/flaky"), PAYLOAD)
    await _join(sender)
    attempts = receiver.at("/flaky")
    assert len(attempts) == 3
    assert len({attempt.headers[DELIVERY_HEADER] for attempt in attempts}) == 1
    secret = account.webhook_secret
    assert all(verify(secret, a.headers[TIMESTAMP_HEADER], a.body, a.headers[SIGNATURE_HEADER]) for a in attempts)


async def test_permanently_failing_receiver_gets_exactly_max_attempts(
    sender: WebhookSender, receiver: Receiver, account: Account, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver that always answers 500 gets exactly max_attempts POSTs, then the sender gives up and logs."""
    await sender.enqueue(account.id, receiver.url("/down"), PAYLOAD)
    assert receiver.attempts == []
    await _join(sender)
    assert len(receiver.at("/down")) == 4
    assert sender.pending == 0
    assert any("given up after 4 attempts" in record.getMessage() for record in caplog.records)


async def test_dropped_connections_are_retried(sender: WebhookSender, receiver: Receiver, account: Account) -> None:
    """A receiver that hangs up without answering counts as a network error and is retried to the limit."""
    await sender.enqueue(account.id, receiver.url("/hangup"), PAYLOAD)
    await _join(sender)
    assert len(receiver.at("/hangup")) == 4


async def test_429_is_retried(sender: WebhookSender, receiver: Receiver, account: Account) -> None:
    """429 Too Many Requests is retried like a 5xx."""
    await sender.enqueue(account.id, receiver.url("/busy"), PAYLOAD)
    await _join(sender)
    assert len(receiver.at("/busy")) == 2


async def test_client_errors_other_than_429_are_not_retried(
    sender: WebhookSender, receiver: Receiver, account: Account
) -> None:
    """A 410 (or 404) is the receiver's final answer: exactly one attempt."""
    await sender.enqueue(account.id, receiver.url("/gone"), PAYLOAD)
    await sender.enqueue(account.id, receiver.url("/nowhere"), PAYLOAD)
    await _join(sender)
    assert len(receiver.at("/gone")) == 1
    assert len(receiver.at("/nowhere")) == 1


async def test_redirects_are_not_followed(sender: WebhookSender, receiver: Receiver, account: Account) -> None:
    """A 307 from the receiver is not followed, so a signed POST is never bounced to another destination."""
    await sender.enqueue(account.id, receiver.url("/moved"), PAYLOAD)
    await _join(sender)
    assert [attempt.path for attempt in receiver.attempts] == ["/moved"]


async def test_refused_destinations_are_never_contacted(
    sessions: Sessions, receiver: Receiver, account: Account
) -> None:
    """With the default public-only policy, loopback receivers (literal or by name) get no request."""
    async with WebhookSender(AddressPolicy(), sessions, max_attempts=3, base_delay_s=0.01) as public_only:
        await public_only.enqueue(account.id, receiver.url("/ok"), PAYLOAD)
        await public_only.enqueue(account.id, f"http://localhost:{receiver.port}/ok", PAYLOAD)
        await public_only.enqueue(account.id, f"http://2130706433:{receiver.port}/ok", PAYLOAD)
        await public_only.enqueue(account.id, "file:///etc/passwd", PAYLOAD)
        await _join(public_only)
    assert receiver.attempts == []


async def test_unserialisable_payload_and_unknown_account_do_not_raise(
    sessions: Sessions, receiver: Receiver, account: Account
) -> None:
    """enqueue() swallows a non-JSON payload and an account that does not exist: nothing is recorded or sent."""
    async with WebhookSender(LOOPBACK_POLICY, sessions) as running:
        assert await running.enqueue(account.id, receiver.url("/ok"), {"when": object()}) is None
        assert await running.enqueue("acct_missing", receiver.url("/ok"), PAYLOAD) is None
        assert running.pending == 0
    assert receiver.attempts == []


async def test_close_cancels_deliveries_waiting_to_retry(
    sessions: Sessions, receiver: Receiver, account: Account
) -> None:
    """close() does not wait for deliveries that are only backing off; they stay pending in the outbox."""
    # A backoff far longer than the wait below: a close() that waited for the retry would time out.
    sender = WebhookSender(LOOPBACK_POLICY, sessions, max_attempts=5, base_delay_s=3600, max_delay_s=3600)
    await sender.start()
    delivery_id = await sender.enqueue(account.id, receiver.url("/down"), PAYLOAD)
    assert delivery_id is not None

    async def first_attempt_recorded() -> bool:
        async with sessions() as session:
            row = await session.get(WebhookDelivery, delivery_id)
        return row is not None and row.attempts == 1

    await eventually(first_attempt_recorded, message="the first attempt recorded")
    await asyncio.wait_for(sender.close(grace_s=0.1), timeout=60)
    assert sender.pending == 0
    assert len(receiver.at("/down")) == 1
    async with sessions() as session:
        row = await session.get(WebhookDelivery, delivery_id)
    assert row is not None and (row.status, row.attempts) == ("pending", 1)
