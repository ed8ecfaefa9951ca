"""Every stored object has an owner or goes: a replica killed between its `put` and its commit leaves an object no
row names; a takeover, a deletion and the orphan sweep remove it, so the store converges to one object per
completed image. The interleavings are made exact with an event in the store the replica writes
through, never a sleep."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, update

from gateway import metrics
from gateway.domain import accounts, batches, images, leases, quota, stored_objects
from gateway.domain.images import ImageSource
from gateway.domain.leases import Claim
from gateway.http.appkeys import PROCESSOR, SESSIONS
from gateway.jobs.sweeps import claim_job, finish_job
from gateway.settings import GatewaySettings
from gateway.store.database import Sessions, default_database_url
from gateway.store.storage import (
    LocalDiskStorage,
    ObjectStoreStorage,
    OutputStorage,
    StoredEntry,
    StoredObject,
    parse_storage_url,
)
from gateway.store.tables import Image
from tests.gateway.harness import Gateway, gateway
from tests.reference import DATA

FIRST = Claim(replica="first", lease=dt.timedelta(seconds=30))
SECOND = Claim(replica="second", lease=dt.timedelta(seconds=30))
HOUR = dt.timedelta(hours=1)


async def _expire(sessions: Sessions, image_id: str) -> None:
    """The lease of a killed replica runs out (set in the past, not waited for)."""
    async with sessions.begin() as session:
        await session.execute(
            update(Image).where(Image.id == image_id).values(locked_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )


# --- The orphan sweep, against both stores and both databases ---------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> OutputStorage:
    if request.param == "local":
        return LocalDiskStorage(tmp_path / "files")
    return ObjectStoreStorage(parse_storage_url(request.getfixturevalue("s3_storage_url")))


async def test_orphan_sweep_removes_exactly_the_unreferenced_objects_once_they_are_old_enough(
    sessions: Sessions, storage: OutputStorage
) -> None:
    """Kept: the output a completed image names, the output of the attempt in flight, the original a processing
    image waits for, and keys we never write. Removed once older than the grace period: an earlier attempt's
    output, a deleted image's output, the original of an image finished by a replica killed before deleting it,
    and originals and backgrounds of a batch that was never recorded."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="pro")
    waiting_source, done_source = stored_objects.new_source_key("src"), stored_objects.new_source_key("src")
    batch = await batches.create_batch(
        sessions, account.id, [ImageSource(source_key=waiting_source), ImageSource(source_key=done_source)],
        output_format="png", output_size="preview",
    )
    waiting, done = batch.images
    for _ in range(2):
        assert await leases.claim_batch_image(sessions, FIRST) is not None
    await _expire(sessions, waiting.id)
    taken = await leases.claim_batch_image(sessions, SECOND)
    assert taken is not None and (taken.id, taken.attempt) == (waiting.id, 2)
    finished = await images.mark_image_completed(
        sessions, done.id, storage_key=f"outputs/{done.id}-1.png", content_type="image/png", width=1, height=1,
        size_bytes=1, attempt=1,
    )
    assert finished is not None

    kept = [waiting_source, f"outputs/{waiting.id}-2.png", f"outputs/{done.id}-1.png", "outputs/notes.txt"]
    orphans = {
        "outputs": [f"outputs/{waiting.id}-1.png", "outputs/img_deletedmeanwhile-1.webp"],
        "sources": [done_source, stored_objects.new_source_key("src"), stored_objects.new_source_key("bg")],
    }
    for key in [*kept, *orphans["outputs"], *orphans["sources"]]:
        await storage.put(key, b"bytes", "application/octet-stream")

    counted = {prefix: metrics.ORPHANED_OBJECTS_REMOVED.labels(prefix)._value.get() for prefix in orphans}
    young = await stored_objects.remove_orphaned_objects(sessions, storage, older_than=HOUR)
    assert young == {"outputs": 0, "sources": 0}
    later = dt.datetime.now(dt.UTC) + HOUR + dt.timedelta(minutes=1)
    removed = await stored_objects.remove_orphaned_objects(sessions, storage, older_than=HOUR, now=later)
    assert removed == {"outputs": 2, "sources": 3}
    for prefix, keys in orphans.items():
        assert metrics.ORPHANED_OBJECTS_REMOVED.labels(prefix)._value.get() == counted[prefix] + len(keys)
        for key in keys:
            assert not await storage.exists(key), key
    for key in kept:
        assert await storage.exists(key), key
    assert await stored_objects.remove_orphaned_objects(sessions, storage, older_than=HOUR, now=later) == {
        "outputs": 0, "sources": 0
    }


