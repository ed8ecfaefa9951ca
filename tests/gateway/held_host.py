"""An image host whose answers wait on an asyncio.Event the test controls, so images are provably in flight."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from tests.reference import DATA


@dataclass
class HeldImageHost:
    """Serves /held/{name}?tag=... once `release` is set; records each request's tag in arrival order."""

    port: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    tags: list[str] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, name: str, tag: str) -> str:
        return f"http://127.0.0.1:{self.port}/held/{name}?tag={tag}"

    async def wait_for_requests(self, count: int, timeout_s: float = 60.0) -> None:
        """Return once `count` requests have arrived (held or not)."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.tags) >= count), timeout_s)

    def app(self) -> web.Application:
        async def held(request: web.Request) -> web.Response:
            async with self._arrived:
                self.tags.append(request.query.get("tag", ""))
                self._arrived.notify_all()
            await self.release.wait()
            return web.Response(body=(DATA / request.match_info["name"]).read_bytes(), content_type="image/jpeg")

        app = web.Application()
        app.router.add_get("/held/{name}", held)
        return app
