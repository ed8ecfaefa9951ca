"""Processed outputs in the object store, as the library hands them out (handlers never touch the store)."""

from __future__ import annotations

from gateway.errors import NotFound
from gateway.store.storage import OutputStorage, StoredObject, StoredObjectNotFound


async def open_output(storage: OutputStorage, key: str) -> StoredObject:
    """The stored output under `key`, opened for streaming; NotFound (404) when the store no longer has it."""
    try:
        return await storage.open(key)
    except StoredObjectNotFound as exc:
        raise NotFound("the file is gone") from exc