async def test_listing_finds_every_object_under_a_prefix_and_nothing_else(storage: OutputStorage) -> None:
    """scan() is what the sweep sees: every key under the prefix, with a write time close to now."""
    before = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    for key in ("outputs/img_a-1.png", "outputs/img_b.webp", "sources/src_c", "outputsextra/x"):
        await storage.put(key, b"x", "application/octet-stream")
    listed: list[StoredEntry] = [entry async for entry in storage.scan("outputs")]
    assert sorted(entry.key for entry in listed) == ["outputs/img_a-1.png", "outputs/img_b.webp"]
    assert all(before < entry.modified < before + dt.timedelta(minutes=10) for entry in listed)
    assert [entry async for entry in storage.scan("nothing")] == []


async def test_orphan_sweep_runs_once_per_period_across_replicas(sessions: Sessions) -> None:
    """The sweep lists the whole store, so it is claimed like the others and, once run, not due again for its
    period, whichever replica asks."""
    token = await claim_job(sessions, "orphaned_objects", FIRST, HOUR)
    assert token is not None
    assert await claim_job(sessions, "orphaned_objects", SECOND, HOUR) is None  # held
    assert await finish_job(sessions, "orphaned_objects", token)
    assert await claim_job(sessions, "orphaned_objects", SECOND, HOUR) is None  # ran just now
    assert await claim_job(sessions, "orphaned_objects", SECOND, dt.timedelta(0)) is not None


def test_orphan_grace_may_not_be_shorter_than_the_lease() -> None:
    with pytest.raises(ValueError, match="orphan_grace_s must be at least lease_s"):
        GatewaySettings(lease_s=60.0, heartbeat_s=10.0, orphan_grace_s=30.0)


# --- The exact interleavings, through real gateways -------------------------------------------------------------


class ReplicaStore:
    """The store as one replica reaches it. Its first put of a key matching `pause` stops right after the object
    is stored (`stored` is set) until the replica is killed; from then on nothing of this replica reaches the
    store, as nothing runs in a killed process (its clean-up code fails instead of deleting)."""

    def __init__(self, inner: OutputStorage, pause: str) -> None:
        self._inner = inner
        self._pause: re.Pattern[str] | None = re.compile(pause)
        self.stored = asyncio.Event()
        self.stored_key = ""
        self._killed = asyncio.Event()

    def kill(self) -> None:
        self._killed.set()

    def _alive(self) -> None:
        if self._killed.is_set():
            raise ConnectionError("this replica was killed")

    async def _after_put(self, key: str) -> None:
        if self._pause is not None and self._pause.fullmatch(key):
            self._pause = None
            self.stored_key = key
            self.stored.set()
            await self._killed.wait()
            raise ConnectionError("this replica was killed")

    async def put(self, key: str, content: bytes, content_type: str) -> None:
        self._alive()
        await self._inner.put(key, content, content_type)
        await self._after_put(key)

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        self._alive()
        await self._inner.put_file(key, path, content_type)
        await self._after_put(key)

    async def get(self, key: str) -> bytes:
        self._alive()
        return await self._inner.get(key)

    async def open(self, key: str) -> StoredObject:
        self._alive()
        return await self._inner.open(key)

    async def delete(self, key: str) -> bool:
        self._alive()
        return await self._inner.delete(key)

    async def exists(self, key: str) -> bool:
        self._alive()
        return await self._inner.exists(key)

    async def scan(self, prefix: str) -> AsyncIterator[StoredEntry]:
        self._alive()
        async for entry in self._inner.scan(prefix):
            yield entry


def _files(data_dir: Path, prefix: str) -> list[str]:
    folder = data_dir / "files" / prefix
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def _batch_form() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("files", (DATA / "chelsea.jpg").read_bytes(), filename="chelsea.jpg", content_type="image/jpeg")
    return form


# One signing secret for both replicas, so either one's output links verify on the other.
_SECRET = secrets.token_hex(32)


def _replica_settings(inference_url: str, data_dir: Path, name: str) -> dict[str, Any]:
    # Long leases and heartbeats: nothing expires or renews on its own while the test steps through.
    return {
        "inference_url": inference_url, "database_url": default_database_url(data_dir), "data_dir": data_dir,
        "url_signing_secret": _SECRET, "batch_concurrency": 1, "lease_s": 600.0, "heartbeat_s": 300.0,
        "poll_interval_s": 0.5, "replica_id": name,
    }


async def _pause_first_replica(replica: Gateway, pause: str) -> ReplicaStore:
    processor = replica.app[PROCESSOR]
    store = ReplicaStore(processor.storage, pause)
    processor.storage = store
    return store


async def _kill(replica: Gateway, store: ReplicaStore) -> None:
    """The replica dies: its store calls fail from now on and its batch work stops where it is, leases held."""
    store.kill()
    await replica.crash_batches()


