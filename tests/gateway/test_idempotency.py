"""Idempotency-Key: the same key and request replays the first answer without a second charge to the quota (each
repeat still counts toward the rate limit; an image replay streams from the store, a capped number per account at
once), a different request (any field, file part or the Accept header) is 422, a repeat while the first runs waits
or gets 409, even across two gateways on one PostgreSQL; the key store itself on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from sqlalchemy import func, select, update

from bench.hostile import request_head
from gateway.domain import accounts, idempotency, quota
from gateway.domain.idempotency import Hold, IdempotencyKeys, StoredAnswer
from gateway.http.appkeys import PROCESSOR, REPLAY_SLOTS, SESSIONS, SWEEPER
from gateway.store.database import Sessions
from gateway.store.storage import OutputStorage, StoredEntry, StoredObject
from gateway.store.tables import IdempotencyKey, utc_now
from tests.gateway.harness import (
    Gateway,
    ImageHost,
    assert_error,
    file_form,
    gateway,
    serve,
)
from tests.gateway.held_host import HeldImageHost
from tests.reference import DATA
from tests.waiting import eventually

PHOTO = (DATA / "chelsea.jpg").read_bytes()
WAITING = "the first request with this Idempotency-Key is still running"


async def image_count(gw: Gateway, key: str) -> int:
    listed = await gw.client.get("/v1/images", headers={"X-API-Key": key})
    total: int = (await listed.json())["meta"]["total"]
    return total


# --- The key store, on SQLite and PostgreSQL. ---


def _keys(sessions: Sessions, *, wait_s: float = 0.0) -> IdempotencyKeys:
    return IdempotencyKeys(sessions, ttl=dt.timedelta(hours=24), lease=dt.timedelta(minutes=5), wait_s=wait_s)


async def test_store_holds_answers_and_refuses_other_requests(sessions: Sessions) -> None:
    """First use holds the key; a repeat while held is 409 (no wait), then the stored answer; another
    fingerprint is 422; another account's same key is its own."""
    account, _ = await accounts.create_account(sessions, name="a", plan="pro")
    other, _ = await accounts.create_account(sessions, name="b", plan="pro")
    keys = _keys(sessions)
    held = await keys.begin(account.id, "k-1", "f" * 64)
    assert isinstance(held, Hold) and held.token == 1
    assert await keys.exists(account.id, "k-1") and not await keys.exists(other.id, "k-1")
    with pytest.raises(Exception) as running:
        await keys.begin(account.id, "k-1", "f" * 64)
    assert getattr(running.value, "code", None) == "idempotency_in_progress"
    assert dict(getattr(running.value, "headers", {})) == {"Retry-After": "1"}

    answer = StoredAnswer(200, "application/json", {"success": True, "data": {"id": "img_1"}, "meta": {}})
    await keys.finish(held, answer)
    assert await keys.begin(account.id, "k-1", "f" * 64) == answer
    with pytest.raises(Exception) as reused:
        await keys.begin(account.id, "k-1", "e" * 64)
    assert getattr(reused.value, "code", None) == "idempotency_key_reused"
    assert isinstance(await keys.begin(other.id, "k-1", "e" * 64), Hold)


async def test_store_releases_retryable_answers_and_fences_takeovers(sessions: Sessions) -> None:
    """A 503 answer is not kept (the key runs afresh); a key whose holder died (lease past) is taken over
    with a new token, and the dead holder can neither record nor release it."""
    account, _ = await accounts.create_account(sessions, name="a", plan="pro")
    keys = _keys(sessions)
    first = await keys.begin(account.id, "retry", "f" * 64)
    assert isinstance(first, Hold)
    await keys.finish(first, StoredAnswer(503, "application/json", {"success": False}))
    assert not await keys.exists(account.id, "retry")
    again = await keys.begin(account.id, "retry", "f" * 64)
    assert isinstance(again, Hold) and again.token == 1

    async with sessions.begin() as session:
        await session.execute(
            update(IdempotencyKey).where(IdempotencyKey.key == "retry").values(
                locked_until=utc_now() - dt.timedelta(seconds=1)
            )
        )
    taken = await keys.begin(account.id, "retry", "f" * 64)
    assert isinstance(taken, Hold) and taken.token == 2
    await keys.finish(again, StoredAnswer(200, "application/json", {"stale": True}))
    await keys.release(again)
    fresh = StoredAnswer(201, "application/json", {"fresh": True})
    await keys.finish(taken, fresh)
    assert await keys.begin(account.id, "retry", "f" * 64) == fresh


