"""Where cutouts (and uploaded originals awaiting processing) are kept: a small protocol, a local-disk store
(the embedded default) and an S3-compatible object store shared by every replica."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, Self
from urllib.parse import parse_qsl, urlsplit

import obstore
from obstore.store import S3Store

if TYPE_CHECKING:  # typed dicts that exist only in obstore's stubs
    from obstore.store import ClientConfig, RetryConfig, S3Config

_LOGGER = logging.getLogger(__name__)

# Slash-separated segments of letters, digits, '.', '_' and '-', none starting with '.': this rules out
# '..', hidden files, absolute paths, backslashes and empty segments before any path is built.
_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*")
_MAX_KEY_LENGTH = 255  # the width of images.storage_key


class InvalidStorageKey(ValueError):
    """A storage key that could escape the storage root or is otherwise malformed; a bug, so a 500."""


class StoredObjectNotFound(LookupError):
    """No object is stored under the key; becomes a 404 not_found."""


class InvalidStorageUrl(ValueError):
    """A `storage_url` setting that names no usable store; the gateway refuses to start (a settings error)."""


# Big enough to keep per-chunk overhead (a thread hop, an HTTP write) small, small enough to keep a few
# hundred concurrent downloads within a few hundred MiB.
CHUNK_BYTES = 256 * 1024
# S3's smallest multipart part (but the last); files above it are uploaded in parts of this size.
MULTIPART_PART_BYTES = 5 * 1024 * 1024


@dataclass
class StoredObject:
    """An object opened for reading: its size and type are known, its bytes arrive as `chunks`.

    Call `aclose()` (or use `async with`) when done, read to the end or not, to release the file or connection.
    """

    key: str
    size: int
    content_type: str
    chunks: AsyncGenerator[bytes, None]
    # Also run when `chunks` was never started (a generator's own `finally` would not run then).
    on_close: Callable[[], None] = lambda: None

    async def aclose(self) -> None:
        """Release the underlying file or HTTP response."""
        await self.chunks.aclose()
        self.on_close()

    async def read(self) -> bytes:
        """All the bytes, for small objects; closes the object."""
        try:
            return b"".join([chunk async for chunk in self.chunks])
        finally:
            await self.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One object found by listing: its key and when it was last written (UTC)."""

    key: str
    modified: dt.datetime


class OutputStorage(Protocol):
    """Stores bytes under keys such as 'outputs/img_abc.png'."""

    async def put(self, key: str, content: bytes, content_type: str) -> None:
        """Store `content` under `key`, replacing what was there, all or nothing."""

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Store the file at `path` under `key` without reading it into memory, all or nothing."""

    async def get(self, key: str) -> bytes:
        """Return the bytes stored under `key`; raise StoredObjectNotFound if there are none."""

    async def open(self, key: str) -> StoredObject:
        """Open `key` for streaming; raise StoredObjectNotFound (before any byte is read) if there is none."""

    async def delete(self, key: str) -> bool:
        """Delete what is stored under `key`; say whether there was anything."""

    async def exists(self, key: str) -> bool:
        """Say whether anything is stored under `key`."""

    def scan(self, prefix: str) -> AsyncIterator[StoredEntry]:
        """Every object whose key starts with `prefix` + '/', in no particular order (for the orphan sweep)."""
        ...


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative storage key, else raise InvalidStorageKey."""
    if len(key) > _MAX_KEY_LENGTH or _KEY_PATTERN.fullmatch(key) is None:
        raise InvalidStorageKey(f"invalid storage key {key!r}")
    return key


