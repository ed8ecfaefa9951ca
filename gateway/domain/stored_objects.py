"""Which stored objects belong to an image, and removing them: the output of each attempt, the uploaded
original and background; and the orphans that a replica killed between a `put` and its commit leaves behind.

Every attempt at an image stores its cut-out under its own key (`outputs/{id}-{attempt}.{ext}`), so a replica
that lost its lease never overwrites or deletes the winner's file. The price is that a replica killed after its
`put` and before its commit leaves an object no row names. Three things clean up, so any crash converges:
- a takeover (a claim with a higher attempt) deletes the objects of every earlier attempt;
- deleting an image (the API, retention, the abandoned-image sweep) deletes the objects of all its attempts;
- the orphan sweep deletes objects under `outputs/` and `sources/` that no image references, once they are
  older than the grace period (an upload stored before its batch is recorded is not yet referenced).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import or_, select

from contract.options import OutputFormat
from gateway import metrics
from gateway.domain.accounts import new_public_id
from gateway.store.database import Sessions
from gateway.store.storage import OutputStorage, StoredEntry
from gateway.store.tables import Image

_LOGGER = logging.getLogger(__name__)

OUTPUTS = "outputs"
SOURCES = "sources"
# Keys the gateway writes: outputs/{image id}[-{attempt}].{extension} and sources/{src|bg}_{random}.
_OUTPUT_KEY = re.compile(r"outputs/(img_[A-Za-z0-9]+)(?:-([0-9]+))?\.[a-z]+")
_SOURCE_KEY = re.compile(r"sources/(?:src|bg)_[A-Za-z0-9]+")
# Keys looked up in the database at once while sweeping: bounds the memory and the size of one IN (...).
_PAGE = 500


def output_key(image_id: str, output_format: str, attempt: int = 0) -> str:
    """Where one attempt stores its cut-out: unique to the attempt, so a replica that lost its lease never
    overwrites (or, cleaning up, deletes) the winner's file; the image row's storage_key says which won."""
    extension = OutputFormat(output_format).extension
    return f"outputs/{image_id}-{attempt}.{extension}" if attempt else f"outputs/{image_id}.{extension}"


def new_source_key(kind: Literal["src", "bg"]) -> str:
    """A new key for an uploaded original ('src') or background image ('bg') waiting for its batch image."""
    return f"{SOURCES}/{new_public_id(kind, 24)}"


@dataclass(frozen=True, slots=True)
class ImageObjects:
    """What the keys of an image's objects are computed from (an Image row has these fields)."""

    id: str
    output_format: str
    attempt: int
    storage_key: str | None = None
    source_key: str | None = None
    bg_source_key: str | None = None


def attempt_output_keys(image_id: str, output_format: str, attempts: Iterable[int]) -> list[str]:
    return [output_key(image_id, output_format, attempt) for attempt in attempts]


def source_keys(image: Image | ImageObjects) -> list[str]:
    """The keys of what the image was uploaded with and waits in storage: the original, the background image."""
    return [key for key in (image.source_key, image.bg_source_key) if key]


def image_keys(image: Image | ImageObjects) -> list[str]:
    """Every key an image may have an object under: each attempt's output (an attempt killed after its put left
    one that no row names), the stored output, the uploaded original and background."""
    keys = attempt_output_keys(image.id, image.output_format, range(image.attempt + 1))
    keys += [key for key in (image.storage_key, *source_keys(image)) if key and key not in keys]
    return keys


async def delete_objects(storage: OutputStorage, keys: Iterable[str]) -> int:
    """Delete each key, missing ones included; returns how many existed. A store error is logged, not raised:
    the caller's own work is done, and the orphan sweep removes what is left."""
    removed = 0
    for key in keys:
        try:
            removed += await storage.delete(key)
        except Exception as error:  # noqa: BLE001 - logged; the orphan sweep removes what is left
            _LOGGER.warning("could not delete stored object %s (the orphan sweep retries): %s", key, error)
    return removed