async def test_expired_keys_are_pruned_and_reusable(sessions: Sessions) -> None:
    """Past expires_at a key is free again (for any request) and prune_expired deletes it."""
    account, _ = await accounts.create_account(sessions, name="a", plan="pro")
    keys = _keys(sessions)
    for name in ("old", "kept"):
        held = await keys.begin(account.id, name, "f" * 64)
        assert isinstance(held, Hold)
        await keys.finish(held, StoredAnswer(200, "application/json", {}))
    async with sessions.begin() as session:
        await session.execute(
            update(IdempotencyKey).where(IdempotencyKey.key == "old").values(
                expires_at=utc_now() - dt.timedelta(seconds=1)
            )
        )
    assert not await keys.exists(account.id, "old")
    assert await idempotency.prune_expired(sessions) == 1
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(IdempotencyKey)) == 1
    assert isinstance(await keys.begin(account.id, "old", "e" * 64), Hold)


# --- End to end: the real gateway, inference service and Triton. ---


async def test_repeat_replays_the_first_answer_without_a_second_charge(gw: Gateway, image_host: ImageHost) -> None:
    """Same key, same URL request: the same id and body, marked replayed; one fetch, one image of quota, and
    (like every request) one hit of the rate limit each; the same parameters in another key order are the same
    request."""
    account_id, key = await gw.account("pro")
    url = image_host.url("/photos/astronaut.jpg")
    headers = {"X-API-Key": key, "Idempotency-Key": str(uuid.uuid4())}
    fetched = len(image_host.requests)
    first = await gw.client.post(
        "/v1/remove-background/url", json={"url": url, "output_size": "small"}, headers=headers
    )
    first_body = await first.json()
    assert first.status == 200, first_body
    assert "Idempotent-Replayed" not in first.headers
    remaining = int(first.headers["X-RateLimit-Remaining"])

    again = await gw.client.post(
        "/v1/remove-background/url", data=f'{{"output_size": "small",  "url": "{url}"}}',
        headers={**headers, "Content-Type": "application/json"},
    )
    again_body = await again.json()
    assert again.status == 200, again_body
    assert again_body == first_body
    assert again.headers["Idempotent-Replayed"] == "true"
    assert int(again.headers["X-RateLimit-Remaining"]) == remaining - 1
    assert abs(int(again.headers["X-RateLimit-Reset"]) - int(first.headers["X-RateLimit-Reset"])) <= 1
    assert len(image_host.requests) == fetched + 1
    assert await quota.usage(gw.app[SESSIONS], account_id) == 1
    assert await image_count(gw, key) == 1

    plain = await gw.client.get("/v1/account", headers={"X-API-Key": key})
    assert int(plain.headers["X-RateLimit-Remaining"]) == remaining - 3  # the replay, the listing, this one


