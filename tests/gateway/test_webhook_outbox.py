"""The durable webhook outbox: deliveries survive receiver outages and gateway restarts, replicas resuming
together send each once, and a completed batch is announced exactly once, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain import accounts, batches, images
from gateway.domain.images import ImageSource
from gateway.http.appkeys import PROCESSOR, SESSIONS
from gateway.jobs.webhook_outbox import WebhookSender
from gateway.jobs.webhook_signing import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from gateway.net.netguard import AddressPolicy
from gateway.store.database import (
    Sessions,
    alembic_config,
    create_database_engine,
    default_database_url,
    open_database,
    upgrade_schema,
)
from gateway.store.tables import Account, Base, WebhookDelivery
from tests.gateway.harness import ImageHost, WebhookReceiver, gateway, postgres_database
from tests.waiting import eventually
from tools.triton_launcher import free_port

LOOPBACK_POLICY = AddressPolicy.from_config(allow_networks=["127.0.0.0/8"])
# Generous: these waits return as soon as the senders are done, and the machine may be a loaded 2-core one
# (a 10 s wait here once failed a run of `make test`).
JOIN_TIMEOUT_S = 120.0
PAYLOAD = {"success": True, "data": {"id": "img_outbox"}, "meta": {"event": "image.completed"}}


@asynccontextmanager
async def serve_at(app: web.Application, port: int) -> AsyncIterator[None]:
    """Serve `app` on 127.0.0.1:`port`, a port chosen while nothing listened there."""
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


@asynccontextmanager
async def database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database: an SQLite file under tmp_path, or a database of its own on the real PostgreSQL."""
    if backend == "sqlite":
        yield default_database_url(tmp_path)
        return
    async with postgres_database() as url:
        yield url


async def delivery(sessions: Sessions, delivery_id: str) -> WebhookDelivery:
    async with sessions() as session:
        row = await session.get(WebhookDelivery, delivery_id)
    assert row is not None
    return row


async def test_receiver_down_at_first_is_retried_until_delivered(sessions: Sessions, account: Account) -> None:
    """A receiver that is not listening yet makes attempts fail; once it is up the delivery arrives once, and
    the row ends 'delivered' with every attempt counted."""
    port = free_port()
    hook = WebhookReceiver(port=port)
    async with WebhookSender(
        LOOPBACK_POLICY, sessions, max_attempts=20, base_delay_s=0.1, max_delay_s=0.2
    ) as sender:
        delivery_id = await sender.enqueue(account.id, hook.url, PAYLOAD)
        assert delivery_id is not None

        async def failed_twice() -> bool:
            return (await delivery(sessions, delivery_id)).attempts >= 2

        await eventually(failed_twice)
        async with serve_at(hook.app(), port):
            await asyncio.wait_for(sender.join(), JOIN_TIMEOUT_S)
            [payload] = await hook.wait_for(1)
    row = await delivery(sessions, delivery_id)
    assert row.status == "delivered" and row.attempts >= 3
    assert row.delivered_at is not None and row.last_error is None
    assert json.loads(row.body) == payload == PAYLOAD
    headers, raw = hook.deliveries[0]
    assert headers[DELIVERY_HEADER] == delivery_id
    assert verify(account.webhook_secret, headers[TIMESTAMP_HEADER], raw, headers[SIGNATURE_HEADER])


async def test_permanently_failing_delivery_ends_failed_after_max_attempts(
    sessions: Sessions, account: Account
) -> None:
    """A receiver answering 500 every time gets max_attempts POSTs; the row ends 'failed' with the last error,
    and a sender started later does not send it again."""
    calls: list[str] = []

    async def broken(request: web.Request) -> web.Response:
        calls.append(request.headers[DELIVERY_HEADER])
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/hook", broken)
    port = free_port()
    async with serve_at(app, port):
        url = f"http://127.0.0.1:{port}/hook"
        async with WebhookSender(LOOPBACK_POLICY, sessions, max_attempts=3, base_delay_s=0.01) as sender:
            delivery_id = await sender.enqueue(account.id, url, PAYLOAD)
            assert delivery_id is not None
            await asyncio.wait_for(sender.join(), JOIN_TIMEOUT_S)
        async with WebhookSender(LOOPBACK_POLICY, sessions, max_attempts=3, base_delay_s=0.01) as later:
            assert later.pending == 0
    assert calls == [delivery_id] * 3
    row = await delivery(sessions, delivery_id)
    assert (row.status, row.attempts, row.last_error, row.delivered_at) == ("failed", 3, "HTTP 500", None)