async def delete_image_objects(storage: OutputStorage, image: Image | ImageObjects) -> int:
    """Delete every object of a deleted (or failed, or expired) image: all attempts' outputs and its sources."""
    return await delete_objects(storage, image_keys(image))


async def discard_earlier_attempts(storage: OutputStorage, image: Image) -> int:
    """A claim took the image over (attempt n): delete the outputs of attempts 0..n-1, whose replicas were killed
    (or lost their lease) before committing; a late writer among them deletes its own after its commit fails."""
    if image.attempt <= 1:
        return 0
    removed = await delete_objects(storage, attempt_output_keys(image.id, image.output_format, range(image.attempt)))
    if removed:
        _LOGGER.info("image %s: removed %d output(s) of earlier attempts on taking it over (attempt %d)",
                     image.id, removed, image.attempt)
    return removed


async def _orphaned_outputs(sessions: Sessions, entries: Sequence[StoredEntry]) -> list[str]:
    """Of these output objects, those no image references: its image is gone, or finished with another key, or
    processing under a later attempt (the object of the attempt in flight is kept)."""
    wanted: dict[str, list[tuple[str, int]]] = {}
    for entry in entries:
        match = _OUTPUT_KEY.fullmatch(entry.key)
        if match is not None:  # anything else under outputs/ was not written by us: left alone
            wanted.setdefault(match[1], []).append((entry.key, int(match[2] or 0)))
    if not wanted:
        return []
    async with sessions() as session:
        rows = (
            await session.execute(
                select(Image.id, Image.status, Image.attempt, Image.storage_key).where(Image.id.in_(list(wanted)))
            )
        ).all()
    by_id = {row.id: row for row in rows}
    orphans = []
    for image_id, keys in wanted.items():
        row = by_id.get(image_id)
        for key, attempt in keys:
            if row is None:
                orphans.append(key)
            elif row.status == "processing":
                if attempt < row.attempt:
                    orphans.append(key)
            elif key != row.storage_key:
                orphans.append(key)
    return orphans


async def _orphaned_sources(sessions: Sessions, entries: Sequence[StoredEntry]) -> list[str]:
    """Of these uploaded originals and backgrounds, those no image still processing waits for (a finished
    image's are deleted by whoever finished it; a batch never recorded has no image at all)."""
    keys = [entry.key for entry in entries if _SOURCE_KEY.fullmatch(entry.key)]
    if not keys:
        return []
    async with sessions() as session:
        rows = (
            await session.execute(
                select(Image.source_key, Image.bg_source_key).where(
                    Image.status == "processing", or_(Image.source_key.in_(keys), Image.bg_source_key.in_(keys))
                )
            )
        ).all()
    waited_for = {key for row in rows for key in row if key}
    return [key for key in keys if key not in waited_for]


async def remove_orphaned_objects(
    sessions: Sessions, storage: OutputStorage, *, older_than: dt.timedelta, now: dt.datetime | None = None
) -> dict[str, int]:
    """Delete the objects under outputs/ and sources/ that no image references and that were stored more than
    `older_than` before `now`; returns how many were removed under each prefix (also counted in a metric)."""
    cutoff = (now or dt.datetime.now(dt.UTC)) - older_than
    removed = {}
    for prefix, orphaned in ((OUTPUTS, _orphaned_outputs), (SOURCES, _orphaned_sources)):
        count = 0
        page: list[StoredEntry] = []
        async for entry in storage.scan(prefix):
            if entry.modified < cutoff:
                page.append(entry)
            if len(page) >= _PAGE:
                count += await delete_objects(storage, await orphaned(sessions, page))
                page = []
        if page:
            count += await delete_objects(storage, await orphaned(sessions, page))
        removed[prefix] = count
        if count:
            metrics.ORPHANED_OBJECTS_REMOVED.labels(prefix).inc(count)
    return removed