async def test_same_key_for_another_request_is_422_and_keys_are_per_account(
    gw: Gateway, image_host: ImageHost
) -> None:
    """The key reused with other parameters, another path or another answer type is 422
    idempotency_key_reused; another account may use the same key for its own request."""
    _, key = await gw.account("pro")
    _, other_key = await gw.account("pro", name="other")
    url = image_host.url("/photos/coffee.jpg")
    shared = "order-1234"
    first = await gw.client.post(
        "/v1/remove-background/url", json={"url": url}, headers={"X-API-Key": key, "Idempotency-Key": shared}
    )
    assert first.status == 200
    refusals: list[tuple[str, dict[str, str], dict[str, str]]] = [
        ("/v1/remove-background/url", {"url": url, "output_format": "webp"}, {}),
        ("/v1/remove-background", {"url": url}, {}),
        ("/v1/remove-background/url", {"url": url}, {"Accept": "image/png"}),
    ]
    for path, payload, extra in refusals:
        response = await gw.client.post(
            path, headers={"X-API-Key": key, "Idempotency-Key": shared, **extra}, json=payload
        )
        body = await response.json()
        assert_error(response.status, body, 422, "idempotency_key_reused")
        assert "different request" in body["error"]["message"]
        assert response.headers["X-RateLimit-Limit"] == "60"
    assert await image_count(gw, key) == 1

    theirs = await gw.client.post(
        "/v1/remove-background/url", json={"url": url, "output_format": "jpg"},
        headers={"X-API-Key": other_key, "Idempotency-Key": shared},
    )
    theirs_body = await theirs.json()
    assert theirs.status == 200 and "Idempotent-Replayed" not in theirs.headers
    assert theirs_body["data"]["id"] != (await first.json())["data"]["id"]


@pytest.mark.parametrize(
    "value", ["k" * 256, "clé-1", "two words", ""], ids=["256-chars", "non-ascii", "space", "empty"]
)
async def test_malformed_keys_are_400(gw: Gateway, image_host: ImageHost, value: str) -> None:
    """A key over 255 characters, with non-ASCII characters or spaces, or empty, is 400 before any work."""
    _, key = await gw.account("pro")
    response = await gw.client.post(
        "/v1/remove-background/url", json={"url": image_host.url("/photos/coffee.jpg")},
        headers={"X-API-Key": key, "Idempotency-Key": value},
    )
    body = await response.json()
    assert_error(response.status, body, 400, "invalid_request")
    assert "Idempotency-Key" in body["error"]["message"] and "255" in body["error"]["message"]
    assert response.headers["X-RateLimit-Remaining"] == "59"  # counted, like any other bad request
    assert await image_count(gw, key) == 0


async def test_longest_key_and_uploads_replay_by_content(gw: Gateway) -> None:
    """A 255-character key works; an upload repeated with the same bytes replays (same image answer, bytes
    from storage); other bytes under the same key are 422."""
    account_id, key = await gw.account("pro")
    headers = {"X-API-Key": key, "Idempotency-Key": "k" * 255, "Accept": "image/png"}
    first = await gw.client.post("/v1/remove-background/file", data=file_form(PHOTO), headers=headers)
    first_bytes = await first.read()
    assert first.status == 200 and first.headers["Content-Type"] == "image/png", first_bytes[:200]
    again = await gw.client.post("/v1/remove-background/file", data=file_form(PHOTO), headers=headers)
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == first_bytes
    for name in ("X-Image-Id", "X-Width", "X-Height", "Content-Type", "Content-Disposition"):
        assert again.headers[name] == first.headers[name]
    assert Image.open(io.BytesIO(first_bytes)).mode == "RGBA"

    other = await gw.client.post(
        "/v1/remove-background/file", data=file_form((DATA / "coffee.jpg").read_bytes()), headers=headers
    )
    assert_error(other.status, await other.json(), 422, "idempotency_key_reused")
    assert await quota.usage(gw.app[SESSIONS], account_id) == 1


