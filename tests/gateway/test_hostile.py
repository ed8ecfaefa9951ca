"""Hostile clients through real sockets on 127.0.0.1: split, endless, compressed, stalled and crowding uploads
get a clean 4xx (or a closed connection), nothing is left in the spool, and a normal upload still succeeds."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bench.hostile import (
    LoadShape,
    Outcome,
    account_plans,
    exchange,
    gzip_body,
    request_head,
    run_load,
    start_gateway,
    summary,
)
from gateway.domain import batches
from gateway.domain.images import ImageSource
from gateway.http.appkeys import SESSIONS, UPLOAD_SLOTS
from gateway.store.storage import LocalDiskStorage
from tests.gateway.harness import Gateway, gateway
from tests.reference import DATA
from tests.waiting import eventually

MB = 1_000_000
GIB = 1024**3
PHOTO = (DATA / "chelsea.jpg").read_bytes()
BOUNDARY = "hostileboundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
# Nothing listens there: refusal paths must answer before anything would reach inference.
UNREACHABLE_INFERENCE = "127.0.0.1:9"
ANSWER_TIMEOUT_S = 60.0


@pytest_asyncio.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Starts gateways with an unreachable inference service and the given settings; stops them afterwards."""
    async with AsyncExitStack() as stack:
        async def start(**overrides: Any) -> Gateway:
            values: dict[str, Any] = {"inference_url": UNREACHABLE_INFERENCE, "data_dir": tmp_path / "data"}
            return await stack.enter_async_context(gateway(**{**values, **overrides}))

        yield start


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    kind = "Content-Type: image/jpeg\r\n" if filename else ""
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode() + value + b"\r\n"


CLOSE = f"--{BOUNDARY}--\r\n".encode()


def assert_envelope(outcome: Outcome, status: int, code: str) -> dict[str, Any]:
    assert outcome.status == status, outcome
    assert outcome.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = outcome.json()
    assert body["success"] is False
    assert body["error"]["code"] == code and body["error"]["status"] == status
    assert body["error"]["message"]
    return body


def misnamed_form() -> aiohttp.FormData:
    """A multipart form whose file is named as for a batch: admitted uploads get 400 for it."""
    form = aiohttp.FormData()
    form.add_field("files", PHOTO, filename="chelsea.jpg", content_type="image/jpeg")
    return form


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """One answer off a raw socket: (status line, headers with lower-case names, body of its Content-Length)."""
    status_line = await asyncio.wait_for(reader.readline(), ANSWER_TIMEOUT_S)
    headers: dict[str, str] = {}
    while (line := await asyncio.wait_for(reader.readline(), ANSWER_TIMEOUT_S)) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    return status_line, headers, await asyncio.wait_for(reader.readexactly(length), ANSWER_TIMEOUT_S)


def spooled(gw: Gateway) -> list[Path]:
    root = gw.settings.spool_dir
    return list(root.iterdir()) if root.exists() else []


def spooled_bytes(gw: Gateway) -> list[int]:
    """The sizes of the files spooled so far, all uploads together."""
    return [file.stat().st_size for spool in spooled(gw) for file in spool.iterdir()]


