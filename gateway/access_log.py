"""Access log lines without query strings: output links carry their signature there, and logs outlive links."""

from __future__ import annotations

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse


class AccessLogger(AbstractAccessLogger):
    """`<remote> "<METHOD> <path>" <status> <bytes> <ms>ms`; the request id is added by the log filter."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %d %.0fms', request.remote, request.method, request.path, response.status,
            response.body_length, time * 1000.0,
        )