async def test_batch_and_error_answers_replay(gw: Gateway, image_host: ImageHost) -> None:
    """A batch repeated with its key gets the same 202 and batch id, counted once; a 415 answer is replayed
    as it was (the refused image leaves nothing in the library)."""
    account_id, key = await gw.account("pro")
    urls = [image_host.url("/photos/chelsea.jpg"), image_host.url("/photos/coffee.jpg")]
    headers = {"X-API-Key": key, "Idempotency-Key": "batch-1"}
    first = await gw.client.post("/v1/remove-background/batch", json={"urls": urls}, headers=headers)
    again = await gw.client.post("/v1/remove-background/batch", json={"urls": urls}, headers=headers)
    assert first.status == again.status == 202
    assert await again.json() == await first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await quota.usage(gw.app[SESSIONS], account_id) == 2

    headers = {"X-API-Key": key, "Idempotency-Key": "not-an-image"}
    refused = await gw.client.post(
        "/v1/remove-background/url", json={"url": image_host.url("/text")}, headers=headers
    )
    refused_body = await refused.json()
    assert_error(refused.status, refused_body, 415, "unsupported_media_type")
    repeated = await gw.client.post(
        "/v1/remove-background/url", json={"url": image_host.url("/text")}, headers=headers
    )
    assert repeated.status == 415 and await repeated.json() == refused_body
    assert repeated.headers["Idempotent-Replayed"] == "true"
    assert await image_count(gw, key) == 2  # a refused image leaves nothing in the library


async def test_repeat_while_running_gets_409_then_the_answer(inference_url: str, tmp_path: Path) -> None:
    """With a short wait, a repeat while the first request is held in its fetch is 409
    idempotency_in_progress with Retry-After; once the first is done the repeat gets its answer."""
    host = HeldImageHost()
    async with serve(host.app()) as port, gateway(
        inference_url=inference_url, data_dir=tmp_path, idempotency_wait_s=0.2
    ) as gw:
        host.port = port
        _, key = await gw.account("pro")
        headers = {"X-API-Key": key, "Idempotency-Key": "held-1"}
        payload = {"url": host.url("chelsea.jpg", "one")}
        first = asyncio.create_task(gw.client.post("/v1/remove-background/url", json=payload, headers=headers))
        await host.wait_for_requests(1)
        busy = await gw.client.post("/v1/remove-background/url", json=payload, headers=headers)
        assert_error(busy.status, await busy.json(), 409, "idempotency_in_progress")
        assert busy.headers["Retry-After"] == "1"
        host.release.set()
        done = await first
        done_body = await done.json()
        assert done.status == 200, done_body
        later = await gw.client.post("/v1/remove-background/url", json=payload, headers=headers)
        assert later.status == 200 and await later.json() == done_body
        assert host.tags == ["one"]


async def test_two_gateways_racing_one_key_make_one_image(
    inference_url: str, tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two real gateways on one PostgreSQL get the same keyed request at once: one runs it (one fetch, one
    image, one quota unit), the other waits for it and answers the same body, marked replayed."""
    caplog.set_level(logging.INFO, logger="gateway.domain.idempotency")
    host = HeldImageHost()
    common: dict[str, Any] = {
        "inference_url": inference_url, "database_url": postgres_url, "url_signing_secret": uuid.uuid4().hex,
        "data_dir": tmp_path / "shared", "idempotency_wait_s": 240.0,  # a loaded 2-core machine is slow
    }
    async with serve(host.app()) as port, gateway(**common) as first, gateway(**common) as second:
        host.port = port
        account_id, key = await first.account("pro")
        headers = {"X-API-Key": key, "Idempotency-Key": "race"}
        payload = {"url": host.url("coffee.jpg", "race")}
        racing = [
            asyncio.create_task(replica.client.post("/v1/remove-background/url", json=payload, headers=headers))
            for replica in (first, second)
        ]
        await host.wait_for_requests(1)
        await eventually(lambda: WAITING in caplog.text, message="the second gateway waiting on the key")
        assert host.tags == ["race"]
        host.release.set()
        answers = await asyncio.gather(*racing)
        bodies = [await answer.json() for answer in answers]
        assert [answer.status for answer in answers] == [200, 200], bodies
        assert bodies[0] == bodies[1] and bodies[0]["data"]["status"] == "completed"
        assert sorted(answer.headers.get("Idempotent-Replayed", "") for answer in answers) == ["", "true"]
        assert host.tags == ["race"]
        assert await quota.usage(first.app[SESSIONS], account_id) == 1
        assert await image_count(second, key) == 1


async def test_sweeps_prune_expired_keys(gw: Gateway, image_host: ImageHost) -> None:
    """The gateway's sweep deletes keys past their 24 h; the key then runs a new request."""
    _, key = await gw.account("pro")
    headers = {"X-API-Key": key, "Idempotency-Key": "daily"}
    url = image_host.url("/photos/chelsea.jpg")
    first = await gw.client.post("/v1/remove-background/url", json={"url": url}, headers=headers)
    assert first.status == 200
    sessions = gw.app[SESSIONS]
    async with sessions.begin() as session:
        await session.execute(update(IdempotencyKey).values(expires_at=utc_now() - dt.timedelta(seconds=1)))
    assert "idempotency_keys_pruning" in await gw.app[SWEEPER].run_once()
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(IdempotencyKey)) == 0
    again = await gw.client.post("/v1/remove-background/url", json={"url": url}, headers=headers)
    assert again.status == 200 and "Idempotent-Replayed" not in again.headers
    assert (await again.json())["data"]["id"] != (await first.json())["data"]["id"]


