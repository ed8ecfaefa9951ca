"""The gateway tests' shared fixtures: a migrated database on SQLite and on real PostgreSQL, a fresh PostgreSQL
database, an account and a webhook sender on it, the real gateway and its neighbours, an S3 server, a browser."""

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain import accounts
from gateway.jobs.webhook_outbox import WebhookSender
from gateway.net.netguard import AddressPolicy
from gateway.store.database import Sessions, create_database_engine, create_sessions, upgrade_schema
from gateway.store.tables import Account
from tests.gateway.harness import postgres_database

POSTGRES_URL = os.environ.get(
    "REMOVAI_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """Create a fresh, empty PostgreSQL schema and drop it, with everything in it, on the way out."""
    schema = f"test_{uuid.uuid4().hex}"
    admin = create_database_engine(POSTGRES_URL)
    try:
        try:
            async with admin.begin() as connection:
                await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        except OSError as error:
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable ({error}); these tests need a real one")
        try:
            yield schema
        finally:
            async with admin.begin() as connection:
                await connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        await admin.dispose()


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine migrated to head: an SQLite file in tmp_path, or a private schema of the real PostgreSQL."""
    if request.param == "sqlite":
        database = create_database_engine(f"sqlite+aiosqlite:///{tmp_path / 'removai.db'}")
        try:
            await upgrade_schema(database)
            yield database
        finally:
            await database.dispose()
        return
    async with postgres_schema() as schema:
        # Unqualified names, Alembic's version table included, resolve to the test's own schema.
        database = create_database_engine(
            POSTGRES_URL, connect_args={"server_settings": {"search_path": schema}}
        )
        try:
            await upgrade_schema(database)
            yield database
        finally:
            await database.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> Sessions:
    """The session factory the repositories take, on the parametrized database."""
    return create_sessions(engine)


@pytest_asyncio.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database of its own (its URL without a password), dropped afterwards."""
    async with postgres_database() as url:
        yield url


@pytest_asyncio.fixture
async def account(sessions: Sessions) -> Account:
    """A pro account on the parametrized database, whose webhook secret signs the deliveries."""
    created, _key = await accounts.create_account(sessions, name="hooks", plan="pro")
    return created


@pytest_asyncio.fixture
async def sender(sessions: Sessions) -> AsyncIterator[WebhookSender]:
    """A started webhook sender allowed to reach loopback, with 4 attempts and millisecond backoff."""
    policy = AddressPolicy.from_config(allow_networks=["127.0.0.0/8"])
    async with WebhookSender(policy, sessions, max_attempts=4, base_delay_s=0.01, max_delay_s=0.05) as started:
        yield started


# --- End-to-end fixtures: the real gateway in front of the real inference service and Triton. ---

from inference_service.server import InferenceServer
from tests.gateway.harness import Gateway, ImageHost, WebhookReceiver, gateway, serve


@pytest_asyncio.fixture(scope="session")
async def image_host() -> AsyncIterator[ImageHost]:
    host = ImageHost()
    async with serve(host.app()) as port:
        host.port = port
        yield host


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hook = WebhookReceiver()
    async with serve(hook.app()) as port:
        hook.port = port
        yield hook


@pytest.fixture
def inference_url(inference_server: InferenceServer) -> str:
    return f"127.0.0.1:{inference_server.port}"


@pytest_asyncio.fixture
async def gw(inference_url: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway on its embedded defaults (SQLite, in-memory limits, local files) with loopback fetches allowed."""
    async with gateway(inference_url=inference_url, data_dir=tmp_path / "data") as running:
        yield running


@pytest.fixture
def held_inference_url(held_inference_server: InferenceServer) -> str:
    """inference_url of the inference service on the `held` test model (tests/conftest.py)."""
    return f"127.0.0.1:{held_inference_server.port}"


@pytest_asyncio.fixture
async def held_gw(held_inference_url: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    """`gw` on the `held` test model: for tests whose answers do not depend on ISNet's masks (refusals before or
    in the inference service), which then run in the fast tier."""
    async with gateway(inference_url=held_inference_url, data_dir=tmp_path / "data") as running:
        yield running


# --- An S3-protocol server (moto) for the object-storage tests. ---

from tests.gateway.s3server import S3Server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto server for the session (in a thread of this process), stopped at its end."""
    server = S3Server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_storage_url(s3_server: S3Server) -> str:
    """storage_url of a fresh, empty bucket on the session's S3 server."""
    return s3_server.storage_url(s3_server.create_bucket())


# --- A real browser for the pages (try-it page, docs page) ----------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync",
]


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """The system's Chromium (Debian's `chromium`), driven by Playwright; no downloaded browser."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make setup does)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


# --- Client generators (the `clients` tier) ------------------------------------------------------------------

from tests.gateway.client_generators import ClientGenerators, install


@pytest.fixture(scope="session")
def client_generators() -> ClientGenerators:
    """The pinned npm generators and TypeScript compiler, installed once per lock (tests/clients/)."""
    return install()
