"""Real servers for the gateway's end-to-end tests: the gateway itself, an image host and a webhook receiver,
all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from sqlalchemy import func, select

from gateway.domain import accounts
from gateway.http.app import create_app
from gateway.http.appkeys import BATCHES, METRICS_PORT, SESSIONS
from gateway.http.server import GatewayRunner
from gateway.settings import GatewaySettings
from gateway.store.tables import Batch, PlanName
from tests.reference import DATA
from tests.waiting import eventually
from tools.triton_launcher import free_port

POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass
class ImageHost:
    """Serves the sample photos and a few awkward answers; counts every request it gets."""

    port: int = 0
    requests: list[str] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def app(self) -> web.Application:
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.requests.append(request.path)
            response: web.StreamResponse = await handler(request)
            return response

        async def photo(request: web.Request) -> web.Response:
            path = DATA / request.match_info["name"]
            if not path.is_file():
                raise web.HTTPNotFound()
            # A lying Content-Type: the type must be decided by the bytes.
            return web.Response(body=path.read_bytes(), content_type="text/html")

        async def text(request: web.Request) -> web.Response:
            return web.Response(text="not an image at all\n")

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(request.query["to"])

        app = web.Application(middlewares=[web.middleware(record)])
        app.router.add_get("/photos/{name}", photo)
        app.router.add_get("/text", text)
        app.router.add_get("/redirect", redirect)
        return app


@dataclass
class WebhookReceiver:
    """Collects webhook deliveries: (headers, raw body)."""

    port: int = 0
    deliveries: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            self.deliveries.append((dict(request.headers), await request.read()))
            self.arrived.set()
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        return app

    async def wait_for(self, count: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        async def enough() -> None:
            while len(self.deliveries) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), timeout_s)
        return [json.loads(body) for _, body in self.deliveries]


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[int]:
    """Serves app on 127.0.0.1, on a port the kernel picks; yields the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port: int = runner.addresses[0][1]
    try:
        yield port
    finally:
        await runner.cleanup()


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database of its own on the local server; dropped afterwards."""
    name = f"removai_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@dataclass
class Gateway:
    client: TestClient[web.Request, web.Application]
    settings: GatewaySettings

    @property
    def app(self) -> web.Application:
        app = self.client.app
        assert app is not None, "the test client always serves an application"
        return app

    @property
    def metrics_url(self) -> str:
        """Where this gateway's Prometheus metrics are (their own port, never the API's)."""
        return f"http://127.0.0.1:{self.app[METRICS_PORT]}/metrics"

    async def account(self, plan: PlanName = "pro", name: str = "test") -> tuple[str, str]:
        """Creates an account on this gateway's database; returns (account id, API key)."""
        account, key = await accounts.create_account(self.app[SESSIONS], name=name, plan=plan)
        return account.id, key

    async def batches_idle(self) -> None:
        """Until this replica has no batch image in flight (it may claim more later)."""
        runner = self.app[BATCHES]
        await eventually(lambda: runner.in_flight == 0, timeout_s=3600, interval_s=0.05)

    async def batches_done(self) -> None:
        """Until this replica has nothing in flight and no batch in the database is still processing; while one
        is and nothing is in flight here, the claim loop is woken rather than left to its poll."""
        runner = self.app[BATCHES]

        async def done() -> bool:
            if runner.in_flight:
                return False
            async with self.app[SESSIONS]() as session:
                processing = await session.scalar(
                    select(func.count()).select_from(Batch).where(Batch.status == "processing")
                )
            if processing:
                runner.submit("", "")
            return not processing

        await eventually(done, timeout_s=3600, interval_s=0.1)

    async def crash_batches(self) -> None:
        """This replica's batch work stops where it is, as in a replica that dies: nothing is released, so its
        leases stay until they expire and another replica takes the images over."""
        runner = self.app[BATCHES]
        # The runner's own tasks, cancelled without close()'s lease release: what a crash leaves behind.
        await runner._stop_tasks()
        runner._working.clear()


class GatewayTestServer(TestServer):
    """aiohttp's TestServer running the gateway's own runner: its connection protocol (head and keep-alive
    bounds, refusals in the envelope) and its production access logger (no query strings), so the tests and the
    session's log scan judge what ships."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return GatewayRunner(self.app, **kwargs)


@asynccontextmanager
async def gateway(**overrides: Any) -> AsyncIterator[Gateway]:
    """A real gateway on 127.0.0.1 (its own port, so output_url links are real and downloadable; its metrics on
    another port it picks itself)."""
    port = free_port()
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "metrics_port": 0,
        "webhook_base_delay_s": 0.05,
        "fetch_allow_networks": "127.0.0.0/8,::1/128",
        **overrides,
    }
    settings = GatewaySettings(**values)
    server = GatewayTestServer(create_app(settings), host="127.0.0.1", port=port)
    await server.start_server()
    client = TestClient(server)
    await client.start_server()
    try:
        yield Gateway(client, settings)
    finally:
        await client.close()


def file_form(content: bytes, filename: str = "photo.jpg", **fields: str) -> aiohttp.FormData:
    """A multipart upload: the fields first, then `content` as the JPEG part named file."""
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("file", content, filename=filename, content_type="image/jpeg")
    return form


def assert_error(status: int, body: dict[str, Any], expected_status: int, code: str) -> None:
    """The answer is the spec's error envelope, exactly: success false, the code, a message, the status."""
    assert status == expected_status, body
    assert body["success"] is False
    assert body["error"] == {"code": code, "message": body["error"]["message"], "status": expected_status}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
