"""The gateway's HTTP/1.1 server: aiohttp's, with a deadline on request heads, an idle keep-alive bound, ambiguous
body framing refused, and requests the parser refuses answered in the error envelope with one short log line.

aiohttp has no public hook for the per-connection protocol, so GatewayProtocol subclasses its RequestHandler and
overrides a few of its methods (aiohttp 3.14); tests/gateway/test_http_server.py drives each through real sockets."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion, HttpVersion11
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway import metrics
from gateway.errors import ApiError, GatewayTimeout, InvalidRequest, ServerError
from gateway.http.access_log import AccessLogger
from gateway.http.appkeys import SETTINGS
from gateway.http.middlewares import error_response

_LOGGER = logging.getLogger(__name__)
_TRANSFER_ENCODING = hdrs.TRANSFER_ENCODING.lower().encode()
_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


_HTTP10_FRAMING = "Transfer-Encoding is not allowed on HTTP/1.0; send Content-Length"
_HTTP11_FRAMING = "Transfer-Encoding must be exactly 'chunked' (and then no Content-Length), or absent"


def framing_refusal(version: HttpVersion, transfer_encodings: list[str]) -> str | None:
    """Why a request's Transfer-Encoding lines make its body's length ambiguous, or None when they do not. Only
    `chunked` alone on HTTP/1.1 is unambiguous: a proxy in front that read `identity, chunked` (or chunking on
    HTTP/1.0) another way would see a different request boundary than this server (request smuggling). Coding
    names are case-insensitive (RFC 9112), as both of aiohttp's parsers read them."""
    if not transfer_encodings:
        return None
    if version != HttpVersion11:
        return _HTTP10_FRAMING
    if len(transfer_encodings) != 1 or transfer_encodings[0].strip().lower() != "chunked":
        return _HTTP11_FRAMING
    return None


# What the parser's message (never shown) is about -> what the client is told.
_UNPARSABLE_WORDS = (
    ("Transfer-Encoding", _HTTP11_FRAMING),
    ("CRLF", "the request head is not valid HTTP/1.1: every line must end with CRLF"),
)


def unparsable_message(error: HttpProcessingError) -> str:
    """Our own words for what the HTTP parser (llhttp, or aiohttp's Python one) refused: its messages quote the
    raw request, X-API-Key included, so they are never answered or logged; they only pick one of these."""
    if isinstance(error, LineTooLong):
        return "a line of the request head is too long"
    about = error.message.split("\n\n", 1)[0]  # llhttp's description; the quoted bytes follow a blank line
    for topic, words in _UNPARSABLE_WORDS:
        if topic in about:
            return words
    return "the request head is not valid HTTP/1.1"


