"""A database or Redis outage answers 503 server_error with Retry-After, never 500, and the gateway recovers
without a restart: a real gateway talks to the real PostgreSQL and Redis through a proxy the test cuts."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, text

from gateway.domain import accounts
from gateway.http.appkeys import PROCESSOR, SESSIONS
from gateway.jobs.webhook_outbox import WebhookSender
from gateway.store.database import create_database_engine, open_database
from gateway.store.outage import unreachable_store
from tests.gateway.harness import Gateway, ImageHost, WebhookReceiver, gateway
from tests.gateway.tcp_proxy import CuttableProxy, cuttable_proxy
from tests.gateway.test_openapi import fetch_contract
from tests.gateway.test_webhook_outbox import LOOPBACK_POLICY, serve_at
from tests.waiting import eventually
from tools.triton_launcher import free_port

PASSWORD = "s3cret-outage-pw"
RETRY_AFTER_S = 3


def _unavailable_count(store: str) -> float:
    return REGISTRY.get_sample_value("removai_gateway_store_unavailable_total", {"store": store}) or 0.0


async def _account_status(gw: Gateway, key: str, request_id: str) -> tuple[int, dict[str, Any], Any]:
    response = await gw.client.get("/v1/account", headers={"X-API-Key": key, "X-Request-Id": request_id})
    return response.status, await response.json(), response.headers


def _assert_unavailable(status: int, body: dict[str, Any], headers: Any, request_id: str) -> None:
    assert status == 503, body
    assert body == {"success": False, "error": {
        "code": "server_error", "message": "the service is temporarily unavailable; retry shortly", "status": 503,
    }}
    assert headers["Retry-After"] == str(RETRY_AFTER_S)
    assert headers["X-Request-Id"] == request_id


async def _outage_and_recovery(
    gw: Gateway, key: str, proxy: CuttableProxy, store: str, caplog: pytest.LogCaptureFixture
) -> None:
    status, body, _ = await _account_status(gw, key, "before")
    assert status == 200, body
    before = _unavailable_count(store)
    await proxy.cut()
    with caplog.at_level(logging.ERROR, logger="gateway.http.middlewares"):
        # Twice: the first request meets the pooled connection that was cut, the second a refused connect.
        for attempt in ("cut-1", "cut-2"):
            status, body, headers = await _account_status(gw, key, attempt)
            _assert_unavailable(status, body, headers, attempt)
        # The answer is the one the OpenAPI document promises for this route.
        contract = await fetch_contract(gw)
        response = await gw.client.get("/v1/account", headers={"X-API-Key": key})
        assert response.status == 503
        await contract.check(response, "/v1/account", "GET")
    assert _unavailable_count(store) == before + 3
    lines = [record.getMessage() for record in caplog.records if record.name == "gateway.http.middlewares"]
    assert len(lines) == 3 and all(f"the {store} is unreachable" in line for line in lines), lines
    assert not any(PASSWORD in line or "SELECT" in line for line in lines), lines
    await proxy.restore()
    status, body, _ = await _account_status(gw, key, "after")
    assert status == 200, body


async def test_postgresql_outage_is_503_and_recovers(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with cuttable_proxy("127.0.0.1", 5432) as proxy:
        through_proxy = postgres_url.replace(
            "postgres@127.0.0.1:5432", f"postgres:{PASSWORD}@127.0.0.1:{proxy.port}"
        )
        async with gateway(database_url=through_proxy, data_dir=tmp_path, retry_after_s=RETRY_AFTER_S) as gw:
            _, key = await gw.account("pro")
            await _outage_and_recovery(gw, key, proxy, "database", caplog)


async def test_redis_outage_is_503_and_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with cuttable_proxy("127.0.0.1", 6379) as proxy:
        redis_url = f"redis://127.0.0.1:{proxy.port}/0"
        async with gateway(redis_url=redis_url, data_dir=tmp_path, retry_after_s=RETRY_AFTER_S) as gw:
            _, key = await gw.account("pro")
            await _outage_and_recovery(gw, key, proxy, "redis", caplog)


async def test_redis_never_reachable_is_503(tmp_path: Path) -> None:
    """A Redis that was never there (wrong port) is the same outage: 503 from the first request."""
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    async with gateway(redis_url=dead_redis, data_dir=tmp_path, retry_after_s=RETRY_AFTER_S) as gw:
        _, key = await gw.account("pro")
        status, body, headers = await _account_status(gw, key, "dead")
        _assert_unavailable(status, body, headers, "dead")
        assert "redis" not in body["error"]["message"].lower()


async def test_a_failing_statement_is_not_an_outage(postgres_url: str, tmp_path: Path) -> None:
    """A bug stays a 500: a statement PostgreSQL refuses, or an OSError of the gateway's own files, is no
    outage; a refused connection and a connection closed mid-statement are."""
    async with cuttable_proxy("127.0.0.1", 5432) as proxy:
        engine = create_database_engine(postgres_url.replace(":5432/", f":{proxy.port}/"))
        try:
            async with engine.connect() as connection:
                with pytest.raises(Exception) as bad_sql:
                    await connection.execute(text("SELECT nothing FROM nowhere"))
            assert unreachable_store(bad_sql.value) is None
            async with engine.connect() as connection:
                await proxy.cut()
                with pytest.raises(Exception) as closed:
                    await connection.execute(text("SELECT 1"))
            outage = unreachable_store(closed.value)
            assert outage is not None and outage.store == "database"
            assert "SELECT" not in outage.detail
            with pytest.raises(OSError) as refused:
                async with engine.connect():
                    pass
            assert unreachable_store(refused.value) is not None
        finally:
            await engine.dispose()
    with pytest.raises(OSError) as own_file:
        (tmp_path / "missing" / "file").read_bytes()
    assert unreachable_store(own_file.value) is None


async def test_webhook_outbox_resumes_after_a_database_outage(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A delivery retrying against a receiver that is down, then a database outage that kills its task and
    fails the poller's scans: once both are back the poller picks the row up again and it is delivered."""
    receiver = WebhookReceiver()
    receiver_port = free_port()  # nothing listens here until the end
    async with cuttable_proxy("127.0.0.1", 5432) as proxy:
        url = postgres_url.replace(":5432/", f":{proxy.port}/")
        async with open_database(url) as sessions:
            owner, _key = await accounts.create_account(sessions, name="outage", plan="pro")
            sender = WebhookSender(
                LOOPBACK_POLICY, sessions, max_attempts=10_000, base_delay_s=0.05, max_delay_s=0.2,
                poll_interval_s=0.2, lease_s=0.5,
            )
            async with sender:
                delivery_id = await sender.enqueue(
                    owner.id, f"http://127.0.0.1:{receiver_port}/hook", {"event": "outage"}
                )
                assert delivery_id is not None
                with caplog.at_level(logging.ERROR, logger="gateway.jobs.webhook_outbox"):
                    await proxy.cut()
                    await eventually(
                        lambda: sum("could not scan the webhook outbox" in r.getMessage() for r in caplog.records)
                        >= 2 and sender.pending == 0,
                        30.0, message="the poller failing on the outage and the delivery task stopping",
                    )
                await proxy.restore()
                async with serve_at(receiver.app(), receiver_port):
                    bodies = await receiver.wait_for(1, timeout_s=30.0)
    assert bodies == [{"event": "outage"}]