async def test_text_field_split_across_tcp_writes_is_accepted(make_gateway: Callable[..., Any]) -> None:
    """A text field whose value arrives in two TCP writes (the second only once the gateway has consumed the
    first) is read whole: the batch is accepted (202) with that output format, not answered 500 as before."""
    gw = await make_gateway()
    account_id, key = await gw.account("pro")
    port = gw.client.port
    assert port is not None
    body = part("files", PHOTO, "chelsea.jpg") + part("output_format", b"webp") + CLOSE
    # Three writes, each sent once the gateway has consumed the one before, so that the field's first read holds
    # "we" alone: the photo but its last KB; the rest of it, the field's head and "we"; then "bp" and the end.
    in_photo = body.index(PHOTO) + len(PHOTO) - 1024
    split = body.index(b"webp") + 2
    head = request_head(
        "/v1/remove-background/batch", port, key, {"Content-Type": MULTIPART, "Content-Length": str(len(body))}
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body[:in_photo])
        await writer.drain()
        # The spool file is opened just before the photo's first read, in the same step of the handler.
        await eventually(lambda: spooled_bytes(gw) == [0])
        writer.write(body[in_photo:split])
        await writer.drain()
        # The photo whole on disk: the file is closed, and in that same step the handler has read the field's
        # head and is waiting for more than "we".
        await eventually(lambda: spooled_bytes(gw) == [len(PHOTO)])
        writer.write(body[split:])
        await writer.drain()
        status_line, headers, content = await read_answer(reader)
        answer = json.loads(content)
    finally:
        writer.close()
    assert status_line.split()[1] == b"202", answer
    assert headers["content-type"].startswith("application/json")
    assert answer["success"] is True and answer["data"]["total_images"] == 1
    batch = await batches.get_batch(gw.app[SESSIONS], account_id, answer["data"]["batch_id"])
    assert batch is not None and [image.output_format for image in batch.images] == ["webp"]
    assert spooled(gw) == []


async def test_unknown_field_is_refused_naming_the_accepted_ones(make_gateway: Callable[..., Any]) -> None:
    """A form field the endpoint does not know is a 400 that lists the accepted names; nothing is spooled."""
    gw = await make_gateway()
    _, key = await gw.account("pro")
    form = aiohttp.FormData()
    form.add_field("colour", "#FF0000")
    form.add_field("file", PHOTO, filename="chelsea.jpg", content_type="image/jpeg")
    response = await gw.client.post("/v1/remove-background/file", data=form, headers={"X-API-Key": key})
    body = await response.json()
    assert response.status == 400 and body["error"]["code"] == "invalid_request", body
    assert body["error"]["message"] == (
        "unknown field 'colour'; this endpoint accepts add_shadow, bg_color, bg_image, bg_image_url, crop, "
        "crop_margin, decontaminate, file, max_megapixels, model, output_format, output_size, output_type, position, "
        "roi, scale, webhook_url"
    )
    assert response.headers["X-RateLimit-Limit"] == "60"
    assert spooled(gw) == []


async def test_too_many_parts_are_refused(make_gateway: Callable[..., Any]) -> None:
    """Past the endpoint's known fields and its file, a further part is a 400, whatever it is named."""
    gw = await make_gateway()
    _, key = await gw.account("pro")
    port = gw.client.port
    assert port is not None
    fields = [
        ("output_format", b"png"), ("output_size", b"small"), ("bg_color", b"#000000"), ("webhook_url", b""),
        ("output_type", b"cutout"), ("crop", b"false"), ("crop_margin", b""), ("model", b""), ("bg_image_url", b""),
        ("roi", b""), ("scale", b""), ("position", b""), ("add_shadow", b"false"), ("max_megapixels", b""),
        ("decontaminate", b"true"),
    ]
    body = b"".join(part(name, value) for name, value in fields) + part("file", b"\xff\xd8\xff", "a.jpg")
    body += part("bg_image", b"\xff\xd8\xff", "b.jpg") + part("output_format", b"png") + CLOSE
    head = request_head(
        "/v1/remove-background/file", port, key, {"Content-Type": MULTIPART, "Content-Length": str(len(body))}
    )
    outcome = await exchange("parts", port, head, [body], timeout_s=ANSWER_TIMEOUT_S)
    answer = assert_envelope(outcome, 400, "invalid_request")
    assert answer["error"]["message"] == "too many parts in the form: at most 17"


@pytest.mark.parametrize("path", ["/v1/remove-background/file", "/v1/remove-background/batch"])
async def test_gzip_body_inflating_past_25_mb_is_refused(make_gateway: Callable[..., Any], path: str) -> None:
    """A gzip multipart body of a few KB that inflates to 2 x 20 MB of zeros is refused once 26 MB have
    inflated, on the batch endpoint too (a compressed body may hold one file's worth)."""
    gw = await make_gateway()
    _, key = await gw.account("pro")
    port = gw.client.port
    assert port is not None
    bomb = gzip_body("files", 2, 20 * MB) if path.endswith("batch") else gzip_body("file", 1, 40 * MB)
    assert len(bomb) < 100_000
    headers = {"Content-Type": MULTIPART, "Content-Encoding": "gzip", "Content-Length": str(len(bomb))}
    outcome = await exchange("gzip", port, request_head(path, port, key, headers), [bomb], timeout_s=ANSWER_TIMEOUT_S)
    answer = assert_envelope(outcome, 400, "invalid_request")
    assert answer["error"]["message"] == "the request body is larger than 26 MB once decompressed"
    assert spooled(gw) == []


