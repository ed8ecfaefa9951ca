"""End-to-end URL fetch tests against origin servers on loopback only; no traffic leaves the machine."""

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypedDict

import pytest
from aiohttp import web

from gateway.net.netguard import AddressPolicy
from gateway.net.urlfetch import (
    FetchRefused,
    FetchTimeout,
    ImageTooLarge,
    InvalidImageURL,
    TooManyRedirects,
    UpstreamError,
    UpstreamUnreachable,
    check_url,
    fetch_image,
)

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
STREAM_TOTAL = 256 * 1024 * 1024

DEFAULT_POLICY = AddressPolicy()
LOOPBACK_POLICY = AddressPolicy.from_config(allow_networks=["127.0.0.0/8", "::1/128"])
LOCALHOST_NAME_ONLY = AddressPolicy.from_config(allow_hosts=["localhost"])



class Timeouts(TypedDict):
    """The deadlines most tests pass to fetch_image."""

    connect_timeout: float
    total_timeout: float


TIMEOUTS = Timeouts(connect_timeout=2.0, total_timeout=10.0)


@dataclass
class Origin:
    """A loopback origin server that records every request path it receives."""

    port: int
    paths: list[str] = field(default_factory=list)
    stream_sent: int = 0
    stream_done: asyncio.Event = field(default_factory=asyncio.Event)


def _origin_app(origin_ref: list[Origin]) -> web.Application:
    async def record(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> (
        web.StreamResponse
    ):
        origin_ref[0].paths.append(request.path)
        return await handler(request)

    async def image(request: web.Request) -> web.Response:
        # A lying Content-Type: the fetcher must return the bytes untouched for the caller to sniff.
        return web.Response(body=PNG_BYTES, content_type="text/html")

    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.match_info["size"]))

    async def chain(request: web.Request) -> web.StreamResponse:
        remaining = int(request.match_info["n"])
        if remaining == 0:
            return web.Response(body=PNG_BYTES)
        raise web.HTTPFound(f"/chain/{remaining - 1}")

    async def to_ip(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"http://127.0.0.1:{origin_ref[0].port}/image")

    async def no_location(request: web.Request) -> web.Response:
        return web.Response(status=302)

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(body=PNG_BYTES)

    async def stream_forever(request: web.Request) -> web.StreamResponse:
        origin = origin_ref[0]
        response = web.StreamResponse()  # no Content-Length: chunked
        await response.prepare(request)
        chunk = b"y" * 65536
        try:
            while origin.stream_sent < STREAM_TOTAL:
                await response.write(chunk)
                origin.stream_sent += len(chunk)
        finally:
            origin.stream_done.set()
        return response

    async def declares_huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 100 * 1024 * 1024
        await response.prepare(request)
        await response.write(b"z" * 1024)
        await asyncio.sleep(30)
        return response

    app = web.Application(middlewares=[web.middleware(record)])
    app.router.add_get("/image", image)
    app.router.add_get("/sized/{size}", sized)
    app.router.add_get("/chain/{n}", chain)
    app.router.add_get("/to-ip", to_ip)
    app.router.add_get("/no-location", no_location)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/slow", slow)
    app.router.add_get("/stream-forever", stream_forever)
    app.router.add_get("/declares-huge", declares_huge)
    return app


async def _start_origin(host: str) -> tuple[web.AppRunner, Origin]:
    ref: list[Origin] = []
    runner = web.AppRunner(_origin_app(ref), shutdown_timeout=0.1)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, 0).start()
    except OSError:
        await runner.cleanup()
        raise
    ref.append(Origin(port=int(runner.addresses[0][1])))
    return runner, ref[0]


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    """An origin server on 127.0.0.1, port 0."""
    runner, server = await _start_origin("127.0.0.1")
    yield server
    await runner.cleanup()


@pytest.fixture
async def origin_v6() -> AsyncIterator[Origin]:
    """An origin server on [::1], port 0; skips the test where IPv6 loopback is unavailable."""
    try:
        runner, server = await _start_origin("::1")
    except OSError as error:
        pytest.skip(f"IPv6 loopback unavailable: {error}")
    yield server
    await runner.cleanup()


@pytest.fixture
def count_resolutions(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., list[str]]]:
    """Patch the loop's getaddrinfo to record looked-up names and map fake names onto loopback."""

    def install(fake_names: dict[str, str] | None = None) -> list[str]:
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo
        looked_up: list[str] = []

        async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            looked_up.append(host)
            return await real((fake_names or {}).get(host, host), port, *args, **kwargs)

        monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
        return looked_up

    yield install


