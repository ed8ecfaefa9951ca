"""Image and batch records: from 'processing' to 'completed' or 'failed', scoped to the owning account."""

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import exists, func, select, update

from gateway.accounts import new_public_id
from gateway.database import Sessions
from gateway.tables import Batch, Image, utc_now

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ImageSource:
    """Where an image to process comes from: a URL, or an upload (its filename, and where it waits in storage)."""

    original_url: str | None = None
    original_filename: str | None = None
    source_key: str | None = None


@dataclass(frozen=True, slots=True)
class ImagePage:
    """One page of an account's images, newest first, with how many images the account has in all."""

    images: list[Image]
    total: int


def _new_image(
    account_id: str,
    source: ImageSource,
    *,
    output_format: str,
    output_size: str,
    bg_color: str | None,
    webhook_url: str | None,
) -> Image:
    return Image(
        id=new_public_id("img"),
        account_id=account_id,
        original_url=source.original_url,
        original_filename=source.original_filename,
        source_key=source.source_key,
        output_format=output_format,
        output_size=output_size,
        bg_color=bg_color,
        status="processing",
        webhook_url=webhook_url,
    )


async def create_image(
    sessions: Sessions,
    account_id: str,
    source: ImageSource,
    *,
    output_format: str,
    output_size: str,
    bg_color: str | None = None,
    webhook_url: str | None = None,
) -> Image:
    """Record a new image job, status 'processing'."""
    image = _new_image(
        account_id,
        source,
        output_format=output_format,
        output_size=output_size,
        bg_color=bg_color,
        webhook_url=webhook_url,
    )
    async with sessions.begin() as session:
        session.add(image)
    return image


async def _finish_image(sessions: Sessions, image_id: str, **outcome: object) -> Image | None:
    # One conditional UPDATE, so an image finishes once even if a resumed gateway races the original one.
    async with sessions.begin() as session:
        finished = await session.scalars(
            update(Image)
            .where(Image.id == image_id, Image.status == "processing")
            .values(**outcome, completed_at=utc_now())
            .returning(Image)
        )
        return finished.one_or_none()


async def mark_image_completed(
    sessions: Sessions,
    image_id: str,
    *,
    storage_key: str,
    content_type: str,
    width: int,
    height: int,
    size_bytes: int,
) -> Image | None:
    """Record where the cutout is stored; None if the image is gone or no longer 'processing'."""
    return await _finish_image(
        sessions,
        image_id,
        status="completed",
        storage_key=storage_key,
        content_type=content_type,
        width=width,
        height=height,
        size_bytes=size_bytes,
    )


async def mark_image_failed(
    sessions: Sessions, image_id: str, *, error_code: str, error_message: str
) -> Image | None:
    """Record why the image could not be processed; None if the image is gone or no longer 'processing'."""
    return await _finish_image(
        sessions, image_id, status="failed", error_code=error_code, error_message=error_message
    )


async def get_image(sessions: Sessions, account_id: str, image_id: str) -> Image | None:
    """Return the account's image with this id; another account's image comes back as None."""
    async with sessions() as session:
        return await session.scalar(select(Image).where(Image.id == image_id, Image.account_id == account_id))


