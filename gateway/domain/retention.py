"""Retention: finished images of a plan deleted once older than the plan keeps them (with the keys of every
object they may have left), then the batches they emptied."""

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, exists, func, select

from gateway.domain.stored_objects import ImageObjects, image_keys
from gateway.store.database import Sessions
from gateway.store.tables import Account, Batch, Image, utc_now


@dataclass(frozen=True, slots=True)
class ExpiredImage:
    """An image record deleted by retention, and the keys of every object it may have left (see image_keys)."""

    id: str
    storage_keys: tuple[str, ...]


async def delete_expired_images(
    sessions: Sessions, plan: str, older_than: dt.timedelta, *, limit: int
) -> list[ExpiredImage]:
    """Delete up to `limit` finished images of accounts on `plan` finished more than `older_than` ago, and
    return them (each returned to one caller only: the DELETE is conditional), so their files can be deleted.
    Images still processing are never deleted."""
    cutoff = utc_now() - older_than
    async with sessions() as session:
        candidates = list(
            (
                await session.scalars(
                    select(Image.id)
                    .join(Account, Account.id == Image.account_id)
                    .where(
                        Account.plan == plan, Image.status.in_(("completed", "failed")),
                        func.coalesce(Image.completed_at, Image.created_at) < cutoff,
                    )
                    .order_by(Image.completed_at)
                    .limit(limit)
                )
            ).all()
        )
    if not candidates:
        return []
    async with sessions.begin() as session:
        deleted = await session.execute(
            delete(Image)
            .where(Image.id.in_(candidates), Image.status.in_(("completed", "failed")))
            .returning(
                Image.id, Image.output_format, Image.attempt, Image.storage_key, Image.source_key, Image.bg_source_key
            )
            .execution_options(synchronize_session=False)
        )
        rows = deleted.all()
    return [ExpiredImage(row.id, tuple(image_keys(ImageObjects(**row._mapping)))) for row in rows]


async def delete_emptied_batches(sessions: Sessions, plan: str, older_than: dt.timedelta) -> int:
    """Delete the completed batches of accounts on `plan` older than `older_than` that have no image left
    (retention deleted them); their webhook outbox rows go with them. Returns how many."""
    cutoff = utc_now() - older_than
    has_images = exists().where(Image.batch_id == Batch.id)
    on_plan = select(Account.id).where(Account.plan == plan)
    async with sessions.begin() as session:
        connection = await session.connection()
        deleted = await connection.execute(
            delete(Batch).where(
                Batch.status == "completed", Batch.account_id.in_(on_plan),
                func.coalesce(Batch.completed_at, Batch.created_at) < cutoff, ~has_images,
            )
        )
    return deleted.rowcount