class GatewayProtocol(RequestHandler):
    """One client connection. Beyond aiohttp's RequestHandler:

    - the request head must arrive whole within header_timeout_s of the connection opening, or of the first byte
      of the next request on a kept-alive connection; else the connection is closed without an answer (a client
      trickling its head, slowloris, holds a socket for that long at most). aiohttp's keep-alive timer, which
      closes a connection idle between requests, defers to this deadline once a head has begun;
    - a Transfer-Encoding other than `chunked` alone on HTTP/1.1 is refused with 400 before any route runs;
    - what the parser refuses is answered 400 in the error envelope, in our words, and logged as one line
      without a traceback (aiohttp logs the traceback and answers the parser's message, both quoting the raw
      request). Each refusal made here is its own log line, in place of the access log's."""

    __slots__ = ("_head_deadline", "_header_timeout_s", "_refusal")

    def __init__(self, manager: web.Server, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._head_deadline: asyncio.TimerHandle | None = None
        self._refusal: web.StreamResponse | None = None

    # --- The head deadline ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and self._head_deadline is None and self._idle():
            self._start_head_deadline()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if self._messages:  # a head arrived whole (or the parser refused it): its handler takes over
            self._stop_head_deadline()

    def _idle(self) -> bool:
        """Between requests: no request queued or in progress, waiting for the next head (a body arriving is
        no head: then the handler runs, or lingers reading the body, and nothing waits)."""
        return self._waiter is not None and not self._waiter.done() and not self._messages

    def _start_head_deadline(self) -> None:
        self._head_deadline = self._loop.call_later(self._header_timeout_s, self._head_too_slow)

    def _stop_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.transport is None or self._messages or self._request_in_progress:
            return
        metrics.REFUSALS.labels("header_timeout").inc()
        # Debug only: a slowloris would otherwise write one line per connection; the counter shows the rate.
        _LOGGER.debug("closed a connection from %s: no whole request head within %.0f s", self._peer(),
                      self._header_timeout_s)
        self.force_close()

    def _process_keepalive(self) -> None:
        if self._head_deadline is not None:
            self._keepalive_handle = None  # a head has begun (or the connection is new): its deadline decides
            return
        super()._process_keepalive()

    def _peer(self) -> str:
        peer = self.peername
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    # --- Refusals in the envelope ---

    async def _handle_request(
        self, request: web.BaseRequest, start_time: float | None, request_handler: _Handler
    ) -> tuple[web.StreamResponse, bool]:
        # From the raw lines: every Transfer-Encoding line counts (and what the parser refused has none).
        transfer_encodings = [
            value.decode("latin-1") for name, value in request.raw_headers if name.lower() == _TRANSFER_ENCODING
        ]
        reason = framing_refusal(request.version, transfer_encodings)
        if reason is not None:
            error = InvalidRequest(reason)

            async def refuse(request: web.BaseRequest) -> web.StreamResponse:
                return self._refuse(request, error, logging.INFO, "ambiguous framing")

            request_handler = refuse
        return await super()._handle_request(request, start_time, request_handler)

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Called by aiohttp for a request the parser refused (`exc` is the parser's error) and for an exception
        that escaped the application's middlewares (a bug: 500, logged with its traceback)."""
        if request.writer.output_size > 0:
            raise ConnectionError("the response has begun; no error answer can follow it")
        if isinstance(exc, HttpProcessingError):
            # Non-HTTP bytes (TLS, scanners) as a connection's first request are noise on a public port.
            level = logging.DEBUG if isinstance(exc, BadHttpMethod) and self._request_count == 1 else logging.INFO
            return self._refuse(request, InvalidRequest(unparsable_message(exc)), level, type(exc).__name__)
        if status == 504:
            return self._refuse(request, GatewayTimeout("the request was not answered in time"), logging.WARNING,
                                "handler timeout")
        _LOGGER.error("a request from %s failed outside the middlewares", request.remote, exc_info=exc)
        return self._refuse(request, ServerError("an unexpected error occurred; it has been logged"), None, "")

    def _refuse(self, request: web.BaseRequest, error: ApiError, level: int | None, why: str) -> web.Response:
        """The error envelope, with the headers every answer carries; the connection closes after it."""
        request_id = uuid.uuid4().hex
        if level is not None:
            _LOGGER.log(level, "request %s from %s refused %d: %s (%s)", request_id, request.remote,
                        int(error.status), error.message, why)
        response = error_response(error)
        response.headers["X-Request-Id"] = request_id
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        response.force_close()
        self._refusal = response
        return response

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse, time: float | None) -> None:
        if response is self._refusal:
            return  # logged (or deliberately not) by _refuse
        super().log_access(request, response, time)


class GatewayServer(web.Server):
    """aiohttp's low-level server whose connections are GatewayProtocol."""

    def __init__(self, handler: _Handler, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._header_timeout_s = header_timeout_s

    def __call__(self) -> RequestHandler:
        return GatewayProtocol(self, loop=self._loop, header_timeout_s=self._header_timeout_s, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner for create_app's application that serves it through GatewayServer with the bounds of the
    application's settings (head and keep-alive timeouts, shutdown drain) and the production access log."""

    __slots__ = ("_header_timeout_s",)

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        settings = app[SETTINGS]
        kwargs.setdefault("access_log_class", AccessLogger)
        kwargs.setdefault("shutdown_timeout", settings.shutdown_timeout_s)
        super().__init__(app, keepalive_timeout=settings.keepalive_timeout_s, **kwargs)
        self._header_timeout_s = settings.header_timeout_s

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts the application; aiohttp's Server, whose settings we keep
        return GatewayServer(
            plain.request_handler, request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation, header_timeout_s=self._header_timeout_s,
            **plain._kwargs,
        )


async def serve(app: web.Application) -> None:
    """Serves create_app's application on its settings' host and port until SIGINT or SIGTERM, then drains
    (requests in flight get up to shutdown_timeout_s) and runs the application's cleanup, as aiohttp's run_app
    does (which cannot be given a runner)."""
    settings = app[SETTINGS]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = GatewayRunner(app)
    try:
        # Inside the try: a resource that fails to start leaves those started before it to the cleanup.
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.port).start()
        await stop.wait()
    finally:
        await runner.cleanup()
