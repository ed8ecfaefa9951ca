"""The success envelope and JSON body reading, shared by every handler."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from aiohttp import web

from gateway.errors import InvalidRequest


def ok(data: Any, meta: dict[str, Any] | None = None, status: HTTPStatus = HTTPStatus.OK) -> web.Response:
    return web.json_response({"success": True, "data": data, "meta": meta or {}}, status=int(status))


async def json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise InvalidRequest("send a JSON body with Content-Type: application/json")
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest("the request body is not valid JSON") from exc