async def test_two_senders_resuming_the_same_rows_send_each_once(
    sessions: Sessions, account: Account, receiver: WebhookReceiver
) -> None:
    """Rows recorded while no sender ran are resumed by two senders starting together: each arrives once."""
    stopped = WebhookSender(LOOPBACK_POLICY, sessions)
    recorded = [await stopped.enqueue(account.id, receiver.url, {**PAYLOAD, "n": n}) for n in range(10)]
    assert receiver.deliveries == []
    first = WebhookSender(LOOPBACK_POLICY, sessions, base_delay_s=0.01)
    second = WebhookSender(LOOPBACK_POLICY, sessions, base_delay_s=0.01)
    await asyncio.gather(first.start(), second.start())
    try:
        await asyncio.wait_for(asyncio.gather(first.join(), second.join()), JOIN_TIMEOUT_S)
    finally:
        await asyncio.gather(first.close(), second.close())
    ids = [headers[DELIVERY_HEADER] for headers, _ in receiver.deliveries]
    assert sorted(ids) == sorted(recorded)  # type: ignore[type-var]
    for delivery_id in recorded:
        assert delivery_id is not None
        row = await delivery(sessions, delivery_id)
        assert (row.status, row.attempts) == ("delivered", 1)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_webhook_pending_when_the_gateway_stops_is_sent_by_the_next_one(
    backend: str, inference_url: str, image_host: ImageHost, tmp_path: Path
) -> None:
    """An image's webhook whose receiver is down while the gateway stops is delivered exactly once by the next
    gateway on the same database, under the same delivery id, with a signature that verifies."""
    port = free_port()
    hook = WebhookReceiver(port=port)
    async with database_url(backend, tmp_path) as url:
        settings: dict[str, Any] = {
            "inference_url": inference_url, "data_dir": tmp_path, "database_url": url, "webhook_base_delay_s": 2.0,
        }
        async with gateway(**settings) as before:
            sessions = before.app[SESSIONS]
            account_id, key = await before.account("pro")
            response = await before.client.post(
                "/v1/remove-background/url",
                json={"url": image_host.url("/photos/chelsea.jpg"), "webhook_url": hook.url},
                headers={"X-API-Key": key},
            )
            assert response.status == 200
            image_id = (await response.json())["data"]["id"]

            async def attempted() -> bool:
                async with sessions() as session:
                    rows = (await session.scalars(select(WebhookDelivery))).all()
                return len(rows) == 1 and rows[0].attempts == 1

            await eventually(attempted)
        async with open_database(url) as sessions:
            async with sessions() as session:
                [left] = (await session.scalars(select(WebhookDelivery))).all()
            assert (left.status, left.attempts) == ("pending", 1)
            assert left.last_error is not None and left.last_error.startswith("connection failed")
        async with serve_at(hook.app(), port), gateway(**{**settings, "webhook_base_delay_s": 0.05}) as after:
            [payload] = await hook.wait_for(1, timeout_s=JOIN_TIMEOUT_S)
            # Once the sender has nothing left in hand, any second delivery would already have been made.
            sender = after.app[PROCESSOR].webhooks
            assert isinstance(sender, WebhookSender)  # processing sees only the outbox; the app runs the sender
            await asyncio.wait_for(sender.join(), JOIN_TIMEOUT_S)
            assert len(hook.deliveries) == 1
            row = await delivery(after.app[SESSIONS], left.id)
            account = await accounts.get_account(after.app[SESSIONS], account_id)
    assert account is not None
    assert (row.status, row.attempts) == ("delivered", 2)
    headers, raw = hook.deliveries[0]
    assert headers[DELIVERY_HEADER] == left.id
    assert verify(account.webhook_secret, headers[TIMESTAMP_HEADER], raw, headers[SIGNATURE_HEADER])
    assert payload["meta"] == {"event": "image.completed"} and payload["data"]["id"] == image_id