# --- Every repeat is a request: the rate limit, streamed replays and their cap, the whole request compared. ---


async def test_every_keyed_request_counts_toward_the_rate_limit(inference_url: str, tmp_path: Path) -> None:
    """A Basic account (10 a minute): the first keyed request, a repeat that waits on it (409 here), replays and a
    422 key reuse each spend one request of the window; once it is used up a replay is 429 like any request, and
    one sent with `Expect: 100-continue` is refused before its body; the image is fetched and billed once."""
    host = HeldImageHost()
    async with serve(host.app()) as port, gateway(
        inference_url=inference_url, data_dir=tmp_path, idempotency_wait_s=0.2
    ) as gw:
        host.port = port
        account_id, key = await gw.account("basic")
        headers = {"X-API-Key": key, "Idempotency-Key": "counted"}
        payload = {"url": host.url("chelsea.jpg", "one")}

        async def post(body: dict[str, str]) -> aiohttp.ClientResponse:
            return await gw.client.post("/v1/remove-background/url", json=body, headers=headers)

        first = asyncio.create_task(post(payload))
        await host.wait_for_requests(1)
        waited = await post(payload)
        assert_error(waited.status, await waited.json(), 409, "idempotency_in_progress")
        assert waited.headers["X-RateLimit-Remaining"] == "8"
        host.release.set()
        done = await first
        done_body = await done.json()
        assert done.status == 200, done_body
        assert done.headers["X-RateLimit-Remaining"] == "9"

        replay = await post(payload)
        assert replay.status == 200 and await replay.json() == done_body
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.headers["X-RateLimit-Remaining"] == "7"
        reused = await post({**payload, "output_format": "webp"})
        assert_error(reused.status, await reused.json(), 422, "idempotency_key_reused")
        assert reused.headers["X-RateLimit-Remaining"] == "6"
        for remaining in range(5, -1, -1):
            replay = await post(payload)
            assert replay.status == 200 and replay.headers["Idempotent-Replayed"] == "true"
            assert replay.headers["X-RateLimit-Remaining"] == str(remaining)

        refused = await post(payload)
        assert_error(refused.status, await refused.json(), 429, "rate_limit_exceeded")
        assert "Idempotent-Replayed" not in refused.headers
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        assert int(refused.headers["Retry-After"]) in range(1, 61)

        # Over the limit, a keyed request that asks `Expect: 100-continue` is not told to send its body.
        gateway_port = gw.client.port
        assert gateway_port is not None
        body = json.dumps(payload).encode()
        head = request_head("/v1/remove-background/url", gateway_port, key, {
            "Content-Type": "application/json", "Content-Length": str(len(body)), "Expect": "100-continue",
            "Idempotency-Key": "counted",
        })
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
        try:
            writer.write(head)
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 30)
        finally:
            writer.close()
        assert status_line.startswith(b"HTTP/1.1 429 "), status_line

        assert host.tags == ["one"]
        assert await quota.usage(gw.app[SESSIONS], account_id) == 1


