"""Image and batch records: from 'processing' to 'completed' or 'failed', scoped to the owning account."""

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, case, delete, exists, func, or_, select, update
from sqlalchemy.orm import aliased

from contract.options import RemovalOptions
from gateway.domain.accounts import new_public_id
from gateway.domain.stored_objects import ImageObjects, image_keys
from gateway.store.database import PointReader, Sessions
from gateway.store.tables import Account, Batch, Image, utc_now

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ImageSource:
    """Where an image to process comes from: a URL, or an upload (its filename, and where it waits in storage)."""

    original_url: str | None = None
    original_filename: str | None = None
    source_key: str | None = None
    bg_source_key: str | None = None  # an uploaded background image waiting in storage


# The options an image row keeps in columns of its own (the spec's); the others, when given, go to Image.options
# as JSON by public name (RemovalOptions.fields), so an option added to the contract is stored with no change here.
STORED_IN_COLUMNS = ("output_format", "output_size", "bg_color")


def stored_extra(options: RemovalOptions) -> dict[str, Any]:
    """What Image.options stores: the options given that have no column of their own."""
    return {name: value for name, value in options.fields().items() if name not in STORED_IN_COLUMNS}


def stored_options(
    output_format: str, output_size: str, bg_color: str | None, extra: dict[str, Any] | None
) -> RemovalOptions:
    """The options an image was submitted with, from its row (names a newer release stored are ignored)."""
    return RemovalOptions.from_fields(
        {**(extra or {}), "output_format": output_format, "output_size": output_size, "bg_color": bg_color}
    )


def options_of(image: Image) -> RemovalOptions:
    """The options the image was submitted with."""
    return stored_options(image.output_format, image.output_size, image.bg_color, image.options)


@dataclass(frozen=True, slots=True)
class Claim:
    """Who claims work and for how long: this replica's id and the lease it takes (renewed by a heartbeat)."""

    replica: str
    lease: dt.timedelta


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
    extra_options: dict[str, Any] | None = None,
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
        options=extra_options or None,
        bg_source_key=source.bg_source_key,
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
    claim: Claim | None = None,
    extra_options: dict[str, Any] | None = None,
) -> Image:
    """Record a new image job, status 'processing'; with `claim`, already claimed (attempt 1) by that replica,
    which processes it at once (a single image), so the abandoned-image sweep leaves it alone while its lease
    is renewed."""
    image = _new_image(
        account_id,
        source,
        output_format=output_format,
        output_size=output_size,
        bg_color=bg_color,
        webhook_url=webhook_url,
        extra_options=extra_options,
    )
    if claim is not None:
        now = utc_now()
        image.attempt = 1
        image.locked_by = claim.replica
        image.locked_until = now + claim.lease
        image.claimed_at = now
    async with sessions.begin() as session:
        session.add(image)
    return image


async def _finish_image(sessions: Sessions, image_id: str, attempt: int | None, **outcome: object) -> Image | None:
    # One conditional UPDATE, so an image finishes once even if two replicas race; with `attempt` (the fencing
    # token of the caller's claim) only the current owner of the image may finish it.
    conditions = [Image.id == image_id, Image.status == "processing"]
    if attempt is not None:
        conditions.append(Image.attempt == attempt)
    async with sessions.begin() as session:
        finished = await session.scalars(
            update(Image)
            .where(*conditions)
            .values(**outcome, completed_at=utc_now(), locked_until=None)
            .returning(Image)
            .execution_options(synchronize_session=False)
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
    attempt: int | None = None,
    foreground: tuple[int, int, int, int] | None = None,
) -> Image | None:
    """Record where the cutout is stored and its foreground box (left, top, width, height); None if the image
    is gone, no longer 'processing', or (given the caller's `attempt`) claimed again by another replica since."""
    left, top, box_width, box_height = foreground or (None, None, None, None)
    return await _finish_image(
        sessions,
        image_id,
        attempt,
        status="completed",
        storage_key=storage_key,
        content_type=content_type,
        width=width,
        height=height,
        size_bytes=size_bytes,
        foreground_left=left,
        foreground_top=top,
        foreground_width=box_width,
        foreground_height=box_height,
    )


async def mark_image_failed(
    sessions: Sessions, image_id: str, *, error_code: str, error_message: str, attempt: int | None = None
) -> Image | None:
    """Record why the image could not be processed; None if the image is gone, no longer 'processing', or
    (given the caller's `attempt`) claimed again by another replica since."""
    return await _finish_image(
        sessions, image_id, attempt, status="failed", error_code=error_code, error_message=error_message
    )


async def get_image(sessions: Sessions, account_id: str, image_id: str) -> Image | None:
    """Return the account's image with this id; another account's image comes back as None."""
    async with sessions() as session:
        return await session.scalar(select(Image).where(Image.id == image_id, Image.account_id == account_id))


@dataclass(frozen=True, slots=True)
class ImageView:
    """What GET /v1/images/{id} shows of an image, read without the ORM (see read_image)."""

    id: str
    original_url: str | None
    output_format: str
    output_size: str
    bg_color: str | None
    batch_id: str | None
    status: str
    created_at: dt.datetime
    width: int | None
    height: int | None
    size_bytes: int | None
    error_code: str | None
    error_message: str | None
    options: dict[str, Any] | None
    foreground_left: int | None
    foreground_top: int | None
    foreground_width: int | None
    foreground_height: int | None


# Built once, on the table's plain columns: the ORM attributes' annotated columns cost SQLAlchemy dozens of
# comparisons per execution to match the cached compiled statement (most of a request's CPU, profiled).
_IMAGES = Image.__table__
_READ_IMAGE = select(*(_IMAGES.c[name] for name in ImageView.__slots__)).where(
    _IMAGES.c.id == bindparam("image_id"), _IMAGES.c.account_id == bindparam("account_id")
)


async def read_image(reader: PointReader, account_id: str, image_id: str) -> ImageView | None:
    """get_image for reading only, at a fraction of its cost: one prepared Core select of the shown columns
    through the point reader (a plain dataclass, no ORM session or identity map). Another account's image is
    None."""
    row = await reader.one(_READ_IMAGE, {"image_id": image_id, "account_id": account_id})
    return None if row is None else ImageView(**row._mapping)


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
        image = _new_image(
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


async def get_image_by_id(sessions: Sessions, image_id: str) -> Image | None:
    """Return any account's image with this id: only for links whose signature already proved the right to it."""
    async with sessions() as session:
        return await session.scalar(select(Image).where(Image.id == image_id))


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


async def list_finished_batches_to_close(sessions: Sessions) -> list[str]:
    """Ids of batches still 'processing' although none of their images is: the replica that finished the last
    image stopped before it flipped the batch."""
    unfinished = exists().where(Image.batch_id == Batch.id, Image.status == "processing")
    async with sessions() as session:
        ids = await session.scalars(select(Batch.id).where(Batch.status == "processing", ~unfinished))
        return list(ids.all())


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
