"""Processed outputs in the object store, as the library and replays hand them out (handlers never touch the
store)."""

from __future__ import annotations

from gateway.errors import NotFound
from gateway.store.storage import OutputStorage, StoredObject, StoredObjectNotFound

# What open_output hands out, named here for the handlers that send it (they never import the store).
__all__ = ["StoredObject", "open_output"]


async def open_output(storage: OutputStorage, key: str, *, gone: str = "the file is gone") -> StoredObject:
    """The stored output under `key`, opened for streaming (never read whole); NotFound (404) with `gone` when the
    store no longer has it."""
    try:
        return await storage.open(key)
    except StoredObjectNotFound as exc:
        raise NotFound(gone) from exc