class HeldOutputs:
    """The gateway's own store, except that an object opened while `holding` gives its first chunk and then waits
    for `release`. Reading an object whole goes through open(), as the S3 store's get() does, so a whole read
    waits too."""

    def __init__(self, inner: OutputStorage) -> None:
        self._inner = inner
        self.holding = False
        self.first_chunk_served = asyncio.Event()
        self.first_chunk_bytes = 0
        self.release = asyncio.Event()

    async def open(self, key: str) -> StoredObject:
        stored = await self._inner.open(key)
        if not self.holding:
            return stored

        async def chunks() -> AsyncGenerator[bytes, None]:
            try:
                async for chunk in stored.chunks:
                    if self.first_chunk_served.is_set():
                        yield chunk
                        continue
                    self.first_chunk_bytes = len(chunk)
                    self.first_chunk_served.set()
                    yield chunk
                    await self.release.wait()
            finally:
                await stored.aclose()

        return StoredObject(stored.key, stored.size, stored.content_type, chunks(), on_close=stored.on_close)

    async def get(self, key: str) -> bytes:
        return await (await self.open(key)).read()

    async def put(self, key: str, content: bytes, content_type: str) -> None:
        await self._inner.put(key, content, content_type)

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        await self._inner.put_file(key, path, content_type)

    async def delete(self, key: str) -> bool:
        return await self._inner.delete(key)

    async def exists(self, key: str) -> bool:
        return await self._inner.exists(key)

    async def scan(self, prefix: str) -> AsyncIterator[StoredEntry]:
        async for entry in self._inner.scan(prefix):
            yield entry


async def test_replays_stream_the_stored_cut_out_and_are_capped_per_account(
    inference_url: str, tmp_path: Path
) -> None:
    """A replayed image answer streams from the store: its head and first bytes reach the client while the store
    has given one chunk; while it streams, another replay of the account is 429 rate_limit_exceeded (cap 1 here)
    with Retry-After and the rate-limit headers; then the whole cut-out arrives, the same bytes as the first
    answer, and the next replay is served again; billed once."""
    async with gateway(inference_url=inference_url, data_dir=tmp_path, max_replays_per_account=1) as gw:
        account_id, key = await gw.account("pro")
        processor = gw.app[PROCESSOR]
        store = HeldOutputs(processor.storage)
        processor.storage = store
        headers = {"X-API-Key": key, "Idempotency-Key": "streamed", "Accept": "image/png"}

        async def post() -> aiohttp.ClientResponse:
            form = file_form((DATA / "coffee.jpg").read_bytes(), output_size="original")
            return await gw.client.post("/v1/remove-background/file", data=form, headers=headers)

        first = await post()
        first_bytes = await first.read()
        assert first.status == 200 and first.headers["Content-Type"] == "image/png", first_bytes[:200]

        store.holding = True
        replay = await asyncio.wait_for(post(), 30)  # the head comes while the store is held
        assert replay.status == 200
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.headers["Content-Type"] == "image/png"
        assert int(replay.headers["Content-Length"]) == len(first_bytes)
        for name in ("X-Image-Id", "X-Width", "X-Height", "Content-Disposition", "Vary"):
            assert replay.headers[name] == first.headers[name]
        assert replay.headers["Cache-Control"] == "no-store"
        assert replay.headers["X-Content-Type-Options"] == "nosniff"
        assert replay.headers["X-Request-Id"]
        assert replay.headers["X-RateLimit-Remaining"] == "58"
        await asyncio.wait_for(store.first_chunk_served.wait(), 30)
        head = await asyncio.wait_for(replay.content.readexactly(store.first_chunk_bytes), 30)
        assert head == first_bytes[: store.first_chunk_bytes] and not store.release.is_set()
        assert store.first_chunk_bytes < len(first_bytes)  # so the rest is provably still in the store

        crowded = await post()
        body = await crowded.json()
        assert_error(crowded.status, body, 429, "rate_limit_exceeded")
        assert "replays" in body["error"]["message"] and "at most 1" in body["error"]["message"]
        assert crowded.headers["Retry-After"] == str(gw.settings.upload_retry_after_s)
        assert crowded.headers["X-RateLimit-Remaining"] == "57"
        assert "Idempotent-Replayed" not in crowded.headers

        store.release.set()
        assert head + await replay.read() == first_bytes
        await eventually(lambda: gw.app[REPLAY_SLOTS].running(account_id) == 0, message="the replay's slot freed")
        again = await post()
        assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
        assert await again.read() == first_bytes
        assert await quota.usage(gw.app[SESSIONS], account_id) == 1