async def test_completed_batch_left_unannounced_is_announced_once_at_next_start(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    """A gateway that stopped between completing a batch and recording its webhook leaves no outbox row; the
    next start records and sends 'batch.completed' once, and later starts do not send it again."""
    async with open_database(default_database_url(tmp_path)) as sessions:
        account, _key = await accounts.create_account(sessions, name="batches", plan="pro")
        batch = await batches.create_batch(
            sessions, account.id, [ImageSource(original_url="http://127.0.0.1:9/a.jpg")],
            output_format="png", output_size="original", webhook_url=receiver.url,
        )
        await images.mark_image_completed(
            sessions, batch.images[0].id, storage_key="outputs/x.png", content_type="image/png",
            width=1, height=1, size_bytes=1,
        )
        assert await batches.complete_batch_if_done(sessions, batch.id) is not None  # ... and the gateway stops
    settings: dict[str, Any] = {"inference_url": "127.0.0.1:9", "data_dir": tmp_path}
    async with gateway(**settings):
        [payload] = await receiver.wait_for(1)
    async with gateway(**settings) as again, again.app[SESSIONS]() as session:
        [row] = (await session.scalars(select(WebhookDelivery))).all()
    assert len(receiver.deliveries) == 1
    assert (row.batch_id, row.status, row.attempts) == (batch.id, "delivered", 1)
    headers, raw = receiver.deliveries[0]
    assert headers[DELIVERY_HEADER] == row.id
    assert verify(account.webhook_secret, headers[TIMESTAMP_HEADER], raw, headers[SIGNATURE_HEADER])
    assert payload["meta"]["event"] == "batch.completed" and payload["data"]["batch_id"] == batch.id
    assert payload["data"]["status"] == "completed"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_migration_counts_batches_completed_before_it_as_announced(backend: str, tmp_path: Path) -> None:
    """Upgrading from 0001 records a 'delivered' row for each completed batch with a webhook_url (the old
    in-memory sender had its chance), so the start-up catch-up does not announce old batches again."""

    def upgrade_to(revision: str) -> Callable[[Connection], None]:
        def run(connection: Connection) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

        return run

    async with database_url(backend, tmp_path) as url:
        engine = create_database_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(upgrade_to("0001"))
                await connection.execute(text(
                    "INSERT INTO accounts (id, name, plan, webhook_secret, created_at)"
                    " VALUES ('acct_old', 'old', 'pro', 's', CURRENT_TIMESTAMP)"
                ))
                for batch_id, status, webhook_url in [
                    ("batch_done", "completed", "http://hooks.example/a"),
                    ("batch_quiet", "completed", None),
                    ("batch_busy", "processing", "http://hooks.example/b"),
                ]:
                    await connection.execute(
                        text(
                            "INSERT INTO batches (id, account_id, status, total_images, options, webhook_url,"
                            " created_at, completed_at) VALUES (:id, 'acct_old', :status, 1, '{}', :url,"
                            " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                        ),
                        {"id": batch_id, "status": status, "url": webhook_url},
                    )
            await upgrade_schema(engine)
            async with engine.connect() as connection:
                rows = (
                    await connection.execute(text("SELECT id, batch_id, status, body FROM webhook_deliveries"))
                ).all()
        finally:
            await engine.dispose()
    assert [tuple(row) for row in rows] == [("whd_batch_done", "batch_done", "delivered", "")]


async def test_models_match_the_migrations(engine: AsyncEngine) -> None:
    """The ORM models (webhook_deliveries included) and the migrated schema agree, per Alembic's compare."""

    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []
