"""Batch records: a batch and its images recorded in one transaction, read back in submission order, and
completed exactly once when its last image is done."""

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import exists, select, update

from gateway.domain.accounts import new_public_id
from gateway.domain.images import ImageSource, new_image
from gateway.store.database import Sessions
from gateway.store.tables import Batch, Image, utc_now

_LOGGER = logging.getLogger(__name__)


async def create_batch(
    sessions: Sessions,
    account_id: str,
    sources: Sequence[ImageSource],
    *,
    output_format: str,
    output_size: str,
    bg_color: str | None = None,
    webhook_url: str | None = None,
    extra_options: dict[str, Any] | None = None,
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
        options={
            "output_format": output_format, "output_size": output_size, "bg_color": bg_color, **(extra_options or {})
        },
        webhook_url=webhook_url,
    )
    for position, source in enumerate(sources):
        image = new_image(
            account_id,
            source,
            output_format=output_format,
            output_size=output_size,
            bg_color=bg_color,
            webhook_url=None,
            extra_options=extra_options,
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


async def list_finished_batches_to_close(sessions: Sessions) -> list[str]:
    """Ids of batches still 'processing' although none of their images is: the replica that finished the last
    image stopped before it flipped the batch."""
    unfinished = exists().where(Image.batch_id == Batch.id, Image.status == "processing")
    async with sessions() as session:
        ids = await session.scalars(select(Batch.id).where(Batch.status == "processing", ~unfinished))
        return list(ids.all())
