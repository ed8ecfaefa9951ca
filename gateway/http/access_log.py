"""Access log lines without query strings: output links carry their signature there, and logs outlive links."""

from __future__ import annotations

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse


def _printable(text: str) -> str:
    """`text` with control and other non-printable characters escaped (\\n, \\x1b...): a decoded `%0A` in a
    path must not start a forged log line, nor an escape sequence repaint the operator's terminal."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class AccessLogger(AbstractAccessLogger):
    """`<remote> "<METHOD> <path>" <status> <bytes> <ms>ms`; the request id is added by the log filter."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %d %.0fms', request.remote, request.method, _printable(request.path), response.status,
            response.body_length, time * 1000.0,
        )
