"""Where cutouts (and uploaded originals awaiting processing) are kept: a small protocol and a local-disk store."""

import asyncio
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

_LOGGER = logging.getLogger(__name__)

# Slash-separated segments of letters, digits, '.', '_' and '-', none starting with '.': this rules out
# '..', hidden files, absolute paths, backslashes and empty segments before any path is built.
_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*")
_MAX_KEY_LENGTH = 255  # the width of images.storage_key
_COPY_BLOCK_BYTES = 1024 * 1024


class InvalidStorageKey(ValueError):
    """A storage key that could escape the storage root or is otherwise malformed; a bug, so a 500."""


class StoredObjectNotFound(LookupError):
    """No object is stored under the key; becomes a 404 not_found."""


class OutputStorage(Protocol):
    """Stores bytes under keys such as 'outputs/img_abc.png'."""

    async def put(self, key: str, content: bytes, content_type: str) -> None:
        """Store `content` under `key`, replacing what was there, all or nothing."""

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Store the content of the file at `path` under `key`, replacing what was there, all or nothing,
        without reading it all into memory; the file at `path` is left as it is."""

    async def get(self, key: str) -> bytes:
        """Return the bytes stored under `key`; raise StoredObjectNotFound if there are none."""

    async def delete(self, key: str) -> bool:
        """Delete what is stored under `key`; say whether there was anything."""

    async def exists(self, key: str) -> bool:
        """Say whether anything is stored under `key`."""


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
        """Return the file for `key`, for streaming it (e.g. with web.FileResponse); it may not exist."""
        path = (self._root / validate_key(key)).resolve()
        # The key pattern already forbids escapes; this also catches a symlink planted inside the root.
        if not path.is_relative_to(self._root):
            raise InvalidStorageKey(f"storage key {key!r} resolves outside the storage root")
        return path

    async def put(self, key: str, content: bytes, content_type: str) -> None:
        """Store `content` under `key` atomically; the type is kept by the caller's image record, not on disk."""
        await asyncio.to_thread(self._write, self.path(key), content)

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Store the file at `path` under `key` atomically, like put; `path` is left in place."""
        await asyncio.to_thread(self._write_file, self.path(key), path)

    async def get(self, key: str) -> bytes:
        """Return the bytes stored under `key`; raise StoredObjectNotFound if there are none."""
        try:
            return await asyncio.to_thread(self.path(key).read_bytes)
        except FileNotFoundError as error:
            raise StoredObjectNotFound(key) from error

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

    @staticmethod
    def _write(path: Path, content: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as the target, so os.replace is a rename within one file system: readers see the
        # old file or the new one, never half of either, even if the process dies mid-write.
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(content)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _LOGGER.debug("stored %d bytes at %s", len(content), path)

    @staticmethod
    def _write_file(path: Path, source: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            # Copied in 1 MB blocks, so a 25 MB original never sits in memory; then renamed, as in _write.
            with os.fdopen(descriptor, "wb") as file, source.open("rb") as original:
                shutil.copyfileobj(original, file, _COPY_BLOCK_BYTES)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _LOGGER.debug("stored %s at %s", source, path)
