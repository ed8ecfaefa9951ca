"""Processes batch images in the background: each replica claims images from the database under a lease (fairly
across accounts), renews it while working, and releases it when it stops; any replica takes over an expired one."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.domain import accounts, batches, images, leases, quota, stored_objects
from gateway.domain.processing import ImageProcessor
from gateway.errors import ApiError
from gateway.schemas import batch_progress, batch_result, dump
from gateway.store.outage import unreachable_store
from gateway.store.tables import Batch, Image

_LOGGER = logging.getLogger(__name__)


class BatchRunner:
    """Works on up to `concurrency` batch images at once, claimed one by one from the database.

    Nothing is assumed to be ours because we accepted it: submit() only wakes the claim loop, which also polls
    every `poll_interval_s`, so images submitted to a replica that died are finished by any live replica once
    their lease runs out. Each claim carries a fencing token (the image's attempt); the outcome is written only
    under it. An image whose claims were abandoned `max_attempts` times (it keeps killing its replicas) is
    failed; claims released by a graceful stop (close) do not count.
    """

    def __init__(
        self, processor: ImageProcessor, concurrency: int, *, poll_interval_s: float = 5.0, max_attempts: int = 3
    ) -> None:
        self._processor = processor
        self._concurrency = concurrency
        self._poll_interval_s = poll_interval_s
        self._max_attempts = max_attempts
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        # Images in flight here, by task, with the attempt we hold them under (released at a graceful stop).
        self._working: dict[asyncio.Task[None], Image] = {}
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start claiming; call once, inside the running loop."""
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._claim_loop(), name="batch claim loop")

    def submit(self, account_id: str, batch_id: str) -> None:
        """A batch was just recorded: look for claimable images now rather than at the next poll."""
        _LOGGER.debug("batch %s of account %s submitted; waking the claim loop", batch_id, account_id)
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Batch images this replica is working on now."""
        return len(self._working)

    async def _claim_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                while len(self._working) < self._concurrency:
                    image = await leases.claim_batch_image(self._processor.sessions, self._processor.claim)
                    if image is None:
                        break
                    self._start(image)
            except Exception:
                _LOGGER.exception("could not claim batch images; trying again in %.1fs", self._poll_interval_s)
            if len(self._working) >= self._concurrency:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)

    def _start(self, image: Image) -> None:
        task = asyncio.create_task(self._image(image), name=f"batch image {image.id}")
        self._working[task] = image
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._working.pop(task, None)
        self._slot_freed.set()
        self._wake.set()  # a slot is free: claim the next image now

    async def _image(self, image: Image) -> None:
        """Never raises (a background task has no caller). If the database (or anything else) fails midway the
        image stays 'processing' under our lease, which expires, and the claim loop takes it again: an outage
        costs the image one of its max_attempts claims, not the image."""
        assert image.batch_id is not None
        try:
            # Taken over: earlier attempts' replicas died (or lost their lease) after storing their outputs.
            await stored_objects.discard_earlier_attempts(self._processor.storage, image)
            if image.abandoned_claims >= self._max_attempts:
                await self._give_up(image)
            else:
                try:
                    await self._processor.process(image, None, request_id=f"{image.batch_id}-{image.id}")
                except ApiError as error:
                    _LOGGER.info("batch image %s failed: %s %s", image.id, error.code, error.message)
            await self.close_batch(image.batch_id)
        except Exception as exc:
            outage = unreachable_store(exc)
            if outage is None:
                _LOGGER.exception("batch image %s: unexpected failure; it is claimed again once its lease expires",
                                  image.id)
            else:
                _LOGGER.error("batch image %s: the %s is unreachable (%s); it is claimed again once its lease "
                              "expires", image.id, outage.store, outage.detail)

    async def _give_up(self, image: Image) -> None:
        failed = await images.mark_image_failed(
            self._processor.sessions, image.id, error_code="server_error",
            error_message="processing was interrupted too many times; please submit the image again",
            attempt=image.attempt,
        )
        if failed is not None:
            _LOGGER.error("batch image %s given up: %d of its %d claims were abandoned", image.id,
                          image.abandoned_claims, image.attempt - 1)
            await quota.release_images(
                self._processor.sessions, image.account_id, 1, month=quota.current_month(image.created_at)
            )

    async def close_batch(self, batch_id: str) -> None:
        """Flip the batch to 'completed' if none of its images is processing and announce it; the flip is
        conditional, so however many replicas try, one announces."""
        finished = await batches.complete_batch_if_done(self._processor.sessions, batch_id)
        if finished is not None:
            # A stop right here leaves the batch unannounced; the sweep finds it by its missing outbox row.
            await self.announce(finished)

    async def close(self) -> None:
        """Stop claiming, cancel work in flight and release its leases, so another replica takes it over at
        once, without counting the claim as abandoned (rolling restarts never fail an image); the images stay
        'processing' in the database."""
        held = list(self._working.values())
        await self._stop_tasks()
        for image in held:
            try:
                if await leases.release_image_lease(self._processor.sessions, image.id, image.attempt):
                    _LOGGER.info("released batch image %s (attempt %d) for another replica", image.id, image.attempt)
            except Exception:
                _LOGGER.exception("could not release batch image %s; its lease expires on its own", image.id)

    async def _stop_tasks(self) -> None:
        tasks = [task for task in (self._loop_task, *self._working) if task is not None]
        self._loop_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def announce(self, finished: Batch) -> None:
        """Records the 'batch.completed' webhook, at most once per batch (the outbox row is unique per batch)."""
        if not finished.webhook_url:
            return
        account = await accounts.get_account(self._processor.sessions, finished.account_id)
        if account is not None:
            payload = {
                "success": True,
                "data": dump(batch_result(finished, [self._processor.image_result(i) for i in finished.images])),
                "meta": {"event": "batch.completed", **dump(batch_progress(finished))},
            }
            await self._processor.notify(account, finished.webhook_url, payload, batch_id=finished.id)
