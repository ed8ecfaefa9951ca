"""The gateway's persistence: accounts and keys, images, batches, the monthly quota, storage and the admin CLI."""

import asyncio
import datetime as dt
import os
import re
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain import accounts, batches, images, quota
from gateway.domain.images import ImageSource
from gateway.store.database import (
    Sessions,
    alembic_config,
    create_database_engine,
    create_sessions,
    upgrade_schema,
)
from gateway.store.storage import (
    CHUNK_BYTES,
    InvalidStorageKey,
    LocalDiskStorage,
    ObjectStoreStorage,
    OutputStorage,
    StoredObjectNotFound,
    parse_storage_url,
)
from gateway.store.tables import Image

ROOT = Path(__file__).resolve().parents[2]


async def _image(sessions: Sessions, account_id: str, url: str = "https://example.com/a.jpg") -> Image:
    return await images.create_image(
        sessions, account_id, ImageSource(original_url=url), output_format="png", output_size="original"
    )


# --- accounts and API keys -------------------------------------------------------------------------------


async def test_create_account_issues_a_key_that_authenticates(sessions: Sessions) -> None:
    """A new account gets an `rmv_` key of 256 random bits that authenticates it; other keys do not."""
    account, api_key = await accounts.create_account(sessions, name="Acme", plan="pro", email="ops@acme.test")

    assert re.fullmatch(r"acct_[a-z0-9]{16}", account.id)
    assert re.fullmatch(r"rmv_[A-Za-z0-9_-]{43}", api_key)
    assert (account.name, account.plan, account.email) == ("Acme", "pro", "ops@acme.test")
    assert account.created_at.tzinfo == dt.UTC
    authenticated = await accounts.authenticate(sessions, api_key)
    assert authenticated is not None and authenticated.id == account.id and authenticated.plan == "pro"
    assert await accounts.authenticate(sessions, api_key + "x") is None
    assert await accounts.authenticate(sessions, "") is None


async def test_only_the_key_hash_is_stored(sessions: Sessions, engine: AsyncEngine) -> None:
    """The database holds the key's SHA-256 and a short display prefix, never the key itself."""
    _, api_key = await accounts.create_account(sessions, name="Acme", plan="basic")

    async with engine.connect() as connection:
        rows = (await connection.execute(text("SELECT key_hash, prefix FROM api_keys"))).all()
    assert rows == [(accounts.hash_api_key(api_key), api_key[:8])]
    assert api_key not in repr(rows)


async def test_rotate_key_revokes_the_old_key_at_once(sessions: Sessions) -> None:
    """After rotation the old key is refused on the very next lookup and only the new key works."""
    account, old_key = await accounts.create_account(sessions, name="Acme", plan="pro")

    new_key = await accounts.rotate_key(sessions, account.id)

    assert new_key is not None and new_key != old_key
    assert await accounts.authenticate(sessions, old_key) is None
    authenticated = await accounts.authenticate(sessions, new_key)
    assert authenticated is not None and authenticated.id == account.id
    newest_key = await accounts.rotate_key(sessions, account.id)
    assert newest_key is not None
    assert await accounts.authenticate(sessions, new_key) is None
    assert await accounts.authenticate(sessions, newest_key) is not None


async def test_rotate_key_of_unknown_account_is_none(sessions: Sessions) -> None:
    """Rotating the key of an account that does not exist issues nothing."""
    assert await accounts.rotate_key(sessions, "acct_doesnotexist0000") is None


# --- images ------------------------------------------------------------------------------------------------


