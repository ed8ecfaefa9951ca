"""Leases on images shared by replicas: who claims a batch image next (fairly across accounts), the heartbeat
that renews a claim, its release on a graceful stop, and failing single images whose lease ran out. Each
claim takes a fencing token (the image's attempt) that every write of its outcome is conditional on."""

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, case, func, or_, select, update
from sqlalchemy.orm import aliased

from gateway.store.database import Sessions
from gateway.store.tables import Image, utc_now


@dataclass(frozen=True, slots=True)
class Claim:
    """Who claims work and for how long: this replica's id and the lease it takes (renewed by a heartbeat)."""

    replica: str
    lease: dt.timedelta


def _claimable(now: dt.datetime) -> list[ColumnElement[bool]]:
    return [
        Image.status == "processing",
        Image.batch_id.is_not(None),
        or_(Image.locked_until.is_(None), Image.locked_until < now),
    ]


async def claim_batch_image(sessions: Sessions, claim: Claim) -> Image | None:
    """Claim the next batch image to process, fairly across accounts; None when there is nothing to claim.

    Claimable: 'processing' with no lease or an expired one (its replica stopped or died). Fair share: the
    account with the fewest images in flight (held under a live lease, by any replica) goes first, then the
    account claimed least recently (never claimed first), then the oldest image; so an account's big batch
    cannot hold up another account's small one. The claim itself is one conditional UPDATE that increments
    the fencing token (attempt): of replicas racing for one image, exactly one wins, and the others pick again.
    A claim that finds a lease run out (not released) also counts the previous claim as abandoned.
    """
    for _ in range(8):
        now = utc_now()
        peer = aliased(Image)
        in_flight = (
            select(func.count())
            .select_from(peer)
            .where(peer.account_id == Image.account_id, peer.status == "processing", peer.locked_until >= now)
            .scalar_subquery()
        )
        last_claimed = (
            select(func.max(peer.claimed_at)).where(peer.account_id == Image.account_id).scalar_subquery()
        )
        async with sessions() as session:
            candidate = await session.scalar(
                select(Image.id)
                .where(*_claimable(now))
                .order_by(
                    in_flight, last_claimed.is_not(None), last_claimed, Image.created_at, Image.position, Image.id
                )
                .limit(1)
            )
        if candidate is None:
            return None
        async with sessions.begin() as session:
            claimed = await session.scalars(
                update(Image)
                .where(Image.id == candidate, *_claimable(now))
                .values(
                    attempt=Image.attempt + 1, locked_until=now + claim.lease, locked_by=claim.replica,
                    claimed_at=now,
                    abandoned_claims=Image.abandoned_claims + case((Image.locked_until.is_not(None), 1), else_=0),
                )
                .returning(Image)
                .execution_options(synchronize_session=False)
            )
            image = claimed.one_or_none()
        if image is not None:
            return image
    return None  # lost every race this round; the next poll tries again


async def renew_image_lease(sessions: Sessions, image_id: str, attempt: int, claim: Claim) -> bool:
    """Extend our lease on the image (the heartbeat); False if it is no longer ours (finished, deleted, or
    taken over by another replica after our lease ran out)."""
    now = utc_now()
    async with sessions.begin() as session:
        connection = await session.connection()
        renewed = await connection.execute(
            update(Image)
            .where(
                Image.id == image_id, Image.attempt == attempt, Image.status == "processing",
                Image.locked_by == claim.replica,
            )
            .values(locked_until=now + claim.lease)
        )
    return renewed.rowcount == 1


async def release_image_lease(sessions: Sessions, image_id: str, attempt: int) -> bool:
    """Give up our lease on an unfinished image so any replica may claim it at once (a graceful stop); the next
    claim does not count ours as abandoned, though its attempt (the fencing token) still grows."""
    async with sessions.begin() as session:
        connection = await session.connection()
        released = await connection.execute(
            update(Image)
            .where(Image.id == image_id, Image.attempt == attempt, Image.status == "processing")
            .values(locked_until=None, locked_by=None)
        )
    return released.rowcount == 1


async def fail_abandoned_images(sessions: Sessions, older_than: dt.timedelta) -> list[Image]:
    """Mark failed the single (non-batch) images still 'processing' whose gateway stopped mid-request (its
    caller saw the connection drop): their lease ran out without renewal, or, for images recorded without a
    lease, they are older than `older_than` (which must exceed the longest a live request can take). Batch
    images are claimed again instead. Returns only the images this call failed (each exactly once however
    many replicas sweep together), so the caller may give their quota back and delete their objects.

    Fenced like a claim: each image is failed by an UPDATE conditional on the attempt and lease read here,
    which also takes the next attempt. A worker still running it (its heartbeat stalled past the lease) then
    either got its outcome in first, and the sweep leaves the image alone, or loses every later write on the
    token: it cannot complete, renew or fail the image, nor refund it a second time."""
    now = utc_now()
    abandoned = or_(
        Image.locked_until < now,
        and_(Image.locked_until.is_(None), Image.created_at < now - older_than),
    )
    async with sessions() as session:
        candidates = (
            await session.execute(
                select(Image.id, Image.attempt, Image.locked_until)
                .where(Image.status == "processing", Image.batch_id.is_(None), abandoned)
                .order_by(Image.created_at, Image.id)
            )
        ).all()
    failed: list[Image] = []
    for image_id, attempt, locked_until in candidates:
        lease = Image.locked_until.is_(None) if locked_until is None else Image.locked_until == locked_until
        async with sessions.begin() as session:
            swept = await session.scalars(
                update(Image)
                .where(Image.id == image_id, Image.status == "processing", Image.attempt == attempt, lease)
                .values(
                    status="failed", error_code="server_error",
                    error_message="processing was interrupted by a gateway restart; please submit the image again",
                    completed_at=now, locked_until=None, locked_by=None, attempt=Image.attempt + 1,
                )
                .returning(Image)
                .execution_options(synchronize_session=False)
            )
            image = swept.one_or_none()
        if image is not None:
            failed.append(image)
    return failed
