"""Shared state: two gateway replicas on one PostgreSQL and one Redis share limits exactly, and a batch left
unfinished by a stopped gateway is finished by the next one."""

from __future__ import annotations

import asyncio
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Any

from gateway.domain import accounts, batches, images, quota
from gateway.http.appkeys import SESSIONS
from gateway.store.database import default_database_url, open_database
from tests.gateway.harness import ImageHost, gateway, serve
from tests.gateway.held_host import HeldImageHost

REDIS_URL = "redis://127.0.0.1:6379/0"


async def test_two_replicas_share_rate_limits_and_library(
    inference_url: str, tmp_path: Path, postgres_url: str, image_host: ImageHost
) -> None:
    """On PostgreSQL + Redis: 100 simultaneous requests split over two replicas let exactly 10 in; an
    image made through one replica is listed and downloadable through the other."""
    secret = uuid.uuid4().hex
    common: dict[str, Any] = {
        "inference_url": inference_url, "database_url": postgres_url, "redis_url": REDIS_URL,
        "url_signing_secret": secret, "data_dir": tmp_path / "shared",
    }
    async with gateway(**common) as first, gateway(**common) as second:
        _, key = await first.account("basic")
        headers = {"X-API-Key": key}
        responses = await asyncio.gather(
            *(replica.client.get("/v1/account", headers=headers) for replica in [first, second] * 50)
        )
        statuses = [r.status for r in responses]
        assert statuses.count(200) == 10 and statuses.count(429) == 90
        remaining = sorted(int(r.headers["X-RateLimit-Remaining"]) for r in responses if r.status == 200)
        assert remaining == list(range(10))

        _, pro_key = await first.account("pro", name="pro")
        made = await first.client.post(
            "/v1/remove-background/url", json={"url": image_host.url("/photos/chelsea.jpg")},
            headers={"X-API-Key": pro_key},
        )
        image_id = (await made.json())["data"]["id"]
        seen = await second.client.get(f"/v1/images/{image_id}", headers={"X-API-Key": pro_key})
        body = await seen.json()
        assert seen.status == 200 and body["data"]["status"] == "completed"
        assert body["data"]["output_url"].startswith(second.settings.base_url)
        download = await second.client.get(body["data"]["output_url"].removeprefix(second.settings.base_url))
        assert download.status == 200 and download.headers["Content-Type"] == "image/png"


async def test_batch_resumes_after_gateway_restart(inference_url: str, tmp_path: Path) -> None:
    """A gateway stopped mid-batch (its first image held in flight by the image host) leaves its images
    'processing'; the next gateway on the same data finishes them, and the quota counts each image once."""
    settings: dict[str, Any] = {"inference_url": inference_url, "data_dir": tmp_path, "batch_concurrency": 1}
    host = HeldImageHost()
    async with serve(host.app()) as port:
        host.port = port
        urls = [host.url(name, f"i{n}") for n, name in enumerate(("chelsea.jpg", "coffee.jpg", "astronaut.jpg"))]
        async with gateway(**settings) as before:
            account_id, key = await before.account("pro")
            response = await before.client.post(
                "/v1/remove-background/batch", json={"urls": urls}, headers={"X-API-Key": key}
            )
            assert response.status == HTTPStatus.ACCEPTED
            batch_id = (await response.json())["data"]["batch_id"]
            await host.wait_for_requests(1)  # the first image is in flight (its fetch is held): stop now
        async with open_database(default_database_url(tmp_path)) as sessions:
            left = await batches.get_batch(sessions, account_id, batch_id)
            assert left is not None and left.status == "processing"
            assert [image.status for image in left.images] == ["processing"] * 3
        host.release.set()
        async with gateway(**settings):
            pass  # a restart that is itself stopped at once (mid-resume) loses nothing either
        async with gateway(**settings) as after:
            await asyncio.wait_for(after.batches_done(), 240)
            batch = await batches.get_batch(after.app[SESSIONS], account_id, batch_id)
            assert batch is not None and batch.status == "completed"
            assert [image.status for image in batch.images] == ["completed"] * 3
            assert await quota.usage(after.app[SESSIONS], account_id) == 3
            account = await accounts.authenticate(after.app[SESSIONS], key)
            assert account is not None and account.id == account_id


async def test_single_image_abandoned_by_a_stopped_gateway_is_failed_and_refunded(
    inference_url: str, tmp_path: Path
) -> None:
    """A single image left 'processing' by a gateway that stopped mid-request is marked failed at the next
    start (once older than any live request could be), and its quota is given back."""
    import datetime as dt

    from sqlalchemy import update

    from gateway.domain.images import ImageSource
    from gateway.store.tables import Image

    settings: dict[str, Any] = {"inference_url": inference_url, "data_dir": tmp_path}
    async with gateway(**settings) as before:
        sessions = before.app[SESSIONS]
        account_id, key = await before.account("basic")
        assert await quota.reserve_images(sessions, account_id, 2, 50)
        old = await images.create_image(
            sessions, account_id, ImageSource(original_url="http://example.test/a.jpg"),
            output_format="png", output_size="original",
        )
        fresh = await images.create_image(
            sessions, account_id, ImageSource(original_url="http://example.test/b.jpg"),
            output_format="png", output_size="original",
        )
        async with sessions.begin() as session:
            await session.execute(
                update(Image).where(Image.id == old.id).values(created_at=old.created_at - dt.timedelta(hours=1))
            )
    async with gateway(**settings) as after:
        response = await after.client.get(f"/v1/images/{old.id}", headers={"X-API-Key": key})
        body = await response.json()
        assert body["data"]["status"] == "failed" and body["data"]["error"]["code"] == "server_error"
        still = await after.client.get(f"/v1/images/{fresh.id}", headers={"X-API-Key": key})
        assert (await still.json())["data"]["status"] == "processing"  # may belong to a live replica
        assert await quota.usage(after.app[SESSIONS], account_id) == 1
