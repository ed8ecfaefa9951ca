"""Work is claimed, never assumed: batch images are leased with a fencing token; a replica stopped mid-batch,
gracefully or by dying, has its images finished by another replica, each exactly once, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select, update

from gateway.domain import accounts, batches, images, leases, quota
from gateway.domain.images import ImageSource
from gateway.domain.leases import Claim
from gateway.http.appkeys import BATCHES, SESSIONS
from gateway.settings import GatewaySettings
from gateway.store.database import Sessions, default_database_url
from gateway.store.tables import Image
from tests.gateway.harness import Gateway, gateway, postgres_database, serve
from tests.gateway.held_host import HeldImageHost

FIRST = Claim(replica="first", lease=dt.timedelta(seconds=30))
SECOND = Claim(replica="second", lease=dt.timedelta(seconds=30))


async def _expire(sessions: Sessions, image_id: str) -> None:
    async with sessions.begin() as session:
        await session.execute(
            update(Image).where(Image.id == image_id).values(locked_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )


async def test_claims_are_exclusive_fenced_and_taken_over_once_expired(sessions: Sessions) -> None:
    """Two replicas never hold one image; an expired lease is claimed again with a higher attempt, after which
    the old attempt can neither renew nor complete it, and a released lease is claimable at once."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="pro")
    batch = await batches.create_batch(
        sessions, account.id, [ImageSource(original_url=f"http://example.test/{n}.jpg") for n in range(2)],
        output_format="png", output_size="preview",
    )
    first = await leases.claim_batch_image(sessions, FIRST)
    second = await leases.claim_batch_image(sessions, SECOND)
    assert first is not None and second is not None
    assert {first.id, second.id} == {image.id for image in batch.images}
    assert (first.attempt, first.locked_by, second.attempt, second.locked_by) == (1, "first", 1, "second")
    assert await leases.claim_batch_image(sessions, SECOND) is None
    assert await leases.renew_image_lease(sessions, first.id, 1, FIRST)

    await _expire(sessions, first.id)
    taken = await leases.claim_batch_image(sessions, SECOND)
    assert taken is not None and (taken.id, taken.attempt, taken.locked_by) == (first.id, 2, "second")
    assert not await leases.renew_image_lease(sessions, first.id, 1, FIRST)
    outcome: dict[str, Any] = {"content_type": "image/png", "width": 1, "height": 1, "size_bytes": 1}
    late = await images.mark_image_completed(sessions, first.id, storage_key="outputs/x-1.png", attempt=1, **outcome)
    assert late is None
    won = await images.mark_image_completed(sessions, first.id, storage_key="outputs/x-2.png", attempt=2, **outcome)
    assert won is not None and won.status == "completed" and won.storage_key == "outputs/x-2.png"
    assert await images.mark_image_failed(sessions, first.id, error_code="x", error_message="y", attempt=2) is None

    assert await leases.release_image_lease(sessions, second.id, 1)
    again = await leases.claim_batch_image(sessions, FIRST)
    assert again is not None and (again.id, again.attempt) == (second.id, 2)