@pytest.mark.parametrize("then", ["taken_over", "deleted"])
async def test_an_output_stored_by_a_replica_killed_before_its_commit_never_outlives_the_image(
    inference_url: str, tmp_path: Path, then: str
) -> None:
    """Replica A stores attempt 1's output and is killed before recording it. Taken over: replica B claims the
    image (attempt 2) and completes it, and exactly one output object is left, B's. Deleted: the caller deletes
    the image meanwhile, and no object of it is left."""
    data_dir = tmp_path / "shared"
    async with gateway(**_replica_settings(inference_url, data_dir, "replica-a")) as first:
        account_id, key = await first.account("pro")
        store = await _pause_first_replica(first, r"outputs/.*")
        response = await first.client.post("/v1/remove-background/batch", data=_batch_form(),
                                           headers={"X-API-Key": key})
        assert response.status == 202, await response.text()
        image_id = (await response.json())["data"]["images"][0]["id"]
        await asyncio.wait_for(store.stored.wait(), 240)
        assert store.stored_key == f"outputs/{image_id}-1.png"
        assert _files(data_dir, "outputs") == [f"{image_id}-1.png"]
        if then == "deleted":
            deleted = await first.client.delete(f"/v1/images/{image_id}", headers={"X-API-Key": key})
            assert deleted.status == 200, await deleted.text()
            assert (await deleted.json())["data"] == {"id": image_id, "deleted": True}
        await _kill(first, store)
        if then == "taken_over":
            await _expire(first.app[SESSIONS], image_id)

    async with gateway(**_replica_settings(inference_url, data_dir, "replica-b")) as second:
        await asyncio.wait_for(second.batches_done(), 240)
        answer = await second.client.get(f"/v1/images/{image_id}", headers={"X-API-Key": key})
        if then == "deleted":
            assert answer.status == 404
            assert _files(data_dir, "outputs") == []
            assert _files(data_dir, "sources") == []
            return
        assert answer.status == 200
        body = (await answer.json())["data"]
        assert body["status"] == "completed", body
        assert _files(data_dir, "outputs") == [f"{image_id}-2.png"]
        assert _files(data_dir, "sources") == []  # the winner removed the original
        download = await second.client.get(body["output_url"].removeprefix(second.settings.base_url))
        assert download.status == 200 and (await download.read()).startswith(b"\x89PNG")
        assert await quota.usage(second.app[SESSIONS], account_id) == 1


async def test_an_original_stored_by_a_replica_killed_before_its_batch_is_recorded_is_swept(
    inference_url: str, tmp_path: Path
) -> None:
    """Replica A stores a batch's uploaded original and is killed before the batch is recorded: no row will ever
    name the object. Replica B's orphan sweep leaves it while it is younger than the grace period and removes it
    after."""
    data_dir = tmp_path / "shared"
    async with gateway(**_replica_settings(inference_url, data_dir, "replica-a")) as first:
        _, key = await first.account("pro")
        store = await _pause_first_replica(first, r"sources/src_.*")
        upload = asyncio.create_task(
            first.client.post("/v1/remove-background/batch", data=_batch_form(), headers={"X-API-Key": key})
        )
        await asyncio.wait_for(store.stored.wait(), 60)
        assert _files(data_dir, "sources") == [store.stored_key.removeprefix("sources/")]
        await _kill(first, store)
        answer = await upload  # the killed replica's clean-up failed: the original is still there
        assert answer.status == 500
        assert _files(data_dir, "sources") == [store.stored_key.removeprefix("sources/")]

    async with gateway(**_replica_settings(inference_url, data_dir, "replica-b")) as second:
        sessions, storage = second.app[SESSIONS], second.app[PROCESSOR].storage
        async with sessions() as session:
            assert (await session.scalars(select(Image.id))).all() == []  # the batch was never recorded
        grace = dt.timedelta(seconds=second.settings.orphan_grace_s)
        assert await stored_objects.remove_orphaned_objects(sessions, storage, older_than=grace) == {
            "outputs": 0, "sources": 0
        }
        later = dt.datetime.now(dt.UTC) + grace + dt.timedelta(seconds=1)
        removed = await stored_objects.remove_orphaned_objects(sessions, storage, older_than=grace, now=later)
        assert removed == {"outputs": 0, "sources": 1}
        assert _files(data_dir, "sources") == []


def test_the_image_keys_cover_every_attempt_and_both_sources() -> None:
    """What deleting an image removes: the output of each attempt up to its current one, and its sources."""
    image = stored_objects.ImageObjects(
        id="img_x", output_format="webp", attempt=2, storage_key="outputs/img_x-2.webp",
        source_key="sources/src_a", bg_source_key="sources/bg_b",
    )
    assert stored_objects.image_keys(image) == [
        "outputs/img_x.webp", "outputs/img_x-1.webp", "outputs/img_x-2.webp", "sources/src_a", "sources/bg_b",
    ]