class LocalDiskStorage:
    """An OutputStorage in a directory on local disk, writing through a temporary file and an atomic rename."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()

    @property
    def root(self) -> Path:
        """The directory every key lives under."""
        return self._root

    def path(self, key: str) -> Path:
        """Return the file for `key`; it may not exist."""
        path = (self._root / validate_key(key)).resolve()
        # The key pattern already forbids escapes; this also catches a symlink planted inside the root.
        if not path.is_relative_to(self._root):
            raise InvalidStorageKey(f"storage key {key!r} resolves outside the storage root")
        return path

    async def put(self, key: str, content: bytes, content_type: str) -> None:
        """Store `content` under `key` atomically; the type is kept by the caller's image record, not on disk."""
        await asyncio.to_thread(self._write, self.path(key), lambda file: file.write(content))
        _LOGGER.debug("stored %d bytes under %s", len(content), key)

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Copy the file at `path` under `key` atomically, a chunk at a time; `path` itself is left alone."""
        target = self.path(key)

        def copy(file: IO[bytes]) -> None:
            with path.open("rb") as source:
                shutil.copyfileobj(source, file, CHUNK_BYTES)

        await asyncio.to_thread(self._write, target, copy)
        _LOGGER.debug("stored %s under %s", path, key)

    async def get(self, key: str) -> bytes:
        """Return the bytes stored under `key`; raise StoredObjectNotFound if there are none."""
        try:
            return await asyncio.to_thread(self.path(key).read_bytes)
        except FileNotFoundError as error:
            raise StoredObjectNotFound(key) from error

    async def open(self, key: str) -> StoredObject:
        """Open `key` for streaming. The file is opened here, so a reader keeps the version it opened even if a
        put replaces it (the rename swaps the name, not the open file)."""
        path = self.path(key)
        try:
            file = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, IsADirectoryError) as error:
            raise StoredObjectNotFound(key) from error
        size = os.fstat(file.fileno()).st_size

        async def chunks() -> AsyncGenerator[bytes, None]:
            try:
                while chunk := await asyncio.to_thread(file.read, CHUNK_BYTES):
                    yield chunk
            finally:
                file.close()

        return StoredObject(key, size, "application/octet-stream", chunks(), on_close=file.close)

    async def delete(self, key: str) -> bool:
        """Delete what is stored under `key`; say whether there was anything."""
        path = self.path(key)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        return True

    async def exists(self, key: str) -> bool:
        """Say whether anything is stored under `key`."""
        return await asyncio.to_thread(self.path(key).is_file)

    async def scan(self, prefix: str) -> AsyncIterator[StoredEntry]:
        """Files under root/prefix, read a directory at a time off the event loop; temporary files of writes in
        progress (hidden names) are not keys and are skipped."""
        pending = [self.path(prefix)]
        while pending:
            directory = pending.pop()
            for entry in await asyncio.to_thread(self._scan_directory, directory):
                if isinstance(entry, Path):
                    pending.append(entry)
                else:
                    yield entry

    def _scan_directory(self, directory: Path) -> list[StoredEntry | Path]:
        found: list[StoredEntry | Path] = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        found.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        modified = dt.datetime.fromtimestamp(entry.stat().st_mtime, dt.UTC)
                        key = Path(entry.path).relative_to(self._root).as_posix()
                        found.append(StoredEntry(key, modified))
        except FileNotFoundError:
            pass
        return found

    @staticmethod
    def _write(path: Path, fill: Callable[[IO[bytes]], object]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as the target, so os.replace is a rename within one file system: readers see the
        # old file or the new one, never half of either, even if the process dies mid-write.
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as file:
                fill(file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


# --- S3-compatible object stores ---------------------------------------------------------------------------

# Query parameters a storage_url may carry, as obstore's S3Config names them. Credentials are better left to
# the standard AWS environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or the
# platform's role (web identity, ECS/EKS container credentials, instance metadata), which obstore reads itself.
_URL_PARAMETERS = {
    "endpoint": "endpoint",
    "region": "region",
    "access_key_id": "access_key_id",
    "secret_access_key": "secret_access_key",
    "session_token": "session_token",
    "virtual_hosted_style_request": "virtual_hosted_style_request",
}
_BOOLEAN_PARAMETERS = {"virtual_hosted_style_request"}


@dataclass(frozen=True)
class S3Location:
    """A parsed `s3://bucket/prefix?endpoint=...&region=...` storage URL."""

    bucket: str
    prefix: str
    config: S3Config

    @property
    def allow_http(self) -> bool:
        """Plain HTTP only when the endpoint says so (a store on the local network or a test server)."""
        return self.config.get("endpoint", "").startswith("http://")


def parse_storage_url(url: str) -> S3Location:
    """Parse and check a storage URL without any I/O; raise InvalidStorageUrl saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise InvalidStorageUrl(f"storage_url must be empty or s3://bucket?..., not {parts.scheme or url!r}")
    if not parts.hostname or parts.port is not None or parts.username is not None:
        raise InvalidStorageUrl("storage_url must name a bucket: s3://bucket[/prefix][?endpoint=...&region=...]")
    prefix = parts.path.strip("/")
    if prefix:
        try:
            validate_key(prefix)
        except InvalidStorageKey as error:
            raise InvalidStorageUrl(f"storage_url: the key prefix is an {error}") from None
    config: S3Config = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name not in _URL_PARAMETERS:
            raise InvalidStorageUrl(
                f"storage_url: unknown parameter {name!r}; known: {', '.join(sorted(_URL_PARAMETERS))}"
            )
        if not value:
            raise InvalidStorageUrl(f"storage_url: parameter {name!r} is empty")
        if name in _BOOLEAN_PARAMETERS:
            if value not in ("true", "false"):
                raise InvalidStorageUrl(f"storage_url: parameter {name!r} must be true or false")
            config[_URL_PARAMETERS[name]] = value == "true"  # type: ignore[literal-required]
        else:
            config[_URL_PARAMETERS[name]] = value  # type: ignore[literal-required]
    endpoint = config.get("endpoint")
    if endpoint is not None:
        endpoint_parts = urlsplit(endpoint)
        if endpoint_parts.scheme not in ("http", "https") or not endpoint_parts.hostname:
            raise InvalidStorageUrl(f"storage_url: endpoint must be an http(s)://host[:port] URL, not {endpoint!r}")
    # urlsplit lowercases the hostname; S3 bucket names are lowercase anyway, so this changes nothing valid.
    return S3Location(bucket=parts.hostname, prefix=prefix, config=config)