async def test_single_image_is_swept_only_once_its_lease_runs_out(sessions: Sessions) -> None:
    """A single image claimed by the replica serving its request is left alone while the lease lives; once it
    has run out (the replica died mid-request) one sweep fails it, and a second sweep finds nothing."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="basic")
    image = await images.create_image(
        sessions, account.id, ImageSource(original_url="http://example.test/a.jpg"),
        output_format="png", output_size="preview", claim=FIRST,
    )
    assert (image.attempt, image.locked_by) == (1, "first")
    assert await leases.fail_abandoned_images(sessions, dt.timedelta(hours=1)) == []
    await _expire(sessions, image.id)
    [failed] = await leases.fail_abandoned_images(sessions, dt.timedelta(hours=1))
    assert (failed.id, failed.status, failed.error_code) == (image.id, "failed", "server_error")
    assert await leases.fail_abandoned_images(sessions, dt.timedelta(hours=1)) == []


async def test_abandoned_image_sweep_is_fenced_by_the_attempt(sessions: Sessions) -> None:
    """Single images whose heartbeat stalled past the lease while their worker still runs. Where the worker's
    outcome lands first the sweep leaves the image alone; where the sweep is first it fails the image under
    the next attempt (the token it read plus one), and the stalled worker can then neither renew, complete nor
    fail it: its outcome loses on the token, and nothing can be refunded twice."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="basic")
    source = ImageSource(original_url="http://example.test/a.jpg")
    finished = await images.create_image(sessions, account.id, source, output_format="png", output_size="preview",
                                         claim=FIRST)
    swept = await images.create_image(sessions, account.id, source, output_format="png", output_size="preview",
                                      claim=FIRST)
    await _expire(sessions, finished.id)
    await _expire(sessions, swept.id)
    outcome: dict[str, Any] = {"content_type": "image/png", "width": 1, "height": 1, "size_bytes": 1}
    done = await images.mark_image_completed(sessions, finished.id, storage_key="outputs/a-1.png", attempt=1, **outcome)
    assert done is not None and done.status == "completed"

    [failed] = await leases.fail_abandoned_images(sessions, dt.timedelta(hours=1))
    assert (failed.id, failed.status, failed.attempt, failed.locked_by) == (swept.id, "failed", 2, None)
    assert not await leases.renew_image_lease(sessions, swept.id, 1, FIRST)
    assert await images.mark_image_completed(sessions, swept.id, storage_key="outputs/b-1.png", attempt=1, **outcome) is None
    assert await images.mark_image_failed(sessions, swept.id, error_code="x", error_message="y", attempt=1) is None
    async with sessions() as session:
        rows = {image.id: image for image in (await session.scalars(select(Image))).all()}
    assert (rows[finished.id].status, rows[finished.id].attempt) == ("completed", 1)
    assert (rows[swept.id].status, rows[swept.id].error_code, rows[swept.id].attempt) == ("failed", "server_error", 2)
    assert await leases.fail_abandoned_images(sessions, dt.timedelta(hours=1)) == []


async def test_only_abandoned_claims_count_against_the_attempts(sessions: Sessions) -> None:
    """A lease released by a graceful stop is claimed again under a new attempt (the fencing token still grows,
    and the released attempt can no longer complete the image) without counting as abandoned; a lease left to
    run out does count, once, at the claim that takes the image over."""
    account, _ = await accounts.create_account(sessions, name="Acme", plan="pro")
    await batches.create_batch(
        sessions, account.id, [ImageSource(original_url="http://example.test/a.jpg")], output_format="png",
        output_size="preview",
    )
    first = await leases.claim_batch_image(sessions, FIRST)
    assert first is not None and (first.attempt, first.abandoned_claims) == (1, 0)
    for attempt in (2, 3, 4):
        assert await leases.release_image_lease(sessions, first.id, attempt - 1)
        again = await leases.claim_batch_image(sessions, SECOND)
        assert again is not None and (again.attempt, again.abandoned_claims) == (attempt, 0)
    outcome: dict[str, Any] = {"content_type": "image/png", "width": 1, "height": 1, "size_bytes": 1}
    assert await images.mark_image_completed(sessions, first.id, storage_key="outputs/x-1.png", attempt=1, **outcome) is None

    await _expire(sessions, first.id)
    taken = await leases.claim_batch_image(sessions, FIRST)
    assert taken is not None and (taken.attempt, taken.abandoned_claims) == (5, 1)
    assert await leases.release_image_lease(sessions, first.id, 5)
    last = await leases.claim_batch_image(sessions, SECOND)
    assert last is not None and (last.attempt, last.abandoned_claims) == (6, 1)


def test_heartbeat_must_be_shorter_than_the_lease() -> None:
    """A heartbeat no shorter than the lease would let live work be taken over: refused at start."""
    with pytest.raises(ValidationError, match="heartbeat_s must be shorter than lease_s"):
        GatewaySettings(lease_s=5.0, heartbeat_s=5.0)


