"""Monthly image quota: exact reservations under concurrency, on SQLite and PostgreSQL alike; and the usage
report across accounts that operators bill from.

An image costs one of the plan's monthly images; a remove.bg preview costs a quarter (settle_as_quarter): it is
reserved as a whole image like any other, so every failure path gives back exactly what it took, and only once
it has completed does it become a quarter. The month's use is images_used + quarters_used / 4."""

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.plans import PLANS
from gateway.store.database import Sessions
from gateway.store.tables import Account, ApiKey, Usage

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
        # In quarters, so that previews count: 4 x images + quarters + 4n within 4 x the limit.
        statement = statement.where(Usage.images_used * 4 + Usage.quarters_used + 4 * n <= monthly_limit * 4)
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


async def settle_as_quarter(sessions: Sessions, account_id: str, *, month: str | None = None) -> None:
    """A completed image reserved as a whole one is billed a quarter: one image becomes one quarter, in one
    UPDATE (never below zero)."""
    async with sessions.begin() as session:
        connection = await session.connection()
        await connection.execute(
            update(Usage)
            .where(Usage.account_id == account_id, Usage.month == (month or current_month()), Usage.images_used >= 1)
            .values(images_used=Usage.images_used - 1, quarters_used=Usage.quarters_used + 1)
        )


async def credits_used(sessions: Sessions, account_id: str, *, month: str | None = None) -> float:
    """Images used this UTC month (or in `month`), a preview counting a quarter: 12.25 for 12 and a preview."""
    async with sessions() as session:
        row = (await session.execute(
            select(Usage.images_used, Usage.quarters_used).where(
                Usage.account_id == account_id, Usage.month == (month or current_month())
            )
        )).first()
    return 0.0 if row is None else row.images_used + row.quarters_used / 4


async def usage(sessions: Sessions, account_id: str, *, month: str | None = None) -> int:
    """Return how many whole images the account has used this UTC month (or in `month`, 'YYYY-MM'): every four
    quarter-priced previews count as one."""
    async with sessions() as session:
        row = (await session.execute(
            select(Usage.images_used, Usage.quarters_used).where(
                Usage.account_id == account_id, Usage.month == (month or current_month())
            )
        )).first()
    return 0 if row is None else row.images_used + row.quarters_used // 4


@dataclass(frozen=True, slots=True)
class AccountUsage:
    """One account's line of the usage report: who, on which plan, how much of the month's quota is used, and
    whether its keys are in use."""

    account_id: str
    name: str
    email: str | None
    plan: str
    disabled_at: dt.datetime | None
    month: str
    images_used: int
    # None: the plan has no monthly limit.
    monthly_images: int | None
    active_keys: int
    # The latest use of any of its keys (revoked ones included), to within accounts.LAST_USE_PRECISION.
    last_used_at: dt.datetime | None


async def usage_report(sessions: Sessions, *, month: str | None = None) -> list[AccountUsage]:
    """Every account's usage in `month` ('YYYY-MM', default this UTC month), oldest account first; accounts
    that used nothing are listed with 0. Two queries whatever the number of accounts."""
    month = month or current_month()
    keys = (
        select(
            ApiKey.account_id,
            func.sum(case((ApiKey.revoked_at.is_(None), 1), else_=0)).label("active_keys"),
            func.max(ApiKey.last_used_at).label("last_used_at"),
        )
        .group_by(ApiKey.account_id)
        .subquery()
    )
    statement = (
        select(Account, Usage.images_used, Usage.quarters_used, keys.c.active_keys, keys.c.last_used_at)
        .outerjoin(Usage, (Usage.account_id == Account.id) & (Usage.month == month))
        .outerjoin(keys, keys.c.account_id == Account.id)
        .order_by(Account.created_at, Account.id)
    )
    async with sessions() as session:
        rows = (await session.execute(statement)).all()
    report = []
    for account, images_used, quarters_used, active_keys, last_used_at in rows:
        plan = PLANS.get(account.plan)
        report.append(AccountUsage(
            account_id=account.id, name=account.name, email=account.email, plan=account.plan,
            disabled_at=account.disabled_at, month=month,
            images_used=(images_used or 0) + (quarters_used or 0) // 4,
            monthly_images=plan.monthly_images if plan is not None else None, active_keys=active_keys or 0,
            last_used_at=_aware(last_used_at),
        ))
    return report


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    # max() over the column comes back without the column's type on SQLite (a naive datetime, or its text).
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = dt.datetime.fromisoformat(moment)
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