async def test_image_lifecycle_to_completed(sessions: Sessions) -> None:
    """An image starts 'processing' and, once completed, records its stored cutout; it finishes only once."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="pro")
    created = await images.create_image(
        sessions,
        account.id,
        ImageSource(original_url="https://example.com/cat.jpg"),
        output_format="jpg",
        output_size="small",
        bg_color="#FF0000",
        webhook_url="https://hooks.example.com/done",
    )
    assert re.fullmatch(r"img_[a-z0-9]{16}", created.id)
    assert (created.status, created.output_format, created.output_size) == ("processing", "jpg", "small")
    assert created.completed_at is None

    completed = await images.mark_image_completed(
        sessions,
        created.id,
        storage_key=f"outputs/{created.id}.jpg",
        content_type="image/jpeg",
        width=1080,
        height=720,
        size_bytes=12345,
    )

    assert completed is not None
    assert (completed.status, completed.storage_key) == ("completed", f"outputs/{created.id}.jpg")
    assert (completed.content_type, completed.width, completed.height, completed.size_bytes) == (
        "image/jpeg",
        1080,
        720,
        12345,
    )
    assert completed.completed_at is not None and completed.completed_at >= completed.created_at
    assert await images.mark_image_failed(sessions, created.id, error_code="x", error_message="late") is None
    stored = await images.get_image(sessions, account.id, created.id)
    assert stored is not None and stored.status == "completed" and stored.bg_color == "#FF0000"
    assert stored.webhook_url == "https://hooks.example.com/done"


async def test_image_lifecycle_to_failed(sessions: Sessions) -> None:
    """A failed image keeps its error code and message and has no stored output."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="pro")
    created = await _image(sessions, account.id)

    failed = await images.mark_image_failed(
        sessions, created.id, error_code="unprocessable_entity", error_message="not an image"
    )

    assert failed is not None
    assert (failed.status, failed.error_code, failed.error_message) == (
        "failed",
        "unprocessable_entity",
        "not an image",
    )
    assert failed.storage_key is None and failed.completed_at is not None


async def test_another_accounts_image_is_none(sessions: Sessions) -> None:
    """An image is visible, and deletable, only through the account that owns it."""
    owner, _ = await accounts.create_account(sessions, name="Owner", plan="pro")
    intruder, _ = await accounts.create_account(sessions, name="Intruder", plan="pro")
    created = await _image(sessions, owner.id)

    assert await images.get_image(sessions, intruder.id, created.id) is None
    assert await images.delete_image(sessions, intruder.id, created.id) is None
    found = await images.get_image(sessions, owner.id, created.id)
    assert found is not None and found.id == created.id


async def test_list_images_pages_newest_first_with_total(sessions: Sessions) -> None:
    """Listing pages through the account's own images newest first and reports the account's total."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="pro")
    other, _ = await accounts.create_account(sessions, name="Other", plan="pro")
    created = [await _image(sessions, account.id, f"https://example.com/{n}.jpg") for n in range(5)]
    await _image(sessions, other.id)
    newest_first = [image.id for image in reversed(created)]

    first = await images.list_images(sessions, account.id, limit=2)
    second = await images.list_images(sessions, account.id, limit=2, offset=2)
    last = await images.list_images(sessions, account.id, limit=2, offset=4)
    beyond = await images.list_images(sessions, account.id, limit=2, offset=10)

    assert (first.total, second.total, last.total, beyond.total) == (5, 5, 5, 5)
    assert [image.id for image in first.images] == newest_first[:2]
    assert [image.id for image in second.images] == newest_first[2:4]
    assert [image.id for image in last.images] == newest_first[4:]
    assert beyond.images == []


async def test_delete_image_returns_the_record_once(sessions: Sessions) -> None:
    """Deleting returns the record (for removing its stored file); afterwards the image is gone."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="pro")
    created = await _image(sessions, account.id)
    await images.mark_image_completed(
        sessions,
        created.id,
        storage_key="outputs/x.png",
        content_type="image/png",
        width=1,
        height=1,
        size_bytes=1,
    )

    deleted = await images.delete_image(sessions, account.id, created.id)

    assert deleted is not None and deleted.id == created.id and deleted.storage_key == "outputs/x.png"
    assert await images.get_image(sessions, account.id, created.id) is None
    assert await images.delete_image(sessions, account.id, created.id) is None
    assert (await images.list_images(sessions, account.id, limit=10)).total == 0


