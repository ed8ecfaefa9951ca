"""Deleting an account for good: its rows (keys, images, batches, usage, webhooks, idempotency keys) in one
transaction, then every stored object of its images.

The rows go first: once they are gone nothing references the objects, so an object this cannot delete (a store
error, a crash between the two steps) is removed by the orphan sweep, and no image is ever left pointing at a
deleted file. A replica still processing one of the images finds its row gone when it commits and deletes its
own output (the images' fencing). Requests authenticated from a replica's key cache may still arrive for up to
auth_cache_ttl_s; disabling the account first and deleting it after that time avoids them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete, func, select

from gateway.domain.stored_objects import ImageObjects, delete_objects, image_keys
from gateway.store.database import Sessions
from gateway.store.storage import OutputStorage
from gateway.store.tables import Account, Batch, Image

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeletedAccount:
    """What deleting an account removed."""

    account_id: str
    name: str
    images: int
    batches: int
    objects: int


async def count_contents(sessions: Sessions, account_id: str) -> tuple[int, int]:
    """How many images and batches the account has (what a deletion would remove, for its confirmation)."""
    async with sessions() as session:
        images = await session.scalar(select(func.count()).select_from(Image).where(Image.account_id == account_id))
        batches = await session.scalar(select(func.count()).select_from(Batch).where(Batch.account_id == account_id))
    return images or 0, batches or 0


async def delete_account(sessions: Sessions, storage: OutputStorage, account_id: str) -> DeletedAccount | None:
    """Delete the account, every row that belongs to it and every stored object of its images; None if there
    is no such account. Objects that cannot be deleted now are logged and left to the orphan sweep."""
    async with sessions.begin() as session:
        account = await session.get(Account, account_id)
        if account is None:
            return None
        rows = (
            await session.execute(
                select(
                    Image.id, Image.output_format, Image.attempt, Image.storage_key, Image.source_key,
                    Image.bg_source_key,
                ).where(Image.account_id == account_id)
            )
        ).all()
        batches = await session.scalar(select(func.count()).select_from(Batch).where(Batch.account_id == account_id))
        name = account.name
        # The foreign keys cascade (ON DELETE CASCADE; SQLite's are switched on for every connection).
        await session.execute(delete(Account).where(Account.id == account_id))
    keys = [key for row in rows for key in image_keys(ImageObjects(*row))]
    removed = await delete_objects(storage, keys)
    _LOGGER.info("deleted account %s with %d image(s), %d batch(es) and %d stored object(s)",
                 account_id, len(rows), batches or 0, removed)
    return DeletedAccount(account_id, name, len(rows), batches or 0, removed)
