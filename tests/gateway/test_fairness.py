"""Fair use: batch images are claimed round robin across accounts, so one account's big batch does not hold up
another account's small one; and deleting an image mid-processing gives no quota back."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from gateway.domain import accounts, batches, images, leases, quota
from gateway.domain.images import ImageSource
from gateway.domain.leases import Claim
from gateway.http.appkeys import SESSIONS
from gateway.store.database import Sessions
from tests.gateway.harness import gateway, serve
from tests.gateway.held_host import HeldImageHost

CLAIM = Claim(replica="fair", lease=dt.timedelta(seconds=30))


async def _claim_and_finish(sessions: Sessions) -> str:
    image = await leases.claim_batch_image(sessions, CLAIM)
    assert image is not None
    done = await images.mark_image_failed(sessions, image.id, error_code="x", error_message="y", attempt=image.attempt)
    assert done is not None
    return image.account_id


async def test_claims_alternate_between_accounts(sessions: Sessions) -> None:
    """With one image at a time, A's batch of 4 queued first and B's batch of 2 after: A, B, A, B, A, A."""
    first, _ = await accounts.create_account(sessions, name="A", plan="pro")
    second, _ = await accounts.create_account(sessions, name="B", plan="pro")
    for account, count in ((first, 4), (second, 2)):
        await batches.create_batch(
            sessions, account.id, [ImageSource(original_url=f"http://example.test/{n}.jpg") for n in range(count)],
            output_format="png", output_size="preview",
        )
    order = [await _claim_and_finish(sessions) for _ in range(6)]
    names = {first.id: "A", second.id: "B"}
    assert [names[account_id] for account_id in order] == ["A", "B", "A", "B", "A", "A"]
    assert await leases.claim_batch_image(sessions, CLAIM) is None


async def test_claims_prefer_the_account_with_fewer_images_in_flight(sessions: Sessions) -> None:
    """An account holding images in flight yields the next claim to an account with none in flight."""
    first, _ = await accounts.create_account(sessions, name="A", plan="pro")
    second, _ = await accounts.create_account(sessions, name="B", plan="pro")
    for account in (first, second):
        await batches.create_batch(
            sessions, account.id, [ImageSource(original_url=f"http://example.test/{n}.jpg") for n in range(3)],
            output_format="png", output_size="preview",
        )
    held = await leases.claim_batch_image(sessions, CLAIM)
    assert held is not None and held.account_id == first.id
    following = await leases.claim_batch_image(sessions, CLAIM)
    assert following is not None and following.account_id == second.id
    third = await leases.claim_batch_image(sessions, CLAIM)
    assert third is not None and third.account_id == first.id


async def test_small_batch_of_one_account_is_not_queued_behind_a_big_one(
    inference_url: str, tmp_path: Path
) -> None:
    """One image at a time on one gateway: account A queues 5 images, B then queues 2 while A's first is in
    flight; B's images are fetched second and fourth, not after all of A's."""
    host = HeldImageHost()
    async with serve(host.app()) as port:
        host.port = port
        async with gateway(
            inference_url=inference_url, data_dir=tmp_path / "data", batch_concurrency=1, poll_interval_s=0.5
        ) as replica:
            first_id, first_key = await replica.account("pro", name="A")
            second_id, second_key = await replica.account("pro", name="B")
            queued = await replica.client.post(
                "/v1/remove-background/batch",
                json={"urls": [host.url("chelsea.jpg", f"A{n}") for n in range(5)]},
                headers={"X-API-Key": first_key},
            )
            assert queued.status == 202
            await host.wait_for_requests(1)
            small = await replica.client.post(
                "/v1/remove-background/batch",
                json={"urls": [host.url("coffee.jpg", f"B{n}") for n in range(2)]},
                headers={"X-API-Key": second_key},
            )
            assert small.status == 202
            body = await small.json()
            assert body["success"] is True and body["data"]["total_images"] == 2
            host.release.set()
            await asyncio.wait_for(replica.batches_done(), 300)
            assert host.tags == ["A0", "B0", "A1", "B1", "A2", "A3", "A4"]
            sessions = replica.app[SESSIONS]
            assert await quota.usage(sessions, first_id) == 5
            assert await quota.usage(sessions, second_id) == 2


async def test_deleting_an_image_mid_processing_gives_no_quota_back(inference_url: str, tmp_path: Path) -> None:
    """A batch image deleted while its fetch is in flight is gone (404), leaves no output behind, and still
    counts against the month's quota (the delete aborts the work; nothing is refunded)."""
    host = HeldImageHost()
    async with serve(host.app()) as port:
        host.port = port
        async with gateway(inference_url=inference_url, data_dir=tmp_path / "data", batch_concurrency=1) as replica:
            account_id, key = await replica.account("pro")
            queued = await replica.client.post(
                "/v1/remove-background/batch", json={"urls": [host.url("chelsea.jpg", "only")]},
                headers={"X-API-Key": key},
            )
            assert queued.status == 202
            body = await queued.json()
            image_id = body["data"]["images"][0]["id"]
            await host.wait_for_requests(1)
            deleted = await replica.client.delete(f"/v1/images/{image_id}", headers={"X-API-Key": key})
            assert deleted.status == 200
            assert (await deleted.json())["data"] == {"id": image_id, "deleted": True}
            host.release.set()
            await asyncio.wait_for(replica.batches_done(), 120)
            gone = await replica.client.get(f"/v1/images/{image_id}", headers={"X-API-Key": key})
            assert gone.status == 404
            outputs = tmp_path / "data" / "files" / "outputs"
            assert not outputs.exists() or list(outputs.iterdir()) == []
            assert await quota.usage(replica.app[SESSIONS], account_id) == 1
            batch = await batches.get_batch(replica.app[SESSIONS], account_id, body["data"]["batch_id"])
            assert batch is not None and batch.status == "completed"
