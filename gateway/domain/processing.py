"""Turns one image record into a stored cut-out: get the source bytes, call inference, store, record, notify."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from contract.options import OutputFormat, RemovalOptions
from gateway import metrics, schemas
from gateway.domain import images, leases, quota
from gateway.domain.leases import Claim
from gateway.domain.links import OutputLinks
from gateway.domain.outbox import WebhookOutbox
from gateway.domain.stored_objects import delete_objects, output_key, source_keys
from gateway.errors import ApiError, InvalidRequest, ServerError
from gateway.net.inference import InferenceClient
from gateway.net.netguard import AddressPolicy
from gateway.net.urlfetch import FetchError, fetch_image
from gateway.schemas import ImageFields, image_result
from gateway.store.database import Sessions
from gateway.store.storage import OutputStorage, StoredObjectNotFound
from gateway.store.tables import Account, Image

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchLimits:
    policy: AddressPolicy
    max_bytes: int
    connect_timeout_s: float
    total_timeout_s: float


class ImageProcessor:
    """Shared by single requests and batches, so both store, count and notify the same way."""

    def __init__(
        self,
        sessions: Sessions,
        storage: OutputStorage,
        inference: InferenceClient,
        webhooks: WebhookOutbox,
        links: OutputLinks,
        fetch_limits: FetchLimits,
        claim: Claim,
        heartbeat_s: float,
    ) -> None:
        self.sessions = sessions
        self.claim = claim
        self._heartbeat_s = heartbeat_s
        self.storage = storage
        self.inference = inference
        self.webhooks = webhooks
        self.links = links
        self._fetch = fetch_limits

    @property
    def address_policy(self) -> AddressPolicy:
        """Which addresses a user's URL may reach (webhooks, images, backgrounds)."""
        return self._fetch.policy

    def output_url(self, image: ImageFields) -> str | None:
        if image.status != "completed":
            return None
        return self.links.url_for(image.id, OutputFormat(image.output_format).extension)

    def image_result(self, image: ImageFields) -> schemas.Image:
        return image_result(image, self.output_url(image))

    async def fetch(self, url: str, field: str = "url") -> bytes:
        """The bytes behind a user's URL, through the SSRF guard and size limit; errors are 400s naming field."""
        try:
            fetched = await fetch_image(
                url,
                policy=self._fetch.policy,
                max_bytes=self._fetch.max_bytes,
                connect_timeout=self._fetch.connect_timeout_s,
                total_timeout=self._fetch.total_timeout_s,
            )
        except FetchError as exc:
            raise InvalidRequest(f"{field}: {exc}") from exc
        return fetched.content

    async def _source_bytes(self, image: Image) -> bytes:
        if image.source_key:
            try:
                return await self.storage.get(image.source_key)
            except StoredObjectNotFound as exc:
                raise ServerError("the uploaded original is missing") from exc
        if image.original_url:
            return await self.fetch(image.original_url)
        raise ServerError("the image has no source")

    async def _background_bytes(self, image: Image, options: RemovalOptions) -> bytes | None:
        """The background image's bytes: an upload waiting in storage, or fetched from bg_image_url."""
        if image.bg_source_key:
            try:
                return await self.storage.get(image.bg_source_key)
            except StoredObjectNotFound as exc:
                raise ServerError("the uploaded background image is missing") from exc
        if options.bg_image_url:
            return await self.fetch(options.bg_image_url, "bg_image_url")
        return None

    @contextlib.asynccontextmanager
    async def _heartbeat(self, image: Image) -> AsyncIterator[None]:
        """Renews our lease on the image every heartbeat_s while the body runs; a lost lease is only logged:
        the fenced writes that follow then refuse our result."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(self._heartbeat_s)
                try:
                    if not await leases.renew_image_lease(self.sessions, image.id, image.attempt, self.claim):
                        _LOGGER.warning("image %s: lease of attempt %d lost", image.id, image.attempt)
                        return
                except Exception:
                    _LOGGER.exception("image %s: could not renew the lease; retrying", image.id)

        task = asyncio.create_task(beat(), name=f"lease {image.id}")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def process(
        self, image: Image, data: bytes | None, *, request_id: str, background: bytes | None = None
    ) -> Image:
        """Completes the image (returned) or marks it failed and raises the ApiError; see process_keeping_output."""
        done, _output = await self.process_keeping_output(image, data, request_id=request_id, background=background)
        return done

    async def process_keeping_output(
        self, image: Image, data: bytes | None, *, request_id: str, background: bytes | None = None
    ) -> tuple[Image, bytes]:
        """Completes the image (returned with the cut-out's bytes, which a single request may answer with) or
        marks it failed and raises the ApiError; under our claim (the
        image's `attempt`) while it is renewed, and every write of the outcome is conditional on that attempt.

        An image is billed once its output is stored: the quota is given back whenever our own update made the
        image failed (a storage write that failed included). An image deleted mid-processing, or finished by a
        replica that took it over, is never refunded here.
        """
        fenced = image.attempt or None
        won = False
        completed = False
        refused = False
        stored: str | None = None  # our output's key once put
        async with self._heartbeat(image):
            try:
                source = data if data is not None else await self._source_bytes(image)
                options = images.options_of(image)
                if background is None:
                    background = await self._background_bytes(image, options)
                metrics.BYTES_IN.inc(len(source))
                result = await self.inference.remove_background(
                    source, options, request_id=request_id, background=background
                )
                box = result.metadata.foreground if result.metadata.HasField("foreground") else None
                key = output_key(image.id, image.output_format, image.attempt)
                stored = key
                await self.storage.put(key, result.data, result.metadata.content_type)
                done = await images.mark_image_completed(
                    self.sessions, image.id, storage_key=key, content_type=result.metadata.content_type,
                    width=result.metadata.width, height=result.metadata.height, size_bytes=len(result.data),
                    attempt=fenced, foreground=(box.left, box.top, box.width, box.height) if box else None,
                )
                if done is None:  # deleted, or taken over by another replica meanwhile (finally drops our file)
                    refused = True
                    raise InvalidRequest("the image was deleted while it was processing")
                won = completed = True
                metrics.IMAGES.labels("completed").inc()
                metrics.BYTES_OUT.inc(len(result.data))
                return done, result.data
            except Exception as exc:
                error = exc if isinstance(exc, ApiError) else ServerError("the image could not be processed")
                if not isinstance(exc, ApiError):
                    _LOGGER.exception("request %s: image %s failed unexpectedly", request_id, image.id)
                if not won:
                    failed = await images.mark_image_failed(
                        self.sessions, image.id, error_code=error.code, error_message=error.message, attempt=fenced
                    )
                    won = failed is not None
                    if won:
                        metrics.IMAGES.labels("failed").inc()
                    if won:
                        # Billed once the output is stored: a failure before that does not count.
                        await quota.release_images(
                            self.sessions, image.account_id, 1, month=quota.current_month(image.created_at)
                        )
                raise error from exc
            finally:
                # The original is the next owner's to read unless our update finished the image. Our output's key
                # is ours alone (it names our attempt): nobody will read it once we know our commit was refused or
                # the image failed under us. When we cannot know (cancelled, or the database failed mid-commit) it
                # stays for the next attempt's takeover or the orphan sweep, which read the image's row first.
                leftovers = source_keys(image) if won else []
                if stored and (refused or (won and not completed)):
                    leftovers.append(stored)
                await delete_objects(self.storage, leftovers)

    async def notify(
        self, account: Account, url: str | None, payload: dict[str, Any], *, batch_id: str | None = None
    ) -> None:
        """Records a signed webhook in the outbox (sent in the background, resumed after a restart); never
        raises, and only waits for the one insert."""
        if url:
            await self.webhooks.enqueue(account.id, url, payload, batch_id=batch_id)
