"""Processes batches in the background, a bounded number of images at once; resumes unfinished ones at start."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from sqlalchemy import exists, select

from gateway import accounts, images, quota
from gateway.database import Sessions
from gateway.errors import ApiError
from gateway.processing import ImageProcessor
from gateway.schemas import batch_json, batch_progress
from gateway.tables import Batch, Image, WebhookDelivery

_LOGGER = logging.getLogger(__name__)


async def _unannounced_batches(sessions: Sessions) -> list[Batch]:
    """Completed batches with a webhook_url whose 'batch.completed' was never recorded in the outbox: the
    gateway that completed them stopped between the flip and the enqueue."""
    announced = exists().where(WebhookDelivery.batch_id == Batch.id)
    async with sessions() as session:
        batches = await session.scalars(
            select(Batch)
            .where(Batch.status == "completed", Batch.webhook_url.is_not(None), ~announced)
            .order_by(Batch.completed_at, Batch.id)
        )
        return list(batches.all())


class BatchRunner:
    """submit() returns at once; each image is processed once; the batch webhook fires once."""

    def __init__(self, processor: ImageProcessor, concurrency: int) -> None:
        self._processor = processor
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, account_id: str, batch_id: str) -> None:
        task = asyncio.create_task(self._run(account_id, batch_id), name=f"batch {batch_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume(self, abandoned_after: dt.timedelta) -> int:
        """Picks up the batches a stopped gateway left processing (returns how many), announces the completed
        ones it left unannounced, and fails the single images it left behind, giving their quota back."""
        sessions = self._processor.sessions
        for image in await images.fail_abandoned_images(sessions, abandoned_after):
            _LOGGER.info("image %s was abandoned by a stopped gateway; marked failed", image.id)
            await quota.release_images(sessions, image.account_id, 1, month=quota.current_month(image.created_at))
        for batch in await _unannounced_batches(sessions):
            _LOGGER.info("batch %s completed without its webhook recorded; recording it now", batch.id)
            await self._announce(batch)
        pending = await images.list_processing_batches(sessions)
        for batch in pending:
            _LOGGER.info("resuming batch %s", batch.id)
            self.submit(batch.account_id, batch.id)
        return len(pending)

    async def join(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def close(self) -> None:
        """Stops work in flight; the images stay 'processing' in the database and resume at next start."""
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _image(self, image: Image, request_id: str) -> None:
        async with self._slots:
            try:
                await self._processor.process(image, None, request_id=request_id)
            except ApiError as error:
                _LOGGER.info("batch image %s failed: %s %s", image.id, error.code, error.message)

    async def _run(self, account_id: str, batch_id: str) -> None:
        sessions = self._processor.sessions
        batch = await images.get_batch(sessions, account_id, batch_id)
        if batch is None:
            return
        todo = [image for image in batch.images if image.status == "processing"]
        await asyncio.gather(*(self._image(image, f"{batch_id}-{image.id}") for image in todo))
        finished = await images.complete_batch_if_done(sessions, batch_id)
        if finished is not None:
            # A stop right here leaves the batch unannounced; resume() finds it by its missing outbox row.
            await self._announce(finished)

    async def _announce(self, finished: Batch) -> None:
        """Records the 'batch.completed' webhook, at most once per batch (the outbox row is unique per batch)."""
        if not finished.webhook_url:
            return
        account = await accounts.get_account(self._processor.sessions, finished.account_id)
        if account is not None:
            payload = {
                "success": True,
                "data": batch_json(finished, [self._processor.image_json(i) for i in finished.images]),
                "meta": {"event": "batch.completed", **batch_progress(finished)},
            }
            await self._processor.notify(account, finished.webhook_url, payload, batch_id=finished.id)