@asynccontextmanager
async def _database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield default_database_url(tmp_path / "shared")
        return
    async with postgres_database() as url:
        yield url


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
@pytest.mark.parametrize("stop", ["graceful", "crash"])
async def test_batch_of_a_stopped_replica_is_finished_by_another_exactly_once(
    inference_url: str, tmp_path: Path, backend: str, stop: str
) -> None:
    """Replica A claims images (held in flight by the image host) and stops, releasing its leases or (a crash)
    not; replica B finishes the batch: every image completed once, one output file each, every output_url
    answers 200 from B, images_used equals the completed count."""
    host = HeldImageHost()
    names = ["chelsea.jpg", "coffee.jpg", "astronaut.jpg"]
    async with serve(host.app()) as port, _database(backend, tmp_path) as database_url:
        host.port = port
        common: dict[str, Any] = {
            "inference_url": inference_url, "database_url": database_url, "data_dir": tmp_path / "shared",
            "url_signing_secret": secrets.token_hex(32), "batch_concurrency": 2, "lease_s": 3.0, "heartbeat_s": 0.5,
            "poll_interval_s": 0.5,
        }
        async with gateway(**common, replica_id="replica-a") as first:
            account_id, key = await first.account("pro")
            response = await first.client.post(
                "/v1/remove-background/batch",
                json={"urls": [host.url(name, f"i{n}") for n, name in enumerate(names)]},
                headers={"X-API-Key": key},
            )
            assert response.status == 202
            batch_id = (await response.json())["data"]["batch_id"]
            await host.wait_for_requests(2)  # two images are in flight on A
            assert first.app[BATCHES].in_flight == 2
            if stop == "crash":
                await first.crash_batches()  # dies: its leases stay until they expire
        host.release.set()
        async with gateway(**common, replica_id="replica-b") as second:
            await asyncio.wait_for(second.batches_done(), 240)
            await _assert_finished_once(second, account_id, key, batch_id, tmp_path / "shared", stop)


async def _assert_finished_once(
    replica: Gateway, account_id: str, key: str, batch_id: str, data_dir: Path, stop: str
) -> None:
    sessions = replica.app[SESSIONS]
    response = await replica.client.get(f"/v1/batches/{batch_id}", headers={"X-API-Key": key})
    assert response.status == 200 and response.headers["Content-Type"].startswith("application/json")
    body = await response.json()
    assert body["data"]["status"] == "completed"
    assert [image["status"] for image in body["data"]["images"]] == ["completed"] * 3
    batch = await batches.get_batch(sessions, account_id, batch_id)
    assert batch is not None
    # A's two images were claimed again by B: attempt 2; the third was only ever claimed by B.
    assert sorted(image.attempt for image in batch.images) == [1, 2, 2]
    assert {image.locked_by for image in batch.images} == {"replica-b"}
    outputs = sorted(path.name for path in (data_dir / "files" / "outputs").iterdir())
    assert outputs == sorted(Path(image.storage_key or "").name for image in batch.images)
    for image in body["data"]["images"]:
        download = await replica.client.get(image["output_url"].removeprefix(replica.settings.base_url))
        assert download.status == 200 and download.headers["Content-Type"] == "image/png"
        assert (await download.read()).startswith(b"\x89PNG")
    assert await quota.usage(sessions, account_id) == 3


