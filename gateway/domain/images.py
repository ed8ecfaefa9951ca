"""Image records: from 'processing' to 'completed' or 'failed', scoped to the owning account; what options a
record keeps, and reading one or a page of them. Batches, leases and retention have their own modules."""

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, update

from contract.options import RemovalOptions
from gateway.domain.accounts import new_public_id
from gateway.domain.leases import Claim
from gateway.store.database import PointReader, Sessions
from gateway.store.tables import Image, utc_now


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
class ImagePage:
    """One page of an account's images, newest first, with how many images the account has in all."""

    images: list[Image]
    total: int


def new_image(
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
    image = new_image(
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


async def get_image_by_id(sessions: Sessions, image_id: str) -> Image | None:
    """Return any account's image with this id: only for links whose signature already proved the right to it."""
    async with sessions() as session:
        return await session.scalar(select(Image).where(Image.id == image_id))
