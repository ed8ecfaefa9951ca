"""The removal use-cases every API calls, from parsed input to outcome: submit one image and wait for its
cut-out, submit a batch to run in the background (by URL or uploaded files), delete an image and its stored
objects, open a stored cut-out. Handlers parse, call one of these and answer; they never touch the store.

Each use-case bills, records, stores and notifies the same way whichever API called it: quota is reserved
before any inference and given back when nothing was recorded (or, for a single image, when it failed); a
single image that fails leaves nothing in the library and sends the failure webhook; a batch's uploads are
stored before it is recorded and removed again if it is not.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from contract.models import retired_model_message
from contract.options import RemovalOptions
from gateway import metrics, schemas
from gateway.domain import batches, images, quota, stored_objects
from gateway.domain.accounts import Account
from gateway.domain.admission import check_batch_queue
from gateway.domain.images import ImageSource
from gateway.domain.outputs import StoredObject, open_output
from gateway.domain.plans import get_plan
from gateway.domain.processing import ImageProcessor
from gateway.errors import ApiError, InvalidRequest, NotFound, QuotaExceeded
from gateway.net.urlfetch import FetchError, check_url
from gateway.schemas import dump
from gateway.store.tables import Batch as Batch  # noqa: PLC0414 (re-exported for the HTTP handlers)
from gateway.store.tables import Image


class BatchQueue(Protocol):
    """Where a recorded batch is announced so that its images are claimed now (gateway.jobs.batch_runner)."""

    def submit(self, account_id: str, batch_id: str) -> None: ...


class SpooledFile(Protocol):
    """An uploaded file waiting on local disk (the HTTP layer's UploadedFile is one)."""

    @property
    def path(self) -> Path: ...
    @property
    def filename(self) -> str: ...


@dataclass(frozen=True)
class BatchAdmission:
    """How many batch images an account may have waiting, and the Retry-After of a refusal."""

    max_queued_images: int
    retry_after_s: int


@dataclass(frozen=True)
class Completed:
    """A single image done: its record as the API shows it (with output_url) and the cut-out's bytes."""

    image: schemas.Image
    output: bytes


def seconds_to_next_month(now: dt.datetime | None = None) -> int:
    now = now or dt.datetime.now(dt.UTC)
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (first + dt.timedelta(days=32)).replace(day=1)
    return max(1, int((next_month - now).total_seconds()))


class Removals:
    """The use-cases over the parts they need; cheap to build (handlers build one per request)."""

    def __init__(self, processor: ImageProcessor, batches: BatchQueue, admission: BatchAdmission) -> None:
        self._processor = processor
        self._sessions = processor.sessions
        self._batches = batches
        self._admission = admission

    # --- Checks a caller makes before it commits to the work --------------------------------------------------

    def check_url(self, field: str, url: str) -> None:
        """Scheme and literal-address checks of a user's URL before any work (names are checked again when
        resolved); a 400 naming `field`."""
        try:
            check_url(url, self._processor.address_policy)
        except FetchError as exc:
            raise InvalidRequest(f"{field}: {exc}") from exc

    def check_added_urls(self, options: RemovalOptions, webhook_url: str | None) -> None:
        """The URLs a request adds to its image's: where to send the webhook, the background image."""
        if webhook_url:
            self.check_url("webhook_url", webhook_url)
        if options.bg_image_url:
            self.check_url("bg_image_url", options.bg_image_url)

    async def check_model(self, options: RemovalOptions) -> None:
        """A batch names its model before it is queued: an unknown one is a 400 now, not 20 failed images
        later. (A single image learns it from the inference service's own answer, which names the same
        models.)"""
        if not options.model:
            return
        models = await self._processor.inference.list_models()
        if options.model not in {m.name for m in models}:
            retired = retired_model_message(options.model)
            if retired:
                raise InvalidRequest(f"model: {retired}")
            available = ", ".join(sorted(m.name for m in models))
            raise InvalidRequest(f"model: unknown model {options.model!r}; available: {available}")

    async def check_batch_queue(self, account: Account, adding: int) -> None:
        """429 when the account's waiting batch images and `adding` more would pass the cap."""
        await check_batch_queue(
            self._sessions, account.id, adding=adding, cap=self._admission.max_queued_images,
            retry_after_s=self._admission.retry_after_s,
        )

    # --- Use-cases ------------------------------------------------------------------------------------------

    async def submit_single(
        self,
        account: Account,
        source: ImageSource,
        options: RemovalOptions,
        *,
        data: bytes | None,
        background: bytes | None = None,
        webhook_url: str | None = None,
        request_id: str,
    ) -> Completed:
        """One image now: checks its added URLs, reserves one image of quota, records the image (claimed by
        this replica), processes it (`data`, else fetched from source.original_url; over `background` when
        given) and sends the webhook. A failure is the ApiError to answer with: the image is deleted (a
        refused image leaves nothing in the library), its quota given back, the failure webhook sent."""
        processor = self._processor
        self.check_added_urls(options, webhook_url)
        async with self._reservation(account, 1):
            image = await images.create_image(
                self._sessions, account.id, source, output_format=options.output_format.value,
                output_size=options.output_size.value, bg_color=options.bg_color, webhook_url=webhook_url,
                claim=processor.claim, extra_options=images.stored_extra(options),
            )
        try:
            done, output = await processor.process_keeping_output(
                image, data, request_id=request_id, background=background
            )
        except ApiError as error:
            # The caller gets the error and never the id; the failure webhook names no id that would answer 404.
            await images.delete_image(self._sessions, account.id, image.id)
            await processor.notify(account, webhook_url, {**error.envelope(), "meta": {"event": "image.failed"}})
            raise
        result = processor.image_result(done)
        await processor.notify(
            account, webhook_url, {"success": True, "data": dump(result), "meta": {"event": "image.completed"}}
        )
        return Completed(result, output)

    async def submit_batch(
        self, account: Account, urls: Sequence[str], options: RemovalOptions, *, webhook_url: str | None = None
    ) -> Batch:
        """A batch of images by URL, processed in the background: checks the queue cap, reserves quota for
        every image, records the batch and wakes the batch runner. The caller has checked the URLs
        (check_url, check_added_urls) and the model (check_model)."""
        await self.check_batch_queue(account, len(urls))
        async with self._reservation(account, len(urls)):
            sources = [ImageSource(original_url=url) for url in urls]
            return await self._record_batch(account, sources, options, webhook_url)

    async def submit_uploaded_batch(
        self,
        account: Account,
        uploads: Sequence[SpooledFile],
        options: RemovalOptions,
        *,
        background: SpooledFile | None = None,
        webhook_url: str | None = None,
    ) -> Batch:
        """A batch of uploaded files: like submit_batch, with each original (and a copy of the background
        image, one per image: each image removes its own when done) stored first, so a gateway restarted
        mid-batch still has them; what was stored is removed again if the batch is not recorded."""
        await self.check_batch_queue(account, len(uploads))
        storage = self._processor.storage
        stored: list[str] = []  # every key put so far
        async with self._reservation(account, len(uploads)):
            try:
                sources: list[ImageSource] = []
                for upload in uploads:
                    key = stored_objects.new_source_key("src")
                    stored.append(key)
                    await storage.put_file(key, upload.path, "application/octet-stream")
                    bg_key = None
                    if background is not None:
                        bg_key = stored_objects.new_source_key("bg")
                        stored.append(bg_key)
                        await storage.put_file(bg_key, background.path, "application/octet-stream")
                    sources.append(ImageSource(
                        original_filename=upload.filename[:255] or None, source_key=key, bg_source_key=bg_key
                    ))
                return await self._record_batch(account, sources, options, webhook_url)
            except BaseException:
                await stored_objects.delete_objects(storage, stored)
                raise

    async def delete_image(self, account_id: str, image_id: str) -> Image | None:
        """Deletes the account's image record and every stored object of it (each attempt's output, a waiting
        original or background); None when the account has no such image."""
        image = await images.delete_image(self._sessions, account_id, image_id)
        if image is not None:
            await stored_objects.delete_image_objects(self._processor.storage, image)
        return image

    async def open_output(self, image: Image, *, gone: str = "the file is gone") -> StoredObject:
        """The image's stored cut-out, opened for streaming (never read whole); NotFound (404) with `gone` when
        it has none or the store no longer has it."""
        if image.storage_key is None:
            raise NotFound(gone)
        return await open_output(self._processor.storage, image.storage_key, gone=gone)

    # --- Parts ------------------------------------------------------------------------------------------------

    async def _record_batch(
        self, account: Account, sources: list[ImageSource], options: RemovalOptions, webhook_url: str | None
    ) -> Batch:
        batch = await batches.create_batch(
            self._sessions, account.id, sources, output_format=options.output_format.value,
            output_size=options.output_size.value, bg_color=options.bg_color, webhook_url=webhook_url,
            extra_options=images.stored_extra(options),
        )
        self._batches.submit(account.id, batch.id)
        return batch

    @contextlib.asynccontextmanager
    async def _reservation(self, account: Account, n: int) -> AsyncIterator[None]:
        """Reserves n images for the body, which records them; if it fails (a database or storage error) the
        reservation is given back: nothing is billed for images that were never recorded."""
        await self._reserve(account, n)
        try:
            yield
        except BaseException:
            await quota.release_images(self._sessions, account.id, n)
            raise

    async def _reserve(self, account: Account, n: int) -> None:
        """Counts n images against the monthly quota before any inference, or refuses with 429 quota_exceeded."""
        plan = get_plan(account.plan)
        if not await quota.reserve_images(self._sessions, account.id, n, plan.monthly_images):
            metrics.REFUSALS.labels("quota").inc()
            raise QuotaExceeded(
                f"the {plan.name} plan's {plan.monthly_images} images per month are used up"
                + (f"; this batch needs {n}" if n > 1 else ""),
                headers={"Retry-After": str(seconds_to_next_month())},
            )