async def test_the_fingerprint_covers_every_part_of_the_request(gw: Gateway) -> None:
    """The same key with any difference from the first request is 422 idempotency_key_reused, before any work:
    another bg_image file, none, another Accept header (even one that negotiates the same JSON answer), the
    default model named, an added field; for a batch another bg_image too. Only the identical request replays."""
    account_id, key = await gw.account("pro")
    listed = await gw.client.get("/v1/models", headers={"X-API-Key": key})
    default_model = (await listed.json())["data"]["models"][0]["name"]
    background = (DATA / "coffee.jpg").read_bytes()
    other_background = (DATA / "rocket.jpg").read_bytes()
    headers = {"X-API-Key": key, "Idempotency-Key": "whole-request", "Accept": "application/json"}

    def form(bg_image: bytes | None, *, field: str = "file", **fields: str) -> aiohttp.FormData:
        made = aiohttp.FormData()
        for name, value in fields.items():
            made.add_field(name, value)
        made.add_field(field, PHOTO, filename="photo.jpg", content_type="image/jpeg")
        if bg_image is not None:
            made.add_field("bg_image", bg_image, filename="background.jpg", content_type="image/jpeg")
        return made

    path = "/v1/remove-background/file"
    first = await gw.client.post(path, data=form(background), headers=headers)
    first_body = await first.json()
    assert first.status == 200, first_body
    different: dict[str, tuple[aiohttp.FormData, dict[str, str]]] = {
        "another bg_image": (form(other_background), headers),
        "no bg_image": (form(None), headers),
        "another Accept, the same answer": (form(background), {**headers, "Accept": "*/*"}),
        "the default model named": (form(background, model=default_model), headers),
        "a field added": (form(background, output_size="original"), headers),
    }
    for what, (data, sent_headers) in different.items():
        response = await gw.client.post(path, data=data, headers=sent_headers)
        body = await response.json()
        assert response.status == 422, (what, body)
        assert_error(response.status, body, 422, "idempotency_key_reused")
        assert "Idempotent-Replayed" not in response.headers, what

    same = await gw.client.post(path, data=form(background), headers=headers)
    assert same.status == 200 and same.headers["Idempotent-Replayed"] == "true"
    assert await same.json() == first_body

    batch_headers = {**headers, "Idempotency-Key": "whole-batch"}
    batch = "/v1/remove-background/batch"
    queued = await gw.client.post(batch, data=form(background, field="files"), headers=batch_headers)
    queued_body = await queued.json()
    assert queued.status == 202, queued_body
    other = await gw.client.post(batch, data=form(other_background, field="files"), headers=batch_headers)
    assert_error(other.status, await other.json(), 422, "idempotency_key_reused")
    repeated = await gw.client.post(batch, data=form(background, field="files"), headers=batch_headers)
    assert repeated.status == 202 and await repeated.json() == queued_body
    assert repeated.headers["Idempotent-Replayed"] == "true"
    assert await quota.usage(gw.app[SESSIONS], account_id) == 2
    assert await image_count(gw, key) == 2
