"""The success envelope and JSON body reading, shared by every handler."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway.errors import InvalidRequest
from gateway.http.appkeys import SETTINGS
from gateway.http.uploads import BodyTimeouts, read_json
from gateway.schemas import dump


def ok(envelope: BaseModel, status: HTTPStatus = HTTPStatus.OK) -> web.Response:
    """A success envelope (gateway.schemas), serialised by its model."""
    return web.json_response(dump(envelope), status=int(status))


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