@pytest.mark.parametrize(
    "url_template",
    [
        "http://127.0.0.1:{port}/image",
        "http://[::ffff:127.0.0.1]:{port}/image",
        "http://127.1:{port}/image",
        "http://2130706433:{port}/image",
        "http://0x7f000001:{port}/image",
        "http://0177.0.0.1:{port}/image",
        "http://0.0.0.0:{port}/image",
        "http://0:{port}/image",
        "http://localhost:{port}/image",
    ],
)
async def test_loopback_is_refused_by_default(origin: Origin, url_template: str) -> None:
    """Every spelling of a loopback destination is refused by the default policy before any request is sent."""
    with pytest.raises(FetchRefused):
        await fetch_image(url_template.format(port=origin.port), policy=DEFAULT_POLICY, **TIMEOUTS)
    assert origin.paths == []


async def test_ipv6_loopback_is_refused_by_default(origin_v6: Origin) -> None:
    """http://[::1]:port/ is refused by default and fetched only when ::1 is explicitly allowed."""
    url = f"http://[::1]:{origin_v6.port}/image"
    with pytest.raises(FetchRefused):
        await fetch_image(url, policy=DEFAULT_POLICY, **TIMEOUTS)
    assert origin_v6.paths == []
    fetched = await fetch_image(url, policy=LOOPBACK_POLICY, **TIMEOUTS)
    assert fetched.content == PNG_BYTES


async def test_fetch_returns_bytes_and_final_url_ignoring_content_type(origin: Origin) -> None:
    """With loopback allowed, the exact bytes come back despite a lying text/html Content-Type."""
    url = f"http://127.0.0.1:{origin.port}/image"
    fetched = await fetch_image(url, policy=LOOPBACK_POLICY, **TIMEOUTS)
    assert fetched.content == PNG_BYTES
    assert fetched.final_url == url
    assert origin.paths == ["/image"]


async def test_allowed_name_redirecting_to_refused_address_is_refused(origin: Origin) -> None:
    """localhost is allowed by name, but its redirect to http://127.0.0.1 is re-checked and refused."""
    allowed = await fetch_image(f"http://localhost:{origin.port}/image", policy=LOCALHOST_NAME_ONLY, **TIMEOUTS)
    assert allowed.content == PNG_BYTES
    origin.paths.clear()
    with pytest.raises(FetchRefused):
        await fetch_image(f"http://localhost:{origin.port}/to-ip", policy=LOCALHOST_NAME_ONLY, **TIMEOUTS)
    assert origin.paths == ["/to-ip"]


async def test_name_resolving_to_loopback_is_refused_at_connect(
    origin: Origin, count_resolutions: Callable[..., list[str]]
) -> None:
    """A name whose DNS answer is loopback is refused by the connecting resolver; nothing reaches the origin."""
    looked_up = count_resolutions({"images.example.test": "127.0.0.1"})
    with pytest.raises(FetchRefused):
        await fetch_image(f"http://images.example.test:{origin.port}/image", policy=DEFAULT_POLICY, **TIMEOUTS)
    assert looked_up == ["images.example.test"]
    assert origin.paths == []


async def test_name_is_resolved_once_and_that_answer_is_connected_to(
    origin: Origin, count_resolutions: Callable[..., list[str]]
) -> None:
    """The checked resolution is the one used to connect: exactly one lookup per fetch, no second resolution."""
    looked_up = count_resolutions({"images.example.test": "127.0.0.1"})
    policy = AddressPolicy.from_config(allow_hosts=["images.example.test"])
    fetched = await fetch_image(f"http://images.example.test:{origin.port}/image", policy=policy, **TIMEOUTS)
    assert fetched.content == PNG_BYTES
    assert looked_up == ["images.example.test"]


async def test_streamed_body_over_limit_is_refused_without_reading_it_all(origin: Origin) -> None:
    """A chunked body without Content-Length is cut off just past max_bytes; the server never finishes."""
    started = time.monotonic()
    with pytest.raises(ImageTooLarge):
        await fetch_image(
            f"http://127.0.0.1:{origin.port}/stream-forever", policy=LOOPBACK_POLICY, max_bytes=256 * 1024,
            **TIMEOUTS,
        )
    assert time.monotonic() - started < 5
    await asyncio.wait_for(origin.stream_done.wait(), timeout=5)
    assert origin.stream_sent < STREAM_TOTAL // 4


async def test_declared_content_length_over_limit_is_refused_early(origin: Origin) -> None:
    """A Content-Length above max_bytes is refused from the headers, without waiting for the body."""
    started = time.monotonic()
    with pytest.raises(ImageTooLarge):
        await fetch_image(
            f"http://127.0.0.1:{origin.port}/declares-huge", policy=LOOPBACK_POLICY, max_bytes=1024 * 1024,
            **TIMEOUTS,
        )
    assert time.monotonic() - started < 2


