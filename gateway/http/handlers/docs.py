"""GET /v1/openapi.json and GET /v1/docs: the API's OpenAPI document and the page that renders it, both public."""

from __future__ import annotations

from aiohttp import web

from gateway.http.appkeys import OPENAPI_DOCUMENT
from gateway.http.handlers.page import STATIC_DIR
from gateway.http.middlewares import public
from gateway.http.openapi import CONTENT_SECURITY_POLICY

# gateway/static/docs.html loads docs.js and docs.css (served by gateway.handlers.page), which fetch and render
# the document: a page of our own, no CDN and no inline script or style.
DOCS_PAGE = "docs.html"


@public
async def openapi_document(request: web.Request) -> web.Response:
    """GET /v1/openapi.json: the OpenAPI 3.1 document, not wrapped in the envelope."""
    return web.Response(
        body=request.app[OPENAPI_DOCUMENT], content_type="application/json",
        headers={"Cache-Control": "public, max-age=300"},
    )


@public
async def docs_page(request: web.Request) -> web.StreamResponse:
    """GET /v1/docs: the static page that renders the document; scripts and styles from this origin only."""
    return web.FileResponse(
        STATIC_DIR / DOCS_PAGE,
        headers={
            "Content-Type": "text/html; charset=utf-8",
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "public, max-age=300",
        },
    )
