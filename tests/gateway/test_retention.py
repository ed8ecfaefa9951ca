"""Retention: finished images past their plan's retention lose their record, cutout and original; delivered
webhook rows are pruned; sweeps are claimed jobs, on SQLite and PostgreSQL. Rows are backdated, never awaited."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import func, select, update

from gateway.domain import accounts, batches, images, retention
from gateway.domain.images import ImageSource
from gateway.domain.leases import Claim
from gateway.http.appkeys import PROCESSOR, SESSIONS, SWEEPER
from gateway.jobs.sweeps import claim_job, finish_job, prune_webhook_deliveries
from gateway.store.database import Sessions
from gateway.store.storage import LocalDiskStorage
from gateway.store.tables import Batch, Image, WebhookDelivery, utc_now
from tests.gateway.harness import gateway

CLAIM = Claim(replica="test-replica", lease=dt.timedelta(seconds=30))


async def _finished_image(
    sessions: Sessions, storage: LocalDiskStorage, account_id: str, *, age: dt.timedelta
) -> Image:
    """A completed image with a stored cutout, finished `age` ago."""
    image = await images.create_image(
        sessions, account_id, ImageSource(original_url="http://example.test/a.jpg"),
        output_format="png", output_size="small",
    )
    key = f"outputs/{image.id}-1.png"
    await storage.put(key, b"cutout", "image/png")
    done = await images.mark_image_completed(
        sessions, image.id, storage_key=key, content_type="image/png", width=1, height=1, size_bytes=6
    )
    assert done is not None
    async with sessions.begin() as session:
        await session.execute(
            update(Image).where(Image.id == image.id).values(completed_at=utc_now() - age, created_at=utc_now() - age)
        )
    return done


async def test_retention_deletes_old_images_per_plan_with_their_files(tmp_path: Path) -> None:
    """A pro image finished 31 days ago is deleted (record and file; GET answers 404), a 29-day-old one stays,
    and an enterprise image of 31 days stays under that plan's 90-day setting."""
    async with gateway(
        inference_url="127.0.0.1:1", data_dir=tmp_path / "data", retention_days_enterprise=90
    ) as replica:
        sessions = replica.app[SESSIONS]
        storage = replica.app[PROCESSOR].storage
        assert isinstance(storage, LocalDiskStorage)
        _, pro_key = await replica.account("pro", name="pro")
        pro = await accounts.authenticate(sessions, pro_key)
        _, enterprise_key = await replica.account("enterprise", name="enterprise")
        enterprise = await accounts.authenticate(sessions, enterprise_key)
        assert pro is not None and enterprise is not None
        old = await _finished_image(sessions, storage, pro.id, age=dt.timedelta(days=31))
        recent = await _finished_image(sessions, storage, pro.id, age=dt.timedelta(days=29))
        kept = await _finished_image(sessions, storage, enterprise.id, age=dt.timedelta(days=31))
        processing = await images.create_image(
            sessions, pro.id, ImageSource(original_url="http://example.test/b.jpg"),
            output_format="png", output_size="small", claim=CLAIM,
        )
        async with sessions.begin() as session:
            await session.execute(
                update(Image).where(Image.id == processing.id).values(created_at=utc_now() - dt.timedelta(days=40))
            )

        ran = await replica.app[SWEEPER].run_once()

        assert "retention" in ran
        gone = await replica.client.get(f"/v1/images/{old.id}", headers={"X-API-Key": pro_key})
        assert gone.status == 404
        body = await gone.json()
        assert body["success"] is False and body["error"]["code"] == "not_found"
        assert not await storage.exists(f"outputs/{old.id}-1.png")
        for image, key in ((recent, pro_key), (kept, enterprise_key), (processing, pro_key)):
            response = await replica.client.get(f"/v1/images/{image.id}", headers={"X-API-Key": key})
            assert response.status == 200 and response.headers["Content-Type"].startswith("application/json")
            assert (await response.json())["data"]["id"] == image.id
        assert await storage.exists(f"outputs/{recent.id}-1.png")
        assert await storage.exists(f"outputs/{kept.id}-1.png")


async def test_retention_deletes_emptied_batches_and_prunes_delivered_webhooks(sessions: Sessions) -> None:
    """Old delivered/failed webhook rows are pruned while pending and batch-announcing ones stay; a batch whose
    images retention removed is deleted with its announcement."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="pro")
    batch = await batches.create_batch(
        sessions, account.id, [ImageSource(original_url="http://example.test/a.jpg")],
        output_format="png", output_size="small", webhook_url="http://hooks.test/",
    )
    old = utc_now() - dt.timedelta(days=10)
    async with sessions.begin() as session:
        for delivery_id, status, batch_id in (
            ("whd_old_delivered", "delivered", None), ("whd_old_failed", "failed", None),
            ("whd_old_pending", "pending", None), ("whd_batch", "delivered", batch.id),
        ):
            session.add(WebhookDelivery(
                id=delivery_id, account_id=account.id, batch_id=batch_id, url="http://hooks.test/", body="{}",
                status=status, attempts=1, next_attempt_at=old, created_at=old,
                delivered_at=old if status == "delivered" else None,
            ))
        session.add(WebhookDelivery(
            id="whd_new_delivered", account_id=account.id, url="http://hooks.test/", body="{}",
            status="delivered", attempts=1, delivered_at=utc_now(),
        ))

    assert await prune_webhook_deliveries(sessions, dt.timedelta(days=7)) == 2

    async with sessions() as session:
        left = sorted((await session.scalars(select(WebhookDelivery.id))).all())
    assert left == ["whd_batch", "whd_new_delivered", "whd_old_pending"]

    image = batch.images[0]
    assert await images.mark_image_failed(sessions, image.id, error_code="x", error_message="y") is not None
    assert await batches.complete_batch_if_done(sessions, batch.id) is not None
    async with sessions.begin() as session:
        await session.execute(update(Image).where(Image.id == image.id).values(completed_at=old))
        await session.execute(update(Batch).where(Batch.id == batch.id).values(completed_at=old))
    expired = await retention.delete_expired_images(sessions, "pro", dt.timedelta(days=7), limit=10)
    assert [entry.id for entry in expired] == [image.id]
    assert await retention.delete_expired_images(sessions, "pro", dt.timedelta(days=7), limit=10) == []
    assert await retention.delete_emptied_batches(sessions, "pro", dt.timedelta(days=7)) == 1
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Batch)) == 0
        assert await session.scalar(
            select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.id == "whd_batch")
        ) == 0


async def test_a_sweep_is_claimed_by_one_replica_at_a_time(sessions: Sessions) -> None:
    """A job lease goes to one claimer; a finished run frees it; an expired lease is taken over with a higher
    fencing token, and the old holder's finish is then refused."""
    other = Claim(replica="other-replica", lease=dt.timedelta(seconds=30))
    first = await claim_job(sessions, "retention", CLAIM)
    assert first == 1
    assert await claim_job(sessions, "retention", other) is None
    assert await finish_job(sessions, "retention", first)
    second = await claim_job(sessions, "retention", other)
    assert second == 2

    expired = Claim(replica="test-replica", lease=dt.timedelta(seconds=-1))
    assert await finish_job(sessions, "retention", second)
    stale = await claim_job(sessions, "retention", expired)  # a lease that has already run out
    assert stale == 3
    taken_over = await claim_job(sessions, "retention", other)
    assert taken_over == 4
    assert not await finish_job(sessions, "retention", stale)
    assert await finish_job(sessions, "retention", taken_over)