async def test_size_limit_boundary(origin: Origin) -> None:
    """A body of exactly max_bytes is accepted; one byte more is refused."""
    fetched = await fetch_image(
        f"http://127.0.0.1:{origin.port}/sized/1000", policy=LOOPBACK_POLICY, max_bytes=1000, **TIMEOUTS
    )
    assert fetched.content == b"x" * 1000
    with pytest.raises(ImageTooLarge):
        await fetch_image(
            f"http://127.0.0.1:{origin.port}/sized/1001", policy=LOOPBACK_POLICY, max_bytes=1000, **TIMEOUTS
        )


async def test_redirects_are_followed_up_to_the_limit(origin: Origin) -> None:
    """A chain of exactly max_redirects relative redirects is followed, and final_url names the last hop."""
    fetched = await fetch_image(
        f"http://127.0.0.1:{origin.port}/chain/3", policy=LOOPBACK_POLICY, max_redirects=3, **TIMEOUTS
    )
    assert fetched.content == PNG_BYTES
    assert fetched.final_url == f"http://127.0.0.1:{origin.port}/chain/0"
    assert origin.paths == ["/chain/3", "/chain/2", "/chain/1", "/chain/0"]


async def test_redirect_limit_is_enforced(origin: Origin) -> None:
    """One redirect more than max_redirects raises TooManyRedirects without requesting the next hop."""
    with pytest.raises(TooManyRedirects):
        await fetch_image(
            f"http://127.0.0.1:{origin.port}/chain/4", policy=LOOPBACK_POLICY, max_redirects=3, **TIMEOUTS
        )
    assert origin.paths == ["/chain/4", "/chain/3", "/chain/2", "/chain/1"]


async def test_redirect_without_location_is_an_upstream_error(origin: Origin) -> None:
    """A 302 without Location is reported as an upstream error carrying the status."""
    with pytest.raises(UpstreamError) as raised:
        await fetch_image(f"http://127.0.0.1:{origin.port}/no-location", policy=LOOPBACK_POLICY, **TIMEOUTS)
    assert raised.value.status == 302


@pytest.mark.parametrize("code", [404, 403, 500, 503])
async def test_non_2xx_is_an_upstream_error(origin: Origin, code: int) -> None:
    """A non-2xx origin status becomes UpstreamError with that status."""
    with pytest.raises(UpstreamError) as raised:
        await fetch_image(f"http://127.0.0.1:{origin.port}/status/{code}", policy=LOOPBACK_POLICY, **TIMEOUTS)
    assert raised.value.status == code


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/image.png",
        "file:///etc/passwd",
        "gopher://localhost:70/_x",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "unix:///var/run/docker.sock",
    ],
)
async def test_non_http_schemes_are_refused(url: str) -> None:
    """Only http and https URLs are fetched; any other scheme is refused even with loopback allowed."""
    with pytest.raises(FetchRefused):
        await fetch_image(url, policy=LOOPBACK_POLICY, **TIMEOUTS)


@pytest.mark.parametrize("url", ["http://", "not a url", "http:///path", "http://1.2.3.4.5/", "http://a:99999/"])
async def test_malformed_urls_are_invalid(url: str) -> None:
    """URLs with no host, a bad port or an impossible numeric host are rejected as invalid."""
    with pytest.raises(InvalidImageURL):
        await fetch_image(url, policy=LOOPBACK_POLICY, **TIMEOUTS)


def test_public_legacy_literal_is_canonicalised_without_io() -> None:
    """A public address spelled in decimal passes the check and is rewritten to dotted form."""
    assert str(check_url("http://134744072:8080/a.png?x=1", DEFAULT_POLICY)) == "http://8.8.8.8:8080/a.png?x=1"


async def test_total_timeout(origin: Origin) -> None:
    """An origin slower than total_timeout raises FetchTimeout at about that deadline."""
    started = time.monotonic()
    with pytest.raises(FetchTimeout):
        await fetch_image(
            f"http://127.0.0.1:{origin.port}/slow", policy=LOOPBACK_POLICY, connect_timeout=2, total_timeout=0.3
        )
    assert time.monotonic() - started < 2


async def test_connect_timeout() -> None:
    """A listener whose accept queue is full never completes the handshake: FetchTimeout after connect_timeout."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(FetchTimeout):
            await fetch_image(
                f"http://127.0.0.1:{port}/image", policy=LOOPBACK_POLICY, connect_timeout=0.3, total_timeout=5
            )
        assert time.monotonic() - started < 2
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_closed_port_is_unreachable() -> None:
    """A refused TCP connection becomes UpstreamUnreachable."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(UpstreamUnreachable):
        await fetch_image(f"http://127.0.0.1:{port}/image", policy=LOOPBACK_POLICY, **TIMEOUTS)