async def test_a_single_images_webhook_recorded_during_an_outage_is_sent_once_the_database_is_back(
    postgres_url: str, tmp_path: Path, inference_url: str, image_host: ImageHost, receiver: WebhookReceiver
) -> None:
    """A single image completes, and PostgreSQL goes away exactly as its image.completed webhook is being
    recorded (the cut is made by the gateway's own INSERT into the outbox): the caller still gets its 200,
    the delivery is held, and once PostgreSQL is back it is recorded and delivered, with the image's id."""
    async with cuttable_proxy("127.0.0.1", 5432) as proxy:
        through_proxy = postgres_url.replace(":5432/", f":{proxy.port}/")
        async with gateway(
            database_url=through_proxy, data_dir=tmp_path, inference_url=inference_url, webhook_base_delay_s=0.1,
        ) as gw:
            _, key = await gw.account("pro")
            cuts: list[str] = []

            def cut_on_the_outbox_insert(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
                if not cuts and statement.lstrip().upper().startswith("INSERT INTO WEBHOOK_DELIVERIES"):
                    cuts.append(statement)
                    proxy.cut_now()

            engine = gw.app[SESSIONS].kw["bind"]
            event.listen(engine.sync_engine, "before_cursor_execute", cut_on_the_outbox_insert)
            try:
                response = await gw.client.post(
                    "/v1/remove-background/url",
                    json={"url": image_host.url("/photos/chelsea.jpg"), "webhook_url": receiver.url},
                    headers={"X-API-Key": key},
                )
                assert response.status == 200, await response.text()
                image_id = (await response.json())["data"]["id"]
                assert len(cuts) == 1
                assert gw.app[PROCESSOR].webhooks.unrecorded == 1  # type: ignore[attr-defined]
                assert receiver.deliveries == []
                await proxy.restore()
                [delivered] = await receiver.wait_for(1, timeout_s=60.0)
            finally:
                event.remove(engine.sync_engine, "before_cursor_execute", cut_on_the_outbox_insert)
    assert delivered["meta"] == {"event": "image.completed"}
    assert delivered["data"]["id"] == image_id and delivered["data"]["status"] == "completed"


def test_a_locked_sqlite_database_is_an_outage(tmp_path: Path) -> None:
    """SQLite's "database is locked" (a writer held the lock past the busy timeout) is an outage; its
    "no such table" is a bug."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        holder.execute("CREATE TABLE t (x INTEGER)")
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError) as locked:
            waiter.execute("INSERT INTO t VALUES (1)")
        holder.execute("ROLLBACK")
        with pytest.raises(sqlite3.OperationalError) as missing:
            waiter.execute("SELECT * FROM nowhere")
    finally:
        holder.close()
        waiter.close()
    outage = unreachable_store(locked.value)
    assert outage is not None and outage.store == "database"
    assert unreachable_store(missing.value) is None