class ObjectStoreStorage:
    """An OutputStorage in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, ...), through obstore.

    Every replica that names the same bucket sees the same objects, so any replica can serve any output.
    A PUT (and a completed multipart upload) replaces an object whole: readers see the old bytes or the new,
    never a mix.
    """

    def __init__(self, location: S3Location) -> None:
        self._location = location
        client: ClientConfig = {
            "allow_http": location.allow_http,
            "connect_timeout": dt.timedelta(seconds=5),
            # A stalled store is noticed between chunks; the timer only runs while a read waits on the store,
            # so a slow client (the download's pace is the client's) is not mistaken for a stall ...
            "read_timeout": dt.timedelta(seconds=30),
            # ... while the whole request, body included, still has a deadline: 25 MiB at 50 KB/s fits.
            "timeout": dt.timedelta(minutes=15),
        }
        retry: RetryConfig = {"max_retries": 3, "retry_timeout": dt.timedelta(seconds=60)}
        self._store = S3Store(
            location.bucket, prefix=location.prefix or None, config=location.config, client_options=client,
            retry_config=retry,
        )

    @property
    def location(self) -> S3Location:
        return self._location

    async def check(self) -> None:
        """Reach the bucket once (a one-level listing), so a wrong URL or credentials stop the gateway at start."""
        try:
            await obstore.list_with_delimiter_async(self._store, "outputs")
        except Exception as error:
            raise InvalidStorageUrl(
                f"cannot reach bucket {self._location.bucket!r} at "
                f"{self._location.config.get('endpoint', 'the AWS default endpoint')}: {_first_line(error)}"
            ) from error

    async def put(self, key: str, content: bytes, content_type: str) -> None:
        """Store `content` under `key` in one PUT, with its Content-Type."""
        await obstore.put_async(
            self._store, validate_key(key), content, attributes={"Content-Type": content_type}
        )
        _LOGGER.debug("stored %d bytes under %s", len(content), key)

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Upload the file at `path` a chunk at a time (multipart above 5 MiB), never whole in memory."""
        validate_key(key)
        if not await asyncio.to_thread(path.is_file):
            raise FileNotFoundError(path)
        # obstore reads ahead one 5 MiB part per concurrent part upload; two bound a put to about 10 MiB of
        # memory however big the file (its default of 12 would buffer a whole 25 MiB upload).
        await obstore.put_async(
            self._store, key, path, attributes={"Content-Type": content_type}, chunk_size=MULTIPART_PART_BYTES,
            max_concurrency=2,
        )
        _LOGGER.debug("stored %s under %s", path, key)

    async def get(self, key: str) -> bytes:
        """Return the bytes stored under `key`; raise StoredObjectNotFound if there are none."""
        return await (await self.open(key)).read()

    async def open(self, key: str) -> StoredObject:
        """Start a GET; the status (and so a missing key) is known here, the body streams as it is read."""
        try:
            result = await obstore.get_async(self._store, validate_key(key))
        except FileNotFoundError as error:
            raise StoredObjectNotFound(key) from error
        content_type = str(result.attributes.get("Content-Type") or "application/octet-stream")
        stream = result.stream(min_chunk_size=CHUNK_BYTES)

        async def chunks() -> AsyncGenerator[bytes, None]:
            async for chunk in stream:
                yield bytes(chunk)

        return StoredObject(key, result.meta["size"], content_type, chunks())

    async def delete(self, key: str) -> bool:
        """Delete what is stored under `key`; say whether there was anything (S3's DELETE does not say)."""
        existed = await self.exists(key)
        await obstore.delete_async(self._store, key)
        return existed

    async def scan(self, prefix: str) -> AsyncIterator[StoredEntry]:
        """A paged LIST of `prefix`/ (1,000 keys a request); keys come back relative to the bucket's prefix."""
        async for page in obstore.list(self._store, validate_key(prefix) + "/", chunk_size=1000):
            for meta in page:
                yield StoredEntry(meta["path"], meta["last_modified"])

    async def exists(self, key: str) -> bool:
        """Say whether anything is stored under `key` (a HEAD request)."""
        try:
            await obstore.head_async(self._store, validate_key(key))
        except FileNotFoundError:
            return False
        return True


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def create_storage(storage_url: str, local_root: Path) -> LocalDiskStorage | ObjectStoreStorage:
    """The store `storage_url` names (see GatewaySettings.storage_url); no I/O."""
    if not storage_url:
        return LocalDiskStorage(local_root)
    return ObjectStoreStorage(parse_storage_url(storage_url))


async def open_storage(storage_url: str, local_root: Path) -> OutputStorage:
    """The store `storage_url` names, checked to be reachable (an object store) so misconfiguration fails at start."""
    storage = create_storage(storage_url, local_root)
    if isinstance(storage, ObjectStoreStorage):
        await storage.check()
        _LOGGER.info("storing files in bucket %s (prefix %r)", storage.location.bucket, storage.location.prefix)
    else:
        _LOGGER.info("storing files on local disk under %s", storage.root)
    return storage