# --- batches -----------------------------------------------------------------------------------------------


async def test_batch_is_created_with_its_images_and_resumable(sessions: Sessions) -> None:
    """A batch and its images are recorded together, in order, and listed for resumption until done."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="pro")
    other, _ = await accounts.create_account(sessions, name="Other", plan="pro")
    urls = [f"https://example.com/{n}.jpg" for n in range(3)]

    batch = await batches.create_batch(
        sessions,
        account.id,
        [ImageSource(original_url=url) for url in urls],
        output_format="webp",
        output_size="medium",
        webhook_url="https://hooks.example.com/batch",
    )

    assert re.fullmatch(r"batch_[a-z0-9]{16}", batch.id)
    assert (batch.status, batch.total_images) == ("processing", 3)
    assert batch.options == {"output_format": "webp", "output_size": "medium", "bg_color": None}
    loaded = await batches.get_batch(sessions, account.id, batch.id)
    assert loaded is not None
    assert [image.original_url for image in loaded.images] == urls
    assert {image.status for image in loaded.images} == {"processing"}
    assert {image.batch_id for image in loaded.images} == {batch.id}
    assert {image.output_format for image in loaded.images} == {"webp"}
    assert await batches.get_batch(sessions, other.id, batch.id) is None
    assert (await images.list_images(sessions, account.id, limit=10)).total == 3
    assert [pending.id for pending in await batches.list_processing_batches(sessions)] == [batch.id]
    resumed = (await batches.list_processing_batches(sessions))[0]
    assert [image.id for image in resumed.images] == [image.id for image in loaded.images]


async def test_batch_completes_once_when_every_image_is_done(sessions: Sessions) -> None:
    """The batch completes only after its last image finishes, and only one caller is told it did."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="pro")
    batch = await batches.create_batch(
        sessions,
        account.id,
        [ImageSource(original_url="https://example.com/1.jpg"), ImageSource(original_filename="2.png")],
        output_format="png",
        output_size="original",
    )
    first, second = batch.images

    await images.mark_image_completed(
        sessions,
        first.id,
        storage_key="outputs/1.png",
        content_type="image/png",
        width=2,
        height=2,
        size_bytes=9,
    )
    assert await batches.complete_batch_if_done(sessions, batch.id) is None
    await images.mark_image_failed(
        sessions, second.id, error_code="unprocessable_entity", error_message="bad"
    )
    racers = await asyncio.gather(*(batches.complete_batch_if_done(sessions, batch.id) for _ in range(5)))

    winners = [racer for racer in racers if racer is not None]
    assert len(winners) == 1
    assert winners[0].status == "completed" and winners[0].completed_at is not None
    assert [image.status for image in winners[0].images] == ["completed", "failed"]
    assert await batches.list_processing_batches(sessions) == []


# --- monthly quota -----------------------------------------------------------------------------------------


async def test_quota_is_exact_under_concurrency(sessions: Sessions) -> None:
    """100 concurrent single-image reservations against a limit of 10 grant exactly 10."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="basic")

    granted = await asyncio.gather(
        *(quota.reserve_images(sessions, account.id, 1, monthly_limit=10) for _ in range(100))
    )

    assert granted.count(True) == 10
    assert await quota.usage(sessions, account.id) == 10


async def test_quota_reservation_is_all_or_nothing(sessions: Sessions) -> None:
    """A batch reservation that would cross the limit reserves nothing; one that fits exactly succeeds."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="pro")

    assert await quota.reserve_images(sessions, account.id, 3, monthly_limit=5)
    assert not await quota.reserve_images(sessions, account.id, 3, monthly_limit=5)
    assert await quota.usage(sessions, account.id) == 3
    assert await quota.reserve_images(sessions, account.id, 2, monthly_limit=5)
    assert await quota.usage(sessions, account.id) == 5
    assert not await quota.reserve_images(sessions, account.id, 6, monthly_limit=5)