@pytest.mark.parametrize("framing", ["gzip", "chunked"])
async def test_json_body_over_its_limit_is_refused(make_gateway: Callable[..., Any], framing: str) -> None:
    """A JSON body past max_json_body_bytes is refused whether its size is hidden by gzip or by chunking."""
    gw = await make_gateway()
    _, key = await gw.account("pro")
    port = gw.client.port
    assert port is not None
    document = json.dumps({"url": "http://example.com/" + "a" * 2 * MB}).encode()
    headers = {"Content-Type": "application/json"}
    if framing == "gzip":
        body = [gzip.compress(document)]
        headers |= {"Content-Encoding": "gzip", "Content-Length": str(len(body[0]))}
    else:
        body = [f"{len(document):x}\r\n".encode() + document + b"\r\n0\r\n\r\n"]
        headers["Transfer-Encoding"] = "chunked"
    head = request_head("/v1/remove-background/url", port, key, headers)
    outcome = await exchange("json", port, head, body, timeout_s=ANSWER_TIMEOUT_S)
    answer = assert_envelope(outcome, 400, "invalid_request")
    assert answer["error"]["message"].startswith("the request body is larger than 1 MB")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"upload_idle_timeout_s": 0.5}, "the request body stalled: nothing arrived for 0.5 s"),
        ({"upload_deadline_s": 0.5}, "the request body was not complete within 0.5 s"),
    ],
    ids=["idle", "deadline"],
)
async def test_stalled_upload_gets_408_and_leaves_no_spool(
    make_gateway: Callable[..., Any], settings: dict[str, float], message: str
) -> None:
    """An upload that stops sending mid-file gets 408 in the envelope, and its spooled part is removed."""
    gw = await make_gateway(**settings)
    _, key = await gw.account("pro")
    port = gw.client.port
    assert port is not None
    started = f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n".encode()
    head = request_head(
        "/v1/remove-background/file", port, key, {"Content-Type": MULTIPART, "Content-Length": str(10 * MB)}
    )
    outcome = await exchange("stalled", port, head, [started + bytes(64 * 1024)], timeout_s=ANSWER_TIMEOUT_S)
    answer = assert_envelope(outcome, 408, "invalid_request")
    assert answer["error"]["message"] == message
    assert spooled(gw) == []


async def test_concurrent_uploads_over_the_account_cap_get_429(make_gateway: Callable[..., Any]) -> None:
    """With one upload of an account in flight and a cap of one, its next upload is 429 with Retry-After;
    another account is not affected; closing the first upload frees the slot and its spool."""
    gw = await make_gateway(max_concurrent_uploads_per_account=1)
    account_id, key = await gw.account("pro")
    _, other_key = await gw.account("pro")
    port = gw.client.port
    assert port is not None
    head = request_head(
        "/v1/remove-background/file", port, key, {"Content-Type": MULTIPART, "Content-Length": str(10 * MB)}
    )
    first = asyncio.ensure_future(
        exchange("first", port, head, [part("file", bytes(4096), "a.jpg")[:-2]], timeout_s=ANSWER_TIMEOUT_S)
    )
    try:
        await eventually(lambda: gw.app[UPLOAD_SLOTS].running(account_id) == 1)
        response = await gw.client.post("/v1/remove-background/file", data=misnamed_form(), headers={"X-API-Key": key})
        body = await response.json()
        assert response.status == 429, body
        assert response.headers["Retry-After"] == "10"
        assert response.headers["X-RateLimit-Limit"] == "60"
        assert body == {
            "success": False,
            "error": {
                "code": "rate_limit_exceeded", "status": 429,
                "message": "too many uploads at once for this account (at most 1); wait for one to finish",
            },
        }
        other = await gw.client.post(
            "/v1/remove-background/file", data=misnamed_form(), headers={"X-API-Key": other_key}
        )
        other_body = await other.json()
        assert other.status == 400, other_body
        assert other_body["error"]["message"].startswith("unknown field 'files'")
        assert len(spooled(gw)) == 1
    finally:
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
    await eventually(lambda: gw.app[UPLOAD_SLOTS].running(account_id) == 0)
    assert spooled(gw) == []


