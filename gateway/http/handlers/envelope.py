"""The success envelope, JSON body reading and streamed stored objects, shared by every handler."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway.domain.outputs import StoredObject
from gateway.errors import InvalidRequest
from gateway.http.appkeys import SETTINGS
from gateway.http.uploads import BodyTimeouts, read_json

_LOGGER = logging.getLogger(__name__)


def ok(envelope: BaseModel, status: HTTPStatus = HTTPStatus.OK) -> web.Response:
    """A success envelope (gateway.schemas), serialised by its model straight to JSON bytes (the same fields and
    values as gateway.schemas.dump, without its dict and the stdlib encoder: about half the time, measured,
    and this runs on every answer)."""
    return web.Response(
        body=envelope.model_dump_json(exclude_unset=True).encode(), status=int(status),
        content_type="application/json", charset="utf-8",
    )


async def send_stored(request: web.Request, response: web.StreamResponse, stored: StoredObject, what: str) -> None:
    """Sends `response`'s head, then `stored` a chunk at a time (a big object never sits whole in memory), and
    closes it; a client that goes away mid-body ends the sending, logged as `what` stopped."""
    async with stored:
        await response.prepare(request)
        try:
            async for chunk in stored.chunks:
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            _LOGGER.info("%s stopped: the client went away", what)


async def json_body(request: web.Request) -> Any:
    """The JSON body, at most max_json_body_bytes once decompressed, read within the upload timeouts."""
    if request.content_type != "application/json":
        raise InvalidRequest("send a JSON body with Content-Type: application/json")
    settings = request.app[SETTINGS]
    return await read_json(
        request, max_bytes=settings.max_json_body_bytes, timeouts=upload_timeouts(request),
    )


def upload_timeouts(request: web.Request) -> BodyTimeouts:
    """The idle timeout and whole-body deadline every request body is read under."""
    settings = request.app[SETTINGS]
    return BodyTimeouts(settings.upload_idle_timeout_s, settings.upload_deadline_s)
