"""GET /v1/openapi.json and GET /v1/docs: the API's OpenAPI document and its HTML page, both public."""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.http import openapi
from gateway.http.appkeys import SETTINGS
from gateway.http.middlewares import public

_LOGGER = logging.getLogger(__name__)


@public
async def openapi_document(request: web.Request) -> web.Response:
    """GET /v1/openapi.json: the OpenAPI 3.1 document, not wrapped in the envelope."""
    document = openapi.published(request.app[SETTINGS]).document_json
    return web.Response(
        body=document, content_type="application/json", headers={"Cache-Control": "public, max-age=300"}
    )


@public
async def docs_page(request: web.Request) -> web.Response:
    """GET /v1/docs: the document as plain HTML; no scripts, and a CSP that allows only its own inline style."""
    page = openapi.published(request.app[SETTINGS]).html
    return web.Response(
        text=page,
        content_type="text/html",
        headers={
            "Content-Security-Policy": openapi.CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "public, max-age=300",
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get(openapi.OPENAPI_PATH, openapi_document, name="openapi")
    app.router.add_get(openapi.DOCS_PATH, docs_page, name="docs")