async def test_a_replica_that_lost_its_lease_cannot_overwrite_or_delete_the_new_owners_work(
    inference_url: str, tmp_path: Path
) -> None:
    """While a replica's image is in flight its lease is taken over (expired, claimed again: attempt 2): the
    replica's result is refused, it deletes only its own output file and refunds nothing; once the new owner
    releases it, the image is claimed again (attempt 3) and completed under its own output key."""
    host = HeldImageHost()
    async with serve(host.app()) as port:
        host.port = port
        async with gateway(
            inference_url=inference_url, data_dir=tmp_path / "data", batch_concurrency=1, lease_s=60.0,
            heartbeat_s=30.0, poll_interval_s=0.5,
        ) as replica:
            sessions = replica.app[SESSIONS]
            account_id, key = await replica.account("pro")
            response = await replica.client.post(
                "/v1/remove-background/batch", json={"urls": [host.url("chelsea.jpg", "one")]},
                headers={"X-API-Key": key},
            )
            assert response.status == 202
            image_id = (await response.json())["data"]["images"][0]["id"]
            await host.wait_for_requests(1)
            await _expire(sessions, image_id)
            thief = await leases.claim_batch_image(sessions, SECOND)
            assert thief is not None and (thief.id, thief.attempt) == (image_id, 2)

            host.release.set()
            await asyncio.wait_for(replica.batches_idle(), 120)
            async with sessions() as session:
                left = await session.get(Image, image_id)
            assert left is not None and (left.status, left.attempt, left.locked_by) == ("processing", 2, "second")
            outputs = tmp_path / "data" / "files" / "outputs"
            assert not outputs.exists() or list(outputs.iterdir()) == []
            assert await quota.usage(sessions, account_id) == 1

            assert await leases.release_image_lease(sessions, image_id, 2)
            replica.app[BATCHES].submit(account_id, "")
            await asyncio.wait_for(replica.batches_done(), 120)
            done = await replica.client.get(f"/v1/images/{image_id}", headers={"X-API-Key": key})
            assert done.status == 200
            body = await done.json()
            assert body["data"]["status"] == "completed"
            async with sessions() as session:
                final = await session.get(Image, image_id)
            assert final is not None and final.attempt == 3 and final.storage_key == f"outputs/{image_id}-3.png"
            assert sorted(path.name for path in outputs.iterdir()) == [f"{image_id}-3.png"]
            download = await replica.client.get(body["data"]["output_url"].removeprefix(replica.settings.base_url))
            assert download.status == 200 and download.headers["Content-Type"] == "image/png"
            assert await quota.usage(sessions, account_id) == 1


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_rolling_restarts_never_fail_a_long_image(inference_url: str, tmp_path: Path, backend: str) -> None:
    """One batch image held in flight (at the image host) through four replicas stopped gracefully in turn,
    with batch_max_attempts=3: each releases its lease and the next claims it (attempts 1 to 4, none
    abandoned); the fifth completes it. It is not failed as "interrupted too many times", and it is billed once."""
    host = HeldImageHost()
    async with serve(host.app()) as port, _database(backend, tmp_path) as database_url:
        host.port = port
        common: dict[str, Any] = {
            "inference_url": inference_url, "database_url": database_url, "data_dir": tmp_path / "shared",
            "url_signing_secret": secrets.token_hex(32), "batch_concurrency": 1, "batch_max_attempts": 3,
            "lease_s": 30.0, "heartbeat_s": 10.0, "poll_interval_s": 0.5,
        }
        for restart in range(4):
            async with gateway(**common, replica_id=f"replica-{restart}") as replica:
                if restart == 0:
                    account_id, key = await replica.account("pro")
                    response = await replica.client.post(
                        "/v1/remove-background/batch", json={"urls": [host.url("chelsea.jpg", "long")]},
                        headers={"X-API-Key": key},
                    )
                    assert response.status == 202
                    batch_id = (await response.json())["data"]["batch_id"]
                await host.wait_for_requests(restart + 1)  # this replica has claimed it and is fetching it
                assert replica.app[BATCHES].in_flight == 1
            # Stopped gracefully: the lease is released.
        host.release.set()
        async with gateway(**common, replica_id="replica-4") as last:
            await asyncio.wait_for(last.batches_done(), 240)
            response = await last.client.get(f"/v1/batches/{batch_id}", headers={"X-API-Key": key})
            assert response.status == 200
            body = await response.json()
            assert body["data"]["status"] == "completed"
            [image] = body["data"]["images"]
            assert image["status"] == "completed", image
            async with last.app[SESSIONS]() as session:
                row = await session.get(Image, image["id"])
            assert row is not None and (row.attempt, row.abandoned_claims, row.locked_by) == (5, 0, "replica-4")
            assert await quota.usage(last.app[SESSIONS], account_id) == 1
