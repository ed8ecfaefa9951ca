"""Monthly image quota: exact reservations under concurrency, on SQLite and PostgreSQL alike."""

import datetime as dt
import logging

from sqlalchemy import case, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.database import Sessions
from gateway.store.tables import Usage

_LOGGER = logging.getLogger(__name__)


def current_month(now: dt.datetime | None = None) -> str:
    """Return the UTC calendar month of `now` (default: this instant) as 'YYYY-MM'."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y-%m")


async def _ensure_month_row(connection: AsyncConnection, account_id: str, month: str) -> None:
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    await connection.execute(
        insert(Usage)
        .values(account_id=account_id, month=month, images_used=0)
        .on_conflict_do_nothing(index_elements=[Usage.account_id, Usage.month])
    )


async def reserve_images(
    sessions: Sessions, account_id: str, n: int, monthly_limit: int | None, *, month: str | None = None
) -> bool:
    """Count `n` more images this month if that stays within `monthly_limit` (None: unlimited); say if it did.

    One conditional UPDATE decides, so there is no read-then-write race: PostgreSQL re-checks the WHERE
    clause against the row a concurrent writer just committed, and SQLite serialises writers outright.
    """
    if n < 1:
        raise ValueError(f"reserve at least one image, not {n}")
    month = month or current_month()
    statement = (
        update(Usage)
        .where(Usage.account_id == account_id, Usage.month == month)
        .values(images_used=Usage.images_used + n)
    )
    if monthly_limit is not None:
        statement = statement.where(Usage.images_used + n <= monthly_limit)
    async with sessions.begin() as session:
        connection = await session.connection()
        await _ensure_month_row(connection, account_id, month)
        reserved = (await connection.execute(statement)).rowcount == 1
    if not reserved:
        _LOGGER.info("account %s is over its quota of %s images in %s", account_id, monthly_limit, month)
    return reserved


async def release_images(sessions: Sessions, account_id: str, n: int, *, month: str | None = None) -> None:
    """Give back `n` reserved images (failed images do not count), never going below zero.

    Pass the `month` the images were reserved in when a job may straddle a month boundary.
    """
    if n < 1:
        raise ValueError(f"release at least one image, not {n}")
    month = month or current_month()
    async with sessions.begin() as session:
        connection = await session.connection()
        await connection.execute(
            update(Usage)
            .where(Usage.account_id == account_id, Usage.month == month)
            .values(images_used=case((Usage.images_used >= n, Usage.images_used - n), else_=0))
        )


async def usage(sessions: Sessions, account_id: str, *, month: str | None = None) -> int:
    """Return how many images the account has used this UTC month (or in `month`, 'YYYY-MM')."""
    async with sessions() as session:
        used = await session.scalar(
            select(Usage.images_used).where(
                Usage.account_id == account_id, Usage.month == (month or current_month())
            )
        )
    return used or 0
