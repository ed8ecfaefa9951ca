"""The authenticated GET hot path: the key cache (revocation within auth_cache_ttl_s) and the point reader."""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path

from gateway.domain import accounts, images
from gateway.domain.accounts import KeyCache
from gateway.http.appkeys import PROCESSOR, SESSIONS
from gateway.schemas import dump
from gateway.store.database import PointReader, Sessions
from tests.gateway.harness import gateway
from tests.waiting import eventually


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _completed_image(sessions: Sessions, account_id: str) -> str:
    image = await images.create_image(
        sessions, account_id, images.ImageSource(original_url="https://example.com/a.jpg"),
        output_format="png", output_size="original", bg_color="#FF0000",
    )
    await images.mark_image_completed(
        sessions, image.id, storage_key=f"outputs/{image.id}.png", content_type="image/png", width=64, height=48,
        size_bytes=1234,
    )
    return image.id


async def test_key_cache_keeps_a_revoked_key_until_its_ttl_then_refuses_it(sessions: Sessions) -> None:
    """A cached key keeps authenticating until ttl_s after it was looked up, and not a moment longer; the new
    key works at once."""
    clock = FakeClock()
    cache = KeyCache(sessions, ttl_s=5.0, monotonic=clock)
    account, old_key = await accounts.create_account(sessions, name="a", plan="pro")
    first = await cache.authenticate(old_key)
    assert first is not None and first.id == account.id and first.plan == "pro"
    new_key = await accounts.rotate_key(sessions, account.id)
    assert new_key is not None
    clock.now += 4.9
    cached = await cache.authenticate(old_key)
    assert cached is not None and cached.id == account.id
    clock.now += 0.1
    assert await cache.authenticate(old_key) is None
    fresh = await cache.authenticate(new_key)
    assert fresh is not None and fresh.id == account.id


async def test_key_cache_of_zero_looks_up_every_time_and_forgets_the_oldest_key(sessions: Sessions) -> None:
    """ttl_s=0 refuses a revoked key at once; a full cache drops its oldest key, which is then looked up again."""
    uncached = KeyCache(sessions, ttl_s=0)
    account, key = await accounts.create_account(sessions, name="a", plan="pro")
    assert (await uncached.authenticate(key)) is not None
    await accounts.rotate_key(sessions, account.id)
    assert await uncached.authenticate(key) is None
    assert await uncached.authenticate("rmv_unknown") is None

    cache = KeyCache(sessions, ttl_s=60, max_entries=1)
    first, first_key = await accounts.create_account(sessions, name="b", plan="pro")
    _, second_key = await accounts.create_account(sessions, name="c", plan="basic")
    assert (await cache.authenticate(first_key)) is not None
    assert (await cache.authenticate(second_key)) is not None  # evicts first_key
    await accounts.rotate_key(sessions, first.id)
    assert await cache.authenticate(first_key) is None


async def test_read_image_shows_what_the_orm_image_shows(sessions: Sessions) -> None:
    """The point reader's view of an image equals the ORM image field by field; another account gets None."""
    owner, _ = await accounts.create_account(sessions, name="owner", plan="pro")
    intruder, _ = await accounts.create_account(sessions, name="intruder", plan="pro")
    image_id = await _completed_image(sessions, owner.id)
    reader = PointReader.of(sessions)
    try:
        view = await images.read_image(reader, owner.id, image_id)
        stored = await images.get_image(sessions, owner.id, image_id)
        assert view is not None and stored is not None
        for name in images.ImageView.__slots__:
            assert getattr(view, name) == getattr(stored, name), name
        assert view.created_at.tzinfo is not None
        assert await images.read_image(reader, intruder.id, image_id) is None
        assert await images.read_image(reader, owner.id, "img_missing") is None
    finally:
        reader.close()


async def test_revoked_key_stops_working_within_the_ttl_and_get_image_answers_unchanged(tmp_path: Path) -> None:
    """Through a real gateway: GET /v1/images/{id} answers what the ORM image's model dumps with the rate-limit headers; a
    key revoked by another process (the admin CLI) gets 401 within auth_cache_ttl_s, the new key 200."""
    async with gateway(data_dir=tmp_path, auth_cache_ttl_s=0.5) as gw:
        account_id, key = await gw.account(plan="pro")
        sessions = gw.app[SESSIONS]
        image_id = await _completed_image(sessions, account_id)
        response = await gw.client.get(f"/v1/images/{image_id}", headers={"X-API-Key": key})
        assert response.status == HTTPStatus.OK
        assert response.headers["X-RateLimit-Limit"] == "60"
        assert response.headers["X-RateLimit-Remaining"] == "59"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Type"].startswith("application/json")
        stored = await images.get_image(sessions, account_id, image_id)
        assert stored is not None
        body = await response.json()
        expected = dump(gw.app[PROCESSOR].image_result(stored))
        # The signed link's expiry moves with the clock: compare everything else, and the link up to its query.
        assert body["data"]["output_url"].split("?")[0] == expected.pop("output_url").split("?")[0]
        assert {k: v for k, v in body["data"].items() if k != "output_url"} == expected
        assert body["success"] is True and body["meta"] == {}

        other_id, other_key = await gw.account(plan="pro", name="other")
        response = await gw.client.get(f"/v1/images/{image_id}", headers={"X-API-Key": other_key})
        assert response.status == HTTPStatus.NOT_FOUND
        assert (await response.json())["error"]["code"] == "not_found"

        new_key = await accounts.rotate_key(sessions, account_id)
        assert new_key is not None

        async def refused() -> bool:
            answer = await gw.client.get(f"/v1/images/{image_id}", headers={"X-API-Key": key})
            return answer.status == HTTPStatus.UNAUTHORIZED

        await eventually(refused, 10.0, message="the revoked key refused")
        response = await gw.client.get(f"/v1/images/{image_id}", headers={"X-API-Key": new_key})
        assert response.status == HTTPStatus.OK
        assert (await response.json())["data"]["id"] == image_id
        assert other_id != account_id
