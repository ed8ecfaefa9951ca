"""The "Try it out" page: GET / and its static assets, public (no API key) and behind a strict CSP."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from gateway.errors import NotFound
from gateway.http.appkeys import SETTINGS
from gateway.http.middlewares import public

_LOGGER = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PAGE = "try.html"
# Only these files are served, so no request path ever reaches the filesystem.
ASSETS = {
    "try.js": "text/javascript; charset=utf-8",
    "try.css": "text/css; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
    "docs.css": "text/css; charset=utf-8",
    "markdown-it.min.js": "text/javascript; charset=utf-8",  # vendored: the docs page's markdown renderer
}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def content_security_policy(public_url: str) -> str:
    """Self only; images also from blob: (the chosen file), data: and the gateway's public origin, which
    serves output_url links and may differ from the origin the page was loaded from behind a proxy."""
    image_sources = ["'self'", "blob:", "data:"]
    if origin := _origin(public_url):
        image_sources.append(origin)
    return "; ".join([
        "default-src 'self'",
        f"img-src {' '.join(image_sources)}",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


def _headers(request: web.Request, content_type: str) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "Content-Security-Policy": content_security_policy(request.app[SETTINGS].base_url),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        # The page holds an API key: never leak its URL, never let a shared cache keep it stale.
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


@public
async def try_page(request: web.Request) -> web.StreamResponse:
    """GET /: the form that calls the API from the browser with the caller's own key."""
    return web.FileResponse(STATIC_DIR / PAGE, headers=_headers(request, "text/html; charset=utf-8"))


@public
async def static_asset(request: web.Request) -> web.StreamResponse:
    """GET /static/{name}: the page's script and stylesheet; anything else is 404."""
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise NotFound("no such file")
    return web.FileResponse(STATIC_DIR / name, headers=_headers(request, content_type))


def add_routes(app: web.Application) -> None:
    """Registers the page and its assets on the gateway's router."""
    app.router.add_get("/", try_page, name="try_page")
    app.router.add_get("/static/{name}", static_asset, name="static_asset")