async def test_release_gives_images_back_and_unlimited_still_counts(sessions: Sessions) -> None:
    """Unlimited plans are never refused but still counted; released images are usable again, never below 0."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="enterprise")

    assert all(
        await asyncio.gather(*(quota.reserve_images(sessions, account.id, 2, None) for _ in range(10)))
    )
    assert await quota.usage(sessions, account.id) == 20
    await quota.release_images(sessions, account.id, 5)
    assert await quota.usage(sessions, account.id) == 15
    await quota.release_images(sessions, account.id, 50)
    assert await quota.usage(sessions, account.id) == 0
    assert await quota.reserve_images(sessions, account.id, 1, monthly_limit=1)
    assert not await quota.reserve_images(sessions, account.id, 1, monthly_limit=1)


async def test_quota_counts_each_utc_month_separately(sessions: Sessions) -> None:
    """Usage is kept per UTC calendar month, so a new month starts from zero."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="basic")

    assert await quota.reserve_images(sessions, account.id, 1, monthly_limit=1, month="2025-01")
    assert not await quota.reserve_images(sessions, account.id, 1, monthly_limit=1, month="2025-01")
    assert await quota.reserve_images(sessions, account.id, 1, monthly_limit=1, month="2025-02")
    assert await quota.usage(sessions, account.id, month="2025-01") == 1
    assert await quota.usage(sessions, account.id) == 0
    late_new_year = dt.datetime(2025, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert quota.current_month(late_new_year) == "2024-12"


# --- migrations --------------------------------------------------------------------------------------------


async def test_upgrade_schema_is_idempotent(engine: AsyncEngine) -> None:
    """Migrating an already migrated database changes nothing and leaves it at the head revision."""
    await upgrade_schema(engine)

    async with engine.connect() as connection:
        versions = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None and head.isdigit()
    assert versions == [head]


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    """SQLite connections use WAL and wait for a busy writer instead of failing at once."""
    engine = create_database_engine(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'removai.db'}")
    try:
        async with engine.connect() as connection:
            journal_mode = (await connection.execute(text("PRAGMA journal_mode"))).scalar()
            busy_timeout = (await connection.execute(text("PRAGMA busy_timeout"))).scalar()
            foreign_keys = (await connection.execute(text("PRAGMA foreign_keys"))).scalar()
    finally:
        await engine.dispose()
    assert (journal_mode, busy_timeout, foreign_keys) == ("wal", 30000, 1)


# --- output storage: local disk and a real S3-protocol server, through the same protocol -------------------


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> OutputStorage:
    """Each storage test runs on local disk and on a fresh bucket of the session's moto S3 server."""
    if request.param == "local":
        return LocalDiskStorage(tmp_path / "files")
    url: str = request.getfixturevalue("s3_storage_url")
    return ObjectStoreStorage(parse_storage_url(url))


async def test_storage_round_trip(store: OutputStorage) -> None:
    """Bytes put under a key come back, are replaced whole by a second put, and are gone after delete."""
    await store.put("outputs/img_abc.png", b"first", "image/png")
    await store.put("outputs/img_abc.png", b"second", "image/png")

    assert await store.exists("outputs/img_abc.png")
    assert await store.get("outputs/img_abc.png") == b"second"
    assert await store.delete("outputs/img_abc.png")
    assert not await store.exists("outputs/img_abc.png")
    assert not await store.delete("outputs/img_abc.png")
    with pytest.raises(StoredObjectNotFound):
        await store.get("outputs/img_abc.png")


async def test_local_disk_storage_keeps_one_file_per_key(tmp_path: Path) -> None:
    """On disk a replaced key leaves exactly one file behind (no temporary files)."""
    storage = LocalDiskStorage(tmp_path / "files")

    await storage.put("outputs/img_abc.png", b"first", "image/png")
    await storage.put_file("outputs/img_abc.png", _write(tmp_path / "upload", b"second"), "image/png")

    assert [path.name for path in (tmp_path / "files" / "outputs").iterdir()] == ["img_abc.png"]
    assert (tmp_path / "files" / "outputs" / "img_abc.png").read_bytes() == b"second"


async def test_put_file_stores_a_big_file_and_open_streams_it(store: OutputStorage, tmp_path: Path) -> None:
    """put_file stores a file larger than one S3 multipart part (6 MiB) and leaves the file in place; open
    reports its size and streams it back in many chunks, none of them a large part of the object."""
    content = os.urandom(6 * 1024 * 1024 + 123)
    upload = _write(tmp_path / "spooled-upload", content)

    await store.put_file("sources/src_big", upload, "image/png")

    assert upload.read_bytes() == content
    async with await store.open("sources/src_big") as stored:
        chunks = [chunk async for chunk in stored.chunks]
    assert stored.size == len(content)
    assert stored.content_type == ("image/png" if isinstance(store, ObjectStoreStorage) else "application/octet-stream")
    assert b"".join(chunks) == content
    # At least CHUNK_BYTES each (but the last); over S3 a chunk also takes what the last network read brought,
    # so the bound is loose: pieces, never the whole object.
    assert len(chunks) > 4 and max(len(chunk) for chunk in chunks) <= len(content) // 4
    assert await store.get("sources/src_big") == content


async def test_open_can_be_closed_before_reading_to_the_end(store: OutputStorage) -> None:
    """A download abandoned after its first chunk releases the object; the object stays readable."""
    content = os.urandom(16 * CHUNK_BYTES)
    await store.put("outputs/img_abc.png", content, "image/png")

    stored = await store.open("outputs/img_abc.png")
    first = await anext(stored.chunks)
    await stored.aclose()
    unread = await store.open("outputs/img_abc.png")
    await unread.aclose()

    assert content.startswith(first) and 0 < len(first) < len(content)
    assert await store.get("outputs/img_abc.png") == content


async def test_missing_keys(store: OutputStorage, tmp_path: Path) -> None:
    """A key never stored is absent everywhere: get and open raise StoredObjectNotFound, exists and delete say
    False; put_file of a file that does not exist raises and stores nothing."""
    with pytest.raises(StoredObjectNotFound):
        await store.get("outputs/img_none.png")
    with pytest.raises(StoredObjectNotFound):
        await store.open("outputs/img_none.png")
    assert not await store.exists("outputs/img_none.png")
    assert not await store.delete("outputs/img_none.png")
    with pytest.raises(FileNotFoundError):
        await store.put_file("outputs/img_none.png", tmp_path / "no-such-upload", "image/png")
    assert not await store.exists("outputs/img_none.png")


async def test_replacing_is_atomic_for_concurrent_readers(store: OutputStorage, tmp_path: Path) -> None:
    """While a key is replaced (by put and by a multipart put_file), every concurrent reader gets the old bytes
    or the new ones whole, never a mix or a truncated object; a failed put_file leaves the old bytes."""
    old, new = b"o" * (6 * 1024 * 1024), b"n" * (6 * 1024 * 1024 + 7)
    await store.put("outputs/img_abc.png", old, "image/png")
    upload = _write(tmp_path / "new", new)

    async def read() -> bytes:
        async with await store.open("outputs/img_abc.png") as stored:
            body = b"".join([chunk async for chunk in stored.chunks])
        assert len(body) == stored.size
        return body

    readers = [asyncio.create_task(read()) for _ in range(6)]
    await store.put_file("outputs/img_abc.png", upload, "image/png")
    readers += [asyncio.create_task(read()) for _ in range(3)]
    await store.put("outputs/img_abc.png", old, "image/png")
    seen = await asyncio.gather(*readers)

    assert {body == old or body == new for body in seen} == {True}
    with pytest.raises(FileNotFoundError):
        await store.put_file("outputs/img_abc.png", tmp_path / "vanished", "image/png")
    assert await store.get("outputs/img_abc.png") == old


@pytest.mark.parametrize(
    "key",
    [
        "../escape.png",
        "outputs/../../escape.png",
        "/etc/passwd",
        "outputs/./x.png",
        ".hidden",
        "a\\b.png",
        "",
        "a//b",
        "outputs/" + "x" * 300,
    ],
)
async def test_storage_refuses_malformed_keys(store: OutputStorage, tmp_path: Path, key: str) -> None:
    """Keys that could leave the storage root, name hidden files or overflow the column are refused by every
    operation before anything is touched."""
    upload = _write(tmp_path / "upload", b"x")

    for operation in (
        store.put(key, b"x", "image/png"),
        store.put_file(key, upload, "image/png"),
        store.get(key),
        store.open(key),
        store.delete(key),
        store.exists(key),
    ):
        with pytest.raises(InvalidStorageKey):
            await operation
    assert not (tmp_path / "escape.png").exists()
    assert not (tmp_path / "files").exists()


async def test_local_disk_storage_refuses_symlinks_out_of_the_root(tmp_path: Path) -> None:
    """A symlink inside the root cannot be used to write outside it."""
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "elsewhere")
    storage = LocalDiskStorage(tmp_path / "root")

    with pytest.raises(InvalidStorageKey):
        await storage.put("link/x.png", b"x", "image/png")
    with pytest.raises(InvalidStorageKey):
        await storage.put_file("link/x.png", _write(tmp_path / "upload", b"x"), "image/png")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