async def test_queued_batch_images_over_the_cap_get_429_before_the_body_is_read(
    make_gateway: Callable[..., Any],
) -> None:
    """An account whose queued batch images reach the cap gets 429 for a multipart batch without sending its
    body (the answer comes although the declared 25 MB never arrive), and for a URL batch."""
    gw = await make_gateway(max_queued_batch_images_per_account=2)
    account_id, key = await gw.account("pro")
    await batches.create_batch(
        gw.app[SESSIONS], account_id, [ImageSource(original_url="http://example.com/a.jpg")] * 2,
        output_format="png", output_size="original",
    )
    port = gw.client.port
    assert port is not None
    head = request_head(
        "/v1/remove-background/batch", port, key, {"Content-Type": MULTIPART, "Content-Length": str(25 * MB)}
    )
    outcome = await exchange("queued", port, head, [], timeout_s=ANSWER_TIMEOUT_S)
    answer = assert_envelope(outcome, 429, "rate_limit_exceeded")
    assert outcome.headers["Retry-After"] == "10"
    assert answer["error"]["message"] == "2 batch images of this account are still processing; at most 2 may be queued"
    response = await gw.client.post(
        "/v1/remove-background/batch", json={"urls": ["http://example.com/b.jpg"]}, headers={"X-API-Key": key}
    )
    body = await response.json()
    assert response.status == 429 and body["error"]["code"] == "rate_limit_exceeded", body
    assert response.headers["Retry-After"] == "10"