async def list_images(sessions: Sessions, account_id: str, *, limit: int, offset: int = 0) -> ImagePage:
    """Return up to `limit` of the account's images after skipping `offset`, newest first, and the total."""
    if limit < 1 or offset < 0:
        raise ValueError(f"limit must be positive and offset non-negative, not {limit} and {offset}")
    async with sessions() as session:
        total = await session.scalar(
            select(func.count()).select_from(Image).where(Image.account_id == account_id)
        )
        images = await session.scalars(
            select(Image)
            .where(Image.account_id == account_id)
            .order_by(Image.created_at.desc(), Image.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return ImagePage(images=list(images.all()), total=total or 0)


async def delete_image(sessions: Sessions, account_id: str, image_id: str) -> Image | None:
    """Delete the account's image record and return it, so the caller can delete its stored files; else None."""
    async with sessions.begin() as session:
        image = await session.scalar(
            select(Image).where(Image.id == image_id, Image.account_id == account_id)
        )
        if image is None:
            return None
        await session.delete(image)
    return image


async def create_batch(
    sessions: Sessions,
    account_id: str,
    sources: Sequence[ImageSource],
    *,
    output_format: str,
    output_size: str,
    bg_color: str | None = None,
    webhook_url: str | None = None,
) -> Batch:
    """Record a batch and one 'processing' image per source, in submission order, in one transaction.

    The webhook belongs to the batch (sent once all images are done), so the images carry none.
    """
    if not sources:
        raise ValueError("a batch needs at least one image")
    batch = Batch(
        id=new_public_id("batch"),
        account_id=account_id,
        status="processing",
        total_images=len(sources),
        options={"output_format": output_format, "output_size": output_size, "bg_color": bg_color},
        webhook_url=webhook_url,
    )
    for position, source in enumerate(sources):
        image = _new_image(
            account_id,
            source,
            output_format=output_format,
            output_size=output_size,
            bg_color=bg_color,
            webhook_url=None,
        )
        image.position = position
        batch.images.append(image)
    async with sessions.begin() as session:
        session.add(batch)
    _LOGGER.info("created batch %s of %d images for account %s", batch.id, len(sources), account_id)
    return batch


async def get_batch(sessions: Sessions, account_id: str, batch_id: str) -> Batch | None:
    """Return the account's batch with its images in submission order; another account's batch is None."""
    async with sessions() as session:
        return await session.scalar(select(Batch).where(Batch.id == batch_id, Batch.account_id == account_id))


async def complete_batch_if_done(sessions: Sessions, batch_id: str) -> Batch | None:
    """Mark the batch 'completed' once none of its images is processing; return it only to the caller who did.

    Call it after each image of the batch is marked done. The conditional UPDATE flips the status at most
    once however many callers race, so whoever gets the batch back sends its webhook exactly once.
    """
    still_processing = exists().where(Image.batch_id == batch_id, Image.status == "processing")
    async with sessions.begin() as session:
        connection = await session.connection()
        flipped = await connection.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.status == "processing", ~still_processing)
            .values(status="completed", completed_at=utc_now())
        )
        if flipped.rowcount != 1:
            return None
        batch = await session.get(Batch, batch_id)
    _LOGGER.info("batch %s completed", batch_id)
    return batch


async def list_processing_batches(sessions: Sessions) -> list[Batch]:
    """Return every batch still 'processing', oldest first, with its images, so a restarted gateway can resume."""
    async with sessions() as session:
        batches = await session.scalars(
            select(Batch).where(Batch.status == "processing").order_by(Batch.created_at, Batch.id)
        )
        return list(batches.all())


async def get_image_by_id(sessions: Sessions, image_id: str) -> Image | None:
    """Return any account's image with this id: only for links whose signature already proved the right to it."""
    async with sessions() as session:
        return await session.scalar(select(Image).where(Image.id == image_id))


async def fail_abandoned_images(sessions: Sessions, older_than: dt.timedelta) -> list[Image]:
    """Mark failed the single (non-batch) images still 'processing' after `older_than`: the gateway that took
    them stopped mid-request (its caller saw the connection drop). Batches are resumed instead. Safe with
    several replicas as long as `older_than` exceeds the longest a live request can take."""
    cutoff = utc_now() - older_than
    async with sessions.begin() as session:
        failed = await session.scalars(
            update(Image)
            .where(Image.status == "processing", Image.batch_id.is_(None), Image.created_at < cutoff)
            .values(
                status="failed", error_code="server_error",
                error_message="processing was interrupted by a gateway restart; please submit the image again",
                completed_at=utc_now(),
            )
            .returning(Image)
        )
        return list(failed.all())