# --- admin CLI ---------------------------------------------------------------------------------------------


async def _admin(database_url: str, *arguments: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.admin",
        "--database-url",
        database_url,
        *arguments,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_admin_cli_creates_lists_and_rotates(tmp_path: Path) -> None:
    """The CLI migrates a fresh SQLite file, prints a working key once, lists without keys, and rotates."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'admin' / 'removai.db'}"

    # --create: a fresh file on purpose (without it the admin refuses a database that does not exist).
    status, created, _ = await _admin(
        database_url, "accounts", "create", "--name", "Acme", "--plan", "pro", "--create"
    )
    assert status == 0, created
    account_id = re.search(r"^account_id: (acct_[a-z0-9]+)$", created, re.MULTILINE)
    first_key = re.search(r"^api_key: (rmv_\S+)$", created, re.MULTILINE)
    assert account_id is not None and first_key is not None

    status, listing, _ = await _admin(database_url, "accounts", "list")
    assert status == 0
    assert f"{account_id[1]}\tpro\tAcme" in listing
    assert "rmv_" not in listing

    status, rotated, _ = await _admin(database_url, "keys", "rotate", account_id[1])
    assert status == 0
    second_key = re.search(r"^api_key: (rmv_\S+)$", rotated, re.MULTILINE)
    assert second_key is not None and second_key[1] != first_key[1]

    status, _, error = await _admin(database_url, "keys", "rotate", "acct_unknown")
    assert status == 1 and "acct_unknown" in error

    engine = create_database_engine(database_url)
    try:
        sessions = create_sessions(engine)
        assert await accounts.authenticate(sessions, first_key[1]) is None
        authenticated = await accounts.authenticate(sessions, second_key[1])
        assert authenticated is not None and authenticated.id == account_id[1] and authenticated.plan == "pro"
    finally:
        await engine.dispose()


async def test_admin_cli_refuses_unknown_plans(tmp_path: Path) -> None:
    """Plans outside basic, pro and enterprise are rejected by the argument parser."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'removai.db'}"

    status, _, error = await _admin(database_url, "accounts", "create", "--name", "Acme", "--plan", "gold")

    assert status == 2 and "invalid choice: 'gold'" in error