async def _head_only_exchange(port: int, head: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Sends a request head alone and reads the first answer: (status line, headers, body), the body only for a
    final answer. The declared body is never sent, so only an answer that needs none can come."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await read_answer(reader)
    finally:
        writer.close()


@pytest.mark.parametrize("key", ["", "rk_live_not-a-key"])
async def test_expect_continue_without_a_valid_key_is_refused_before_the_body(
    make_gateway: Callable[..., Any], key: str,
) -> None:
    """`Expect: 100-continue` with no key or an unknown one: no "100 Continue", but the 401 envelope at once, so
    the client never uploads the 5 MB it declared; nothing is spooled."""
    gw = await make_gateway()
    port = gw.client.port
    assert port is not None
    head = request_head(
        "/v1/remove-background/file", port, key,
        {"Content-Type": MULTIPART, "Content-Length": str(5 * MB), "Expect": "100-continue"},
    )
    status_line, headers, body = await _head_only_exchange(port, head)
    assert status_line.startswith(b"HTTP/1.1 401 "), status_line
    assert headers["content-type"].startswith("application/json")
    assert headers["x-request-id"]
    answer = json.loads(body)
    assert answer["success"] is False and answer["error"]["code"] == "invalid_api_key"
    assert spooled(gw) == []


async def test_expect_continue_with_a_valid_key_gets_100_then_the_body_is_read(
    make_gateway: Callable[..., Any],
) -> None:
    """With a valid key the gateway says "100 Continue"; the body sent after it is read as usual (here an unknown
    field, refused 400 naming the accepted ones, which takes reading the form)."""
    gw = await make_gateway()
    _, key = await gw.account("pro")
    port = gw.client.port
    assert port is not None
    body = part("colour", b"red") + CLOSE
    head = request_head(
        "/v1/remove-background/file", port, key,
        {"Content-Type": MULTIPART, "Content-Length": str(len(body)), "Expect": "100-continue"},
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_TIMEOUT_S)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        await writer.drain()
        status_line, headers, content = await read_answer(reader)
        answer = json.loads(content)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 400 "), (status_line, answer)
    assert answer["error"]["code"] == "invalid_request" and "colour" in answer["error"]["message"]
    assert headers["x-ratelimit-limit"] == "60"


async def test_expect_continue_over_the_rate_limit_is_refused_before_the_body(
    make_gateway: Callable[..., Any],
) -> None:
    """A key whose per-minute limit is used up gets its 429 (with Retry-After) instead of "100 Continue"."""
    gw = await make_gateway()
    _, key = await gw.account("basic")
    for _ in range(10):
        response = await gw.client.get("/v1/account", headers={"X-API-Key": key})
        assert response.status == 200
    port = gw.client.port
    assert port is not None
    head = request_head(
        "/v1/remove-background/file", port, key,
        {"Content-Type": MULTIPART, "Content-Length": str(5 * MB), "Expect": "100-continue"},
    )
    status_line, headers, body = await _head_only_exchange(port, head)
    assert status_line.startswith(b"HTTP/1.1 429 "), status_line
    assert int(headers["retry-after"]) in range(1, 61)
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
    assert spooled(gw) == []


async def test_an_unknown_expectation_is_ignored(make_gateway: Callable[..., Any]) -> None:
    """An Expect value other than 100-continue gets the usual answer in the envelope, not aiohttp's plain 417."""
    gw = await make_gateway()
    _, key = await gw.account("pro")
    response = await gw.client.get("/v1/account", headers={"X-API-Key": key, "Expect": "something-else"})
    body = await response.json()
    assert response.status == 200 and body["success"] is True, body
    response = await gw.client.get("/v1/account", headers={"Expect": "something-else"})
    body = await response.json()
    assert response.status == 401 and body["error"]["code"] == "invalid_api_key", body


async def test_put_file_stores_a_spooled_file_and_leaves_it(tmp_path: Path) -> None:
    """LocalDiskStorage.put_file stores the file's bytes under the key (no temporary left) and keeps the file."""
    storage = LocalDiskStorage(tmp_path / "files")
    source = tmp_path / "spooled"
    source.write_bytes(b"\xff\xd8" + bytes(3 * 1024 * 1024))
    await storage.put_file("sources/src_x", source, "application/octet-stream")
    assert await storage.get("sources/src_x") == source.read_bytes()
    assert [path.name for path in (tmp_path / "files" / "sources").iterdir()] == ["src_x"]
    assert source.exists()


async def test_hostile_load_is_refused_and_the_gateway_stays_bounded(inference_url: str, tmp_path: Path) -> None:
    """bench/hostile.py's load at modest counts against a gateway subprocess: 50 endless chunked uploads and gzip bombs
    get 400 (or a closed connection), 3 Pro batches of 25 MB files get 202 or 429, 1,000 bad keys get 401
    without sending their bodies, a normal upload made meanwhile succeeds, and peak RSS stays under 1 GB above idle."""
    shape = LoadShape(
        endless_uploads=50, gzip_bodies=4, batch_accounts=3, batch_files=2,
        batch_file_bytes=25 * MB, bad_keys=1000, timeout_s=120.0,
    )
    async with start_gateway(tmp_path / "gateway", inference_url, account_plans(shape)) as running:
        report = await run_load(running, shape)
    figures = summary(report)
    assert not [outcome for outcome in report.outcomes if outcome.timed_out], figures
    for outcome in report.of("endless"):
        if outcome.status is not None:
            assert_envelope(outcome, 400, "invalid_request")
    assert len(report.of("endless")) == 50
    for outcome in report.of("gzip"):
        assert_envelope(outcome, 400, "invalid_request")
    for outcome in report.of("batch"):
        assert outcome.status in (202, 429), outcome
        assert outcome.json()["success"] is (outcome.status == 202)
    bad_keys = report.of("bad_key")
    assert len(bad_keys) == 1000
    for outcome in bad_keys:
        assert_envelope(outcome, 401, "invalid_api_key")
    assert report.normal.status == 200, report.normal
    assert report.normal.json()["data"]["status"] == "completed"
    assert report.peak_above_idle_bytes < GIB, figures
