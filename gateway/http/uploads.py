"""Reads request bodies within bounds: bytes counted after decompression, parts, field names and time; uploaded
files are spooled to disk, never held in memory."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Collection, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.errors import InvalidRequest, RequestTimeout

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

MIB = 1024 * 1024
# One read of a file part; also far above what aiohttp needs (a read must be >= boundary length + 2, <= 72).
_CHUNK_BYTES = 256 * 1024
MAX_FIELD_BYTES = 8 * 1024
# Room for the multipart boundaries and text fields on top of the files themselves.
ENVELOPE_BYTES = MIB
_SPOOL_PREFIX = "upload-"


@dataclass(frozen=True)
class BodyTimeouts:
    """How slowly a body may arrive: idle_s without a byte, deadline_s for the whole of it."""

    idle_s: float
    deadline_s: float


def _mib(n: int) -> str:
    return f"{n / MIB:g} MB"


def is_compressed(request: web.Request) -> bool:
    """Whether the body has a Content-Encoding (gzip, deflate, br) that aiohttp undoes before we read it."""
    return request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower() not in ("", "identity")


class BodyGuard:
    """Runs every read of one request's body under the idle timeout and the whole-body deadline, and refuses the
    body as soon as more than max_bytes have arrived.

    The count is the request stream's total_bytes: what aiohttp has fed it, i.e. after it has undone any
    Content-Encoding and removed the chunked framing. It is the same for plain, chunked and compressed bodies,
    and unlike the declared Content-Length (the compressed size, or absent) it cannot lie.
    """

    def __init__(self, request: web.Request, max_bytes: int, timeouts: BodyTimeouts) -> None:
        self._request = request
        self._max_bytes = max_bytes
        self._timeouts = timeouts
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + timeouts.deadline_s
        declared = request.content_length
        if declared is not None and declared > max_bytes:
            raise InvalidRequest(self._too_large())

    def _too_large(self) -> str:
        return f"the request body is larger than {_mib(self._max_bytes)}" + (
            " once decompressed" if is_compressed(self._request) else ""
        )

    @property
    def received(self) -> int:
        """Body bytes received so far, after decompression."""
        return self._request.content.total_bytes

    def check(self) -> None:
        if self.received > self._max_bytes:
            raise InvalidRequest(self._too_large())

    async def run(self, read: Coroutine[Any, Any, _T]) -> _T:
        """The result of one read of the body, or the error the client gets for a stalled, late, malformed or
        oversized body."""
        remaining = self._deadline - self._loop.time()
        idle = self._timeouts.idle_s
        try:
            if remaining <= 0:
                read.close()
                raise TimeoutError
            async with asyncio.timeout(min(idle, remaining)):
                result = await read
        except TimeoutError as exc:
            if remaining <= idle:
                message = f"the request body was not complete within {self._timeouts.deadline_s:g} s"
            else:
                message = f"the request body stalled: nothing arrived for {idle:g} s"
            raise RequestTimeout(message) from exc
        except ConnectionError as exc:
            # The client is gone; nobody reads this answer, but it must not be logged as a server fault.
            raise InvalidRequest("the connection closed before the request body was complete") from exc
        except (HttpProcessingError, ValueError, AssertionError, RuntimeError) as exc:
            # Bad chunked framing or Content-Encoding, an overlong line, a broken multipart structure (aiohttp's
            # multipart reader reports those as ValueError, and an odd `_charset_` part as Runtime/AssertionError).
            _LOGGER.debug("malformed request body: %r", exc)
            raise InvalidRequest("the request body is malformed") from exc
        self.check()
        return result


async def read_json(request: web.Request, *, max_bytes: int, timeouts: BodyTimeouts) -> Any:
    """The parsed JSON body, read within max_bytes (after decompression) and the timeouts."""
    guard = BodyGuard(request, max_bytes, timeouts)
    body = bytearray()
    while chunk := await guard.run(request.content.readany()):
        body.extend(chunk)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest("the request body is not valid JSON") from exc


async def read_urlencoded(request: web.Request, *, max_bytes: int, timeouts: BodyTimeouts) -> dict[str, str]:
    """An application/x-www-form-urlencoded body's fields, read within max_bytes and the timeouts; a field
    given twice is refused, as in a multipart form."""
    guard = BodyGuard(request, max_bytes, timeouts)
    body = bytearray()
    while chunk := await guard.run(request.content.readany()):
        body.extend(chunk)
    try:
        pairs = urllib.parse.parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("the form body is malformed") from exc
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise InvalidRequest(f"{name}: given twice")
        fields[name] = value
    return fields


@dataclass(frozen=True)
class UploadedFile:
    """One uploaded file, spooled to `path` (removed when the form's context ends), with its sha256 (hex),
    computed while it was spooled (an Idempotency-Key's request fingerprint)."""

    filename: str
    path: Path
    size: int
    sha256: str

    def read(self) -> bytes:
        return self.path.read_bytes()


@dataclass
class MultipartForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)
    # Files of the other file fields (such as bg_image), at most one each.
    named_files: dict[str, UploadedFile] = field(default_factory=dict)


def clear_spool(spool_root: Path, older_than_s: float) -> int:
    """Removes the spool directories a stopped gateway left behind (killed mid-upload); returns how many.

    Replicas may share data_dir, so only spools older than any live upload can be (older_than_s) are touched.
    """
    if not spool_root.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for leftover in spool_root.glob(f"{_SPOOL_PREFIX}*"):
        try:
            if leftover.stat().st_mtime >= cutoff:
                continue
        except FileNotFoundError:
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        removed += 1
    return removed


@asynccontextmanager
async def read_form(
    request: web.Request,
    *,
    file_field: str,
    text_fields: Collection[str],
    max_files: int,
    max_file_bytes: int,
    timeouts: BodyTimeouts,
    spool_root: Path,
    extra_file_fields: Collection[str] = (),
    long_text_fields: Collection[str] = (),
) -> AsyncIterator[MultipartForm]:
    """The form's text fields (only those named in text_fields, once each) and up to max_files files named
    file_field, each at most max_file_bytes, spooled under spool_root, and at most one file of each of
    extra_file_fields; the spool is removed when the context ends, whether by return, error or cancellation.

    The whole body may hold its files plus 1 MB; a compressed body only one file plus 1 MB once
    inflated (images are compressed already: only a decompression bomb gains from a Content-Encoding).
    Text fields are at most MAX_FIELD_BYTES, those named in long_text_fields (an image in base64) as long as a
    file's base64 (4/3 x max_file_bytes) and counted as one more file.
    """
    if request.content_type != "multipart/form-data":
        raise InvalidRequest("send the image as multipart/form-data")
    all_files = max_files + len(extra_file_fields) + (1 if long_text_fields else 0)
    max_body = (max_file_bytes if is_compressed(request) else all_files * max_file_bytes) + ENVELOPE_BYTES
    guard = BodyGuard(request, max_body, timeouts)
    spool_root.mkdir(parents=True, exist_ok=True)
    spool = Path(tempfile.mkdtemp(prefix=_SPOOL_PREFIX, dir=spool_root))
    try:
        yield await _read_parts(
            request, guard, spool, file_field=file_field, text_fields=text_fields, max_files=max_files,
            max_file_bytes=max_file_bytes, extra_file_fields=extra_file_fields, long_text_fields=long_text_fields,
        )
    finally:
        # Synchronous on purpose: it must run even when the request task is being cancelled.
        shutil.rmtree(spool, ignore_errors=True)


async def _read_parts(
    request: web.Request,
    guard: BodyGuard,
    spool: Path,
    *,
    file_field: str,
    text_fields: Collection[str],
    max_files: int,
    max_file_bytes: int,
    extra_file_fields: Collection[str] = (),
    long_text_fields: Collection[str] = (),
) -> MultipartForm:
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, KeyError) as exc:
        raise InvalidRequest("the multipart body is malformed (check the boundary)") from exc
    accepted = ", ".join(sorted({file_field, *extra_file_fields, *text_fields}))
    # Each text field at most once and at most max_files files: any further part is refused anyway, this
    # just says so plainly.
    max_parts = max_files + len(extra_file_fields) + len(text_fields)
    form = MultipartForm()
    parts = 0
    while (part := await guard.run(reader.next())) is not None:
        parts += 1
        if parts > max_parts:
            raise InvalidRequest(f"too many parts in the form: at most {max_parts}")
        if not isinstance(part, BodyPartReader) or not part.name:
            raise InvalidRequest("nested or unnamed multipart parts are not accepted")
        if part.name == file_field:
            if len(form.files) >= max_files:
                many = "one file" if max_files == 1 else f"at most {max_files} files"
                raise InvalidRequest(f"{file_field}: {many} per request")
            form.files.append(await _spool_file(part, guard, spool / str(len(form.files)), max_file_bytes))
        elif part.name in extra_file_fields:
            if part.name in form.named_files:
                raise InvalidRequest(f"{part.name}: given twice")
            form.named_files[part.name] = await _spool_file(part, guard, spool / part.name, max_file_bytes)
        elif part.name not in text_fields:
            raise InvalidRequest(f"unknown field {part.name!r}; this endpoint accepts {accepted}")
        elif part.filename is not None:
            raise InvalidRequest(f"{part.name}: must be a text field, not a file; send the image as {file_field!r}")
        elif part.name in form.fields:
            raise InvalidRequest(f"{part.name}: given twice")
        else:
            limit = max_file_bytes * 4 // 3 + 4 if part.name in long_text_fields else MAX_FIELD_BYTES
            form.fields[part.name] = await _read_text(part, guard, limit)
    return form


async def _read_text(part: BodyPartReader, guard: BodyGuard, limit: int = MAX_FIELD_BYTES) -> str:
    """A text field, which may arrive over any number of reads, refused past `limit` bytes."""
    value = bytearray()
    while chunk := await guard.run(part.read_chunk(min(limit + 1, _CHUNK_BYTES))):
        value.extend(chunk)
        if len(value) > limit:
            raise InvalidRequest(f"{part.name}: value too long (at most {limit} bytes)")
    return value.decode("utf-8", errors="replace")


async def _spool_file(part: BodyPartReader, guard: BodyGuard, path: Path, max_bytes: int) -> UploadedFile:
    """Streams a file part to `path`, one chunk in memory at a time, refused as soon as it passes max_bytes."""
    size = 0
    digest = hashlib.sha256()
    with path.open("wb") as spooled:
        while chunk := await guard.run(part.read_chunk(_CHUNK_BYTES)):
            size += len(chunk)
            if size > max_bytes:
                raise InvalidRequest(f"{part.name}: the file is larger than {_mib(max_bytes)}")
            digest.update(chunk)
            await asyncio.to_thread(spooled.write, chunk)
    return UploadedFile(part.filename or "", path, size, digest.hexdigest())
