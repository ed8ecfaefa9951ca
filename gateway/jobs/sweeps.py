"""Periodic background jobs every replica runs, each claimed in the database so one replica at a time does it:
failing abandoned single images, closing and announcing finished batches, retention, pruning the webhook outbox
and expired idempotency keys, and (less often) removing stored objects that no image references."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway.domain import batches, idempotency, leases, quota, retention, stored_objects
from gateway.domain.leases import Claim
from gateway.jobs.batch_runner import BatchRunner
from gateway.store.database import Sessions
from gateway.store.storage import OutputStorage
from gateway.store.tables import Batch, JobLease, WebhookDelivery, utc_now

_LOGGER = logging.getLogger(__name__)

# Retention deletes at most this many images per plan per run, so one run stays short and its lease holds.
RETENTION_CHUNK = 500


async def claim_job(sessions: Sessions, name: str, claim: Claim, every: dt.timedelta | None = None) -> int | None:
    """Take the lease on the job `name` (one conditional UPDATE: one replica wins); return its fencing token,
    or None if another live replica holds it, or (given `every`) it last ran less than `every` ago."""
    now = utc_now()
    due = [] if every is None else [or_(JobLease.last_run_at.is_(None), JobLease.last_run_at < now - every)]
    async with sessions.begin() as session:
        connection = await session.connection()
        insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        await connection.execute(
            insert(JobLease).values(name=name, token=0).on_conflict_do_nothing(index_elements=[JobLease.name])
        )
        claimed = await connection.execute(
            update(JobLease)
            .where(JobLease.name == name, or_(JobLease.locked_until.is_(None), JobLease.locked_until < now), *due)
            .values(token=JobLease.token + 1, locked_until=now + claim.lease, locked_by=claim.replica)
            .returning(JobLease.token)
        )
        return claimed.scalar_one_or_none()


async def finish_job(sessions: Sessions, name: str, token: int) -> bool:
    """Record the run and release the lease, only if it is still ours (`token`); say whether it was."""
    async with sessions.begin() as session:
        connection = await session.connection()
        finished = await connection.execute(
            update(JobLease)
            .where(JobLease.name == name, JobLease.token == token)
            .values(locked_until=None, locked_by=None, last_run_at=utc_now())
        )
    return finished.rowcount == 1


@dataclass(frozen=True, slots=True)
class Retention:
    """How long finished images (record, cutout and original) are kept, per plan; and delivered or failed
    webhook outbox rows."""

    images_by_plan: Mapping[str, dt.timedelta]
    webhook_deliveries: dt.timedelta


@dataclass(frozen=True, slots=True)
class OrphanSweep:
    """How often the stored objects are listed for orphans (a full listing: hourly, not every sweep), and how old
    an unreferenced object must be to count as one (an upload stored before its batch is recorded is younger)."""

    every: dt.timedelta
    grace: dt.timedelta


async def _unannounced_batches(sessions: Sessions) -> list[Batch]:
    """Completed batches with a webhook_url whose 'batch.completed' was never recorded in the outbox: the
    replica that completed them stopped between the flip and the enqueue."""
    announced = exists().where(WebhookDelivery.batch_id == Batch.id)
    async with sessions() as session:
        batches = await session.scalars(
            select(Batch)
            .where(Batch.status == "completed", Batch.webhook_url.is_not(None), ~announced)
            .order_by(Batch.completed_at, Batch.id)
        )
        return list(batches.all())


async def prune_webhook_deliveries(sessions: Sessions, older_than: dt.timedelta) -> int:
    """Delete outbox rows delivered (or given up) more than `older_than` ago; returns how many. Rows that
    announce a batch stay while the batch does (they mark it announced) and go with it."""
    cutoff = utc_now() - older_than
    async with sessions.begin() as session:
        connection = await session.connection()
        pruned = await connection.execute(
            delete(WebhookDelivery).where(
                WebhookDelivery.status.in_(("delivered", "failed")),
                WebhookDelivery.batch_id.is_(None),
                or_(
                    WebhookDelivery.delivered_at < cutoff,
                    WebhookDelivery.delivered_at.is_(None) & (WebhookDelivery.created_at < cutoff),
                ),
            )
        )
    return pruned.rowcount


class Sweeper:
    """Runs every sweep once at start and then every `interval_s`, on every replica; each sweep is a claimed
    job, and each of its writes is conditional anyway, so replicas sweeping together never act twice."""

    def __init__(
        self,
        sessions: Sessions,
        storage: OutputStorage,
        batches: BatchRunner,
        claim: Claim,
        *,
        interval_s: float,
        abandoned_after: dt.timedelta,
        retention: Retention,
        orphans: OrphanSweep,
    ) -> None:
        self._sessions = sessions
        self._storage = storage
        self._batches = batches
        self._claim = claim
        self._interval_s = interval_s
        self._abandoned_after = abandoned_after
        self._retention = retention
        self._orphans = orphans
        self._task: asyncio.Task[None] | None = None
        # Each job, and how long after its last run it is due again (None: at every sweep).
        self._jobs: dict[str, tuple[Callable[[], Awaitable[None]], dt.timedelta | None]] = {
            "abandoned_images": (self.fail_abandoned_images, None),
            "finished_batches": (self.close_finished_batches, None),
            "retention": (self.apply_retention, None),
            "webhook_outbox_pruning": (self.prune_webhook_outbox, None),
            "idempotency_keys_pruning": (self.prune_idempotency_keys, None),
            "orphaned_objects": (self.remove_orphaned_objects, orphans.every),
        }

    async def start(self) -> None:
        """Run every sweep once now (so a restart cleans up before serving), then periodically."""
        await self.run_once()
        self._task = asyncio.create_task(self._periodically(), name="sweeps")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run_once(self) -> list[str]:
        """Run every sweep whose lease this replica wins; return the names of those it ran."""
        ran = []
        for name, (job, every) in self._jobs.items():
            try:
                token = await claim_job(self._sessions, name, self._claim, every)
                if token is None:
                    _LOGGER.debug("sweep %s is being run by another replica, or is not due", name)
                    continue
                try:
                    await job()
                finally:
                    if not await finish_job(self._sessions, name, token):
                        _LOGGER.warning("sweep %s outlived its lease; another replica may have run it too", name)
                ran.append(name)
            except asyncio.CancelledError:
                raise
            except Exception:
                _LOGGER.exception("sweep %s failed; it runs again in %.0fs", name, self._interval_s)
        return ran

    async def _periodically(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.run_once()

    async def fail_abandoned_images(self) -> None:
        """Single images whose gateway stopped mid-request: failed, and their quota given back (the update
        returns each image to one replica only)."""
        for image in await leases.fail_abandoned_images(self._sessions, self._abandoned_after):
            _LOGGER.info("image %s was abandoned by a stopped gateway; marked failed", image.id)
            await quota.release_images(
                self._sessions, image.account_id, 1, month=quota.current_month(image.created_at)
            )
            # Its sources, and the output of an attempt killed between its put and its commit.
            await stored_objects.delete_image_objects(self._storage, image)

    async def close_finished_batches(self) -> None:
        """Batches whose last image's replica stopped before flipping them, or after the flip but before the
        webhook was recorded."""
        for batch_id in await batches.list_finished_batches_to_close(self._sessions):
            _LOGGER.info("batch %s has no image left processing; completing it", batch_id)
            await self._batches.close_batch(batch_id)
        for batch in await _unannounced_batches(self._sessions):
            _LOGGER.info("batch %s completed without its webhook recorded; recording it now", batch.id)
            await self._batches.announce(batch)

    async def apply_retention(self) -> None:
        """Delete finished images (record, cutout, original) past their plan's retention, then the batches
        they emptied. Files are deleted only for the records this replica's DELETE removed."""
        for plan, keep in self._retention.images_by_plan.items():
            while True:
                expired = await retention.delete_expired_images(self._sessions, plan, keep, limit=RETENTION_CHUNK)
                for image in expired:
                    await stored_objects.delete_objects(self._storage, image.storage_keys)
                if expired:
                    _LOGGER.info("retention: deleted %d %s-plan images older than %s", len(expired), plan, keep)
                if len(expired) < RETENTION_CHUNK:
                    break
            emptied = await retention.delete_emptied_batches(self._sessions, plan, keep)
            if emptied:
                _LOGGER.info("retention: deleted %d emptied %s-plan batches", emptied, plan)

    async def remove_orphaned_objects(self) -> None:
        """Objects under outputs/ and sources/ that no image references, older than the grace period: left by a
        replica killed between a put and its commit (or a store error while cleaning up)."""
        removed = await stored_objects.remove_orphaned_objects(
            self._sessions, self._storage, older_than=self._orphans.grace
        )
        _LOGGER.info("orphan sweep: removed %d output(s) and %d source(s) no image references",
                     removed[stored_objects.OUTPUTS], removed[stored_objects.SOURCES])

    async def prune_webhook_outbox(self) -> None:
        pruned = await prune_webhook_deliveries(self._sessions, self._retention.webhook_deliveries)
        if pruned:
            _LOGGER.info("pruned %d finished webhook deliveries", pruned)

    async def prune_idempotency_keys(self) -> None:
        pruned = await idempotency.prune_expired(self._sessions)
        if pruned:
            _LOGGER.info("pruned %d expired idempotency keys", pruned)
