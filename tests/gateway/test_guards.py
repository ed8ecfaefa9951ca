"""Guards on what users point the gateway at: URL fetches refused for loopback forms end to end (the
allow-list switched off), and uploads over 25 MB refused while streaming, before they are read whole."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.domain import quota
from gateway.http.appkeys import SESSIONS
from tests.gateway.harness import Gateway, ImageHost, gateway

MIB = 1024 * 1024


@pytest.fixture
def gw(held_gw: Gateway) -> Gateway:
    """Every guard answers before an image reaches the model, so the `held` test model stands in for ISNet."""
    return held_gw


@pytest_asyncio.fixture
async def guarded(held_inference_url: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway with the default policy: no private destinations, only the name 'localhost' allowed (so a
    redirect from an allowed host to a refused address can be tested)."""
    async with gateway(
        inference_url=held_inference_url, data_dir=tmp_path, fetch_allow_networks="", fetch_allow_hosts="localhost"
    ) as running:
        yield running


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "127.1", "2130706433", "0.0.0.0", "[::ffff:7f00:1]"],
)
async def test_loopback_urls_are_refused_and_nothing_is_sent(
    guarded: Gateway, image_host: ImageHost, host: str
) -> None:
    """Each spelling of loopback is 400 invalid_request; the image host sees no request; no quota used."""
    account_id, key = await guarded.account("pro")
    before = len(image_host.requests)
    url = f"http://{host}:{image_host.port}/photos/chelsea.jpg"
    response = await guarded.client.post(
        "/v1/remove-background/url", json={"url": url}, headers={"X-API-Key": key}
    )
    body = await response.json()
    assert response.status == 400, body
    assert body["error"]["code"] == "invalid_request" and body["error"]["message"].startswith("url:")
    assert len(image_host.requests) == before
    assert await quota.usage(guarded.app[SESSIONS], account_id) == 0


async def test_redirect_to_loopback_is_refused(guarded: Gateway, image_host: ImageHost) -> None:
    """An allowed host that redirects to a refused address: the redirect is checked and not followed."""
    _, key = await guarded.account("pro")
    target = image_host.url("/photos/chelsea.jpg")
    url = image_host.url(f"/redirect?to={target}", host="localhost")
    before = list(image_host.requests)
    response = await guarded.client.post(
        "/v1/remove-background/url", json={"url": url}, headers={"X-API-Key": key}
    )
    body = await response.json()
    assert response.status == 400 and body["error"]["code"] == "invalid_request", body
    new = image_host.requests[len(before):]
    assert new == ["/redirect"]  # the photo behind the redirect was never requested


async def test_webhook_to_loopback_is_refused_up_front(guarded: Gateway, image_host: ImageHost) -> None:
    """A webhook_url at a refused address fails the request with 400 before any work."""
    _, key = await guarded.account("pro")
    response = await guarded.client.post(
        "/v1/remove-background/url",
        json={"url": image_host.url("/photos/chelsea.jpg", host="localhost"), "webhook_url": "http://127.0.0.1:9/x"},
        headers={"X-API-Key": key},
    )
    body = await response.json()
    assert response.status == 400 and body["error"]["message"].startswith("webhook_url:"), body


async def _raw_upload(port: int, key: str, total_bytes: int, content_length: bool) -> tuple[int, int]:
    """Streams a multipart upload of total_bytes over a raw socket while reading the answer; returns the
    status and how many body bytes were sent before the gateway answered."""
    boundary = "removaiboundary"
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + total_bytes + len(tail)
    framing = f"Content-Length: {length}" if content_length else "Transfer-Encoding: chunked"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"POST /v1/remove-background/file HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n{framing}\r\n\r\n"
        ).encode()
    )
    sent = 0
    answer = asyncio.ensure_future(reader.readline())

    def frame(data: bytes) -> bytes:
        return data if content_length else f"{len(data):x}\r\n".encode() + data + b"\r\n"

    try:
        writer.write(frame(head))
        chunk = b"\xff\xd8\xff" + bytes(MIB - 3)
        while sent < total_bytes and not answer.done():
            writer.write(frame(chunk))
            sent += len(chunk)
            try:
                await asyncio.wait_for(writer.drain(), 5)
            except (TimeoutError, ConnectionError):
                break
            await asyncio.sleep(0)
        status_line = await asyncio.wait_for(answer, 30)
    finally:
        writer.close()
    return int(status_line.split()[1]), sent


@pytest.mark.parametrize("content_length", [True, False], ids=["declared-length", "chunked"])
async def test_upload_over_25_mb_is_refused_while_streaming(gw: Gateway, content_length: bool) -> None:
    """A 60 MB upload gets 400 without the gateway reading it whole: at once when the length is declared,
    and within a few MB past the limit when it is chunked."""
    _, key = await gw.account("pro")
    assert gw.client.port is not None
    status, sent = await _raw_upload(gw.client.port, key, 60 * MIB, content_length)
    assert status == 400
    if content_length:
        assert sent < 8 * MIB
    else:
        assert sent < 40 * MIB  # 25 MB read, the rest only what socket buffers held
