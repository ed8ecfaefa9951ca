"""Per-account admission: concurrent uploads and Idempotency-Key replays on this replica, and batch images queued on
all replicas."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import func, select

from gateway import metrics
from gateway.errors import TooManyUploads
from gateway.store.database import Sessions
from gateway.store.tables import Image

_LOGGER = logging.getLogger(__name__)


class AccountSlots:
    """How many requests of one kind (uploads, replays) each account has in flight on this replica, capped per account.

    In memory on purpose: a slot is held for the seconds an upload streams in (and, for a single image, is
    processed) or a replayed cut-out streams out, so it is cheap and exact within one replica. Across N replicas an
    account may have N times the cap in flight; what bounds memory is per replica, so that is the bound that matters
    here.
    """

    def __init__(self, per_account: int, retry_after_s: int, *, kind: str) -> None:
        self._per_account = per_account
        self._retry_after_s = retry_after_s
        self._kind = kind
        self._running: dict[str, int] = {}

    def running(self, account_id: str) -> int:
        """Requests of this kind the account has in flight on this replica."""
        return self._running.get(account_id, 0)

    @asynccontextmanager
    async def hold(self, account_id: str) -> AsyncIterator[None]:
        """One slot for the account for the duration of the context, or 429 if it has none left."""
        # No await between the read and the write: concurrent requests cannot both take the last slot.
        running = self._running.get(account_id, 0)
        if running >= self._per_account:
            metrics.REFUSALS.labels(f"concurrent_{self._kind}").inc()
            raise TooManyUploads(
                f"too many {self._kind} at once for this account (at most {self._per_account}); wait for one to finish",
                headers={"Retry-After": str(self._retry_after_s)},
            )
        self._running[account_id] = running + 1
        try:
            yield
        finally:
            left = self._running[account_id] - 1
            if left:
                self._running[account_id] = left
            else:
                del self._running[account_id]


async def queued_batch_images(sessions: Sessions, account_id: str) -> int:
    """The account's batch images still waiting or being processed, as every replica sees them."""
    async with sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Image)
            .where(Image.account_id == account_id, Image.batch_id.is_not(None), Image.status == "processing")
        )
    return int(count or 0)


async def check_batch_queue(
    sessions: Sessions, account_id: str, *, adding: int, cap: int, retry_after_s: int
) -> None:
    """Refuses with 429 a batch that would take the account's queued batch images past `cap`.

    Counted in the database so the cap holds across replicas. The check and the insert that follows are not one
    transaction: two batches of one account submitted at the same instant may both pass, so the cap can be
    exceeded by at most (concurrent uploads per account - 1) batches; it still bounds the queue.
    """
    queued = await queued_batch_images(sessions, account_id)
    if queued + adding > cap:
        metrics.REFUSALS.labels("queued_batch_images").inc()
        raise TooManyUploads(
            f"{queued} batch images of this account are still processing; at most {cap} may be queued"
            + (f", and this batch has {adding}" if adding > 1 else ""),
            headers={"Retry-After": str(retry_after_s)},
        )
