"""The public HTTP API end to end: real gateway -> real gRPC inference service -> real Triton."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

from gateway.domain import accounts, quota
from gateway.http.appkeys import SESSIONS
from gateway.jobs.webhook_signing import verify
from tests.gateway.harness import Gateway, ImageHost, WebhookReceiver, assert_error, file_form
from tests.reference import DATA, reference_mask, upright_rgb
from tests.waiting import eventually

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
PHOTO = (DATA / "chelsea.jpg").read_bytes()


def assert_rate_headers(headers: Any, limit: int) -> None:
    assert headers["X-RateLimit-Limit"] == str(limit)
    assert 0 <= int(headers["X-RateLimit-Remaining"]) < limit
    assert 0 < int(headers["X-RateLimit-Reset"]) - time.time() <= 61


async def download(url: str) -> tuple[int, str, bytes]:
    """Fetches an output_url as any client would: no API key, just the link."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


async def test_url_endpoint_returns_a_downloadable_cutout(gw: Gateway, image_host: ImageHost) -> None:
    """POST /remove-background/url answers the spec's fields; output_url serves a PNG cut-out of the photo."""
    _, key = await gw.account("pro")
    url = image_host.url("/photos/astronaut.jpg")
    response = await gw.client.post(
        "/v1/remove-background/url", json={"url": url, "output_format": "png", "output_size": "original"},
        headers={"X-API-Key": key},
    )
    body = await response.json()
    assert response.status == 200, body
    assert body["success"] is True and body["meta"] == {}
    data = body["data"]
    assert re.fullmatch(r"img_[a-z0-9]{12,}", data["id"])
    assert data["original_url"] == url
    assert data["output_size"] == "original" and data["output_format"] == "png"
    assert data["status"] == "completed"
    assert ISO_UTC.match(data["created_at"])
    assert_rate_headers(response.headers, 60)
    assert response.headers["X-Request-Id"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"

    status, content_type, png = await download(data["output_url"])
    assert (status, content_type) == (200, "image/png")
    image = Image.open(io.BytesIO(png))
    assert image.mode == "RGBA" and image.size == (512, 512)
    alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
    reference = reference_mask(upright_rgb((DATA / "astronaut.jpg").read_bytes()))
    assert float(np.abs(alpha - reference).mean()) < 0.005


async def test_output_url_is_signed_and_expiring(gw: Gateway, image_host: ImageHost) -> None:
    """A tampered or expired link is 404; the path alone (guessable) serves nothing."""
    _, key = await gw.account("pro")
    response = await gw.client.post(
        "/v1/remove-background", json={"url": image_host.url("/photos/chelsea.jpg")}, headers={"X-API-Key": key}
    )
    output_url = (await response.json())["data"]["output_url"]
    assert (await download(output_url))[0] == 200
    bare = output_url.split("?")[0]
    tampered = output_url[:-1] + ("0" if output_url[-1] != "0" else "1")
    expired = re.sub(r"expires=\d+", "expires=1000", output_url)
    for url in (bare, tampered, expired):
        status, _, body = await download(url)
        assert status == 404
        assert json.loads(body)["error"]["code"] == "not_found"


async def test_alias_endpoint_with_jpg_and_bg_color(gw: Gateway, image_host: ImageHost) -> None:
    """POST /remove-background (the spec's auth example) takes the same JSON; jpg gets the bg_color."""
    _, key = await gw.account("pro")
    response = await gw.client.post(
        "/v1/remove-background",
        json={"url": image_host.url("/photos/astronaut.jpg"), "output_format": "jpg", "bg_color": "#00ff00",
              "output_size": "small"},
        headers={"X-API-Key": key},
    )
    data = (await response.json())["data"]
    assert response.status == 200 and data["output_format"] == "jpg" and data["bg_color"] == "#00FF00"
    status, content_type, jpg = await download(data["output_url"])
    assert (status, content_type) == (200, "image/jpeg")
    image = Image.open(io.BytesIO(jpg))
    assert image.mode == "RGB" and image.size == (512, 512)  # never upscaled
    pixel = image.getpixel((2, 2))
    assert isinstance(pixel, tuple) and np.allclose(pixel, (0, 255, 0), atol=12)


async def test_file_endpoint(gw: Gateway) -> None:
    """POST /remove-background/file takes multipart; the answer has no original_url; webp downloads."""
    _, key = await gw.account("basic")
    response = await gw.client.post(
        "/v1/remove-background/file", data=file_form(PHOTO, output_format="webp"), headers={"X-API-Key": key}
    )
    body = await response.json()
    assert response.status == 200, body
    data = body["data"]
    assert "original_url" not in data and data["output_format"] == "webp" and data["status"] == "completed"
    assert_rate_headers(response.headers, 10)
    status, content_type, webp = await download(data["output_url"])
    assert (status, content_type) == (200, "image/webp")
    assert Image.open(io.BytesIO(webp)).size == (451, 300)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("get", "/v1/nope", {}, 404, "not_found"),
        ("get", "/v1/remove-background/url", {}, 405, "invalid_request"),
        ("post", "/v1/remove-background/url", {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
         400, "invalid_request"),
        ("post", "/v1/remove-background/url", {"json": ["a list"]}, 400, "invalid_request"),
        ("post", "/v1/remove-background/url", {"json": {"url": 42}}, 400, "invalid_request"),
        ("post", "/v1/remove-background/url", {"json": {}}, 400, "invalid_request"),
        ("post", "/v1/remove-background/url", {"json": {"url": "http://x.test/a.jpg", "output_size": "huge"}},
         400, "invalid_request"),
        ("post", "/v1/remove-background/url", {"json": {"url": "http://x.test/a.jpg", "output_format": 5}},
         400, "invalid_request"),
        ("post", "/v1/remove-background/url", {"json": {"url": "http://x.test/a.jpg", "bg_color": "#12345"}},
         400, "invalid_request"),
        ("post", "/v1/remove-background/url", {"json": {"url": "http://x.test/a.jpg", "colour": "#123456"}},
         400, "invalid_request"),
        ("post", "/v1/remove-background/url", {"json": {"url": "ftp://example.com/a.jpg"}}, 400, "invalid_request"),
        ("post", "/v1/remove-background/url", {"json": {"url": "file:///etc/passwd"}}, 400, "invalid_request"),
        ("post", "/v1/remove-background/url", {"json": {"url": "/relative.jpg"}}, 400, "invalid_request"),
        ("post", "/v1/remove-background/file", {"data": {"output_format": "png"}}, 400, "invalid_request"),
        ("get", "/v1/images/img_doesnotexist00", {}, 404, "not_found"),
        ("get", "/v1/batches/batch_doesnotexist0", {}, 404, "not_found"),
        ("get", "/v1/images?per_page=1000", {}, 400, "invalid_request"),
    ],
    ids=[
        "unknown-route", "wrong-method", "malformed-json", "json-not-object", "url-wrong-type", "url-missing",
        "unknown-size", "format-wrong-type", "bad-hex", "unknown-field", "ftp-url", "file-url", "relative-url",
        "file-field-missing", "unknown-image", "unknown-batch", "per-page-too-big",
    ],
)
async def test_request_errors_use_the_envelope(
    gw: Gateway, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    """Each malformed request gets the spec's error envelope and code, with the rate-limit headers."""
    _, key = await gw.account("enterprise")
    headers = {"X-API-Key": key, **kwargs.pop("headers", {})}
    response = await getattr(gw.client, method)(path, headers=headers, **kwargs)
    assert_error(response.status, await response.json(), status, code)
    if status == 405:
        assert "POST" in response.headers["Allow"]
    if path != "/v1/nope" and status != 405:  # unmatched routes answer before authentication
        assert_rate_headers(response.headers, 300)


@pytest.mark.parametrize("key", [None, "", "rmv_wrong", "x" * 500])
async def test_missing_or_wrong_key_is_401(gw: Gateway, key: str | None) -> None:
    """No key or an unknown key: 401 invalid_api_key, and no rate-limit headers (no account to count)."""
    headers = {"X-API-Key": key} if key is not None else {}
    response = await gw.client.post("/v1/remove-background/url", json={"url": "http://x.test/a.jpg"}, headers=headers)
    assert_error(response.status, await response.json(), 401, "invalid_api_key")
    assert "X-RateLimit-Limit" not in response.headers


async def test_unsupported_and_unprocessable_files(gw: Gateway, image_host: ImageHost) -> None:
    """A GIF upload and a URL serving text are 415; a corrupt JPEG is 422; none counts against the quota, and
    none leaves an image in the library (the caller never got an id)."""
    account_id, key = await gw.account("pro")
    gif = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(gif, "GIF")
    cases = [
        (gw.client.post("/v1/remove-background/file", data=file_form(gif.getvalue(), "a.gif"),
                        headers={"X-API-Key": key}), 415, "unsupported_media_type"),
        (gw.client.post("/v1/remove-background/url", json={"url": image_host.url("/text")},
                        headers={"X-API-Key": key}), 415, "unsupported_media_type"),
        (gw.client.post("/v1/remove-background/file", data=file_form(PHOTO[:600] + bytes(2000)),
                        headers={"X-API-Key": key}), 422, "unprocessable_entity"),
    ]
    for request, status, code in cases:
        response = await request
        assert_error(response.status, await response.json(), status, code)
    assert await quota.usage(gw.app[SESSIONS], account_id) == 0
    listed = await (await gw.client.get("/v1/images", headers={"X-API-Key": key})).json()
    assert listed["data"] == [] and listed["meta"]["total"] == 0


async def test_inference_down_is_503_with_retry_after(tmp_path: Any) -> None:
    """With the inference service unreachable the answer is 503 server_error with Retry-After; no quota used."""
    from tests.gateway.harness import gateway
    from tools.triton_launcher import free_port

    async with gateway(inference_url=f"127.0.0.1:{free_port()}", data_dir=tmp_path, inference_timeout_s=5) as down:
        account_id, key = await down.account("pro")
        response = await down.client.post(
            "/v1/remove-background/file", data=file_form(PHOTO), headers={"X-API-Key": key}
        )
        assert_error(response.status, await response.json(), 503, "server_error")
        assert int(response.headers["Retry-After"]) >= 1
        assert await quota.usage(down.app[SESSIONS], account_id) == 0


async def test_rate_limit_headers_and_429(gw: Gateway) -> None:
    """A Basic key counts down 10 requests a minute; the 11th is 429 with Retry-After and the headers."""
    _, key = await gw.account("basic")
    remaining = []
    for _ in range(10):
        response = await gw.client.get("/v1/account", headers={"X-API-Key": key})
        assert response.status == 200
        assert_rate_headers(response.headers, 10)
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert remaining == list(range(9, -1, -1))
    response = await gw.client.get("/v1/account", headers={"X-API-Key": key})
    assert_error(response.status, await response.json(), 429, "rate_limit_exceeded")
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert int(response.headers["Retry-After"]) in range(1, 61)


async def test_rate_limit_is_exact_under_concurrency(gw: Gateway) -> None:
    """100 simultaneous requests on a 10/minute key let exactly 10 in."""
    _, key = await gw.account("basic")
    responses = await asyncio.gather(
        *(gw.client.get("/v1/account", headers={"X-API-Key": key}) for _ in range(100))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses.count(200) == 10 and statuses.count(429) == 90


async def test_monthly_quota_refuses_before_inference(gw: Gateway) -> None:
    """With 49 of Basic's 50 images used, one more works and the next is 429 quota_exceeded, not processed."""
    account_id, key = await gw.account("basic")
    assert await quota.reserve_images(gw.app[SESSIONS], account_id, 49, 50)
    first = await gw.client.post("/v1/remove-background/file", data=file_form(PHOTO), headers={"X-API-Key": key})
    assert first.status == 200
    second = await gw.client.post("/v1/remove-background/file", data=file_form(PHOTO), headers={"X-API-Key": key})
    assert_error(second.status, await second.json(), 429, "quota_exceeded")
    assert int(second.headers["Retry-After"]) > 0
    assert_rate_headers(second.headers, 10)
    assert await quota.usage(gw.app[SESSIONS], account_id) == 50
    listed = await (await gw.client.get("/v1/images", headers={"X-API-Key": key})).json()
    assert listed["meta"]["total"] == 1  # the refused request created nothing


async def test_basic_plan_cannot_batch(gw: Gateway, image_host: ImageHost) -> None:
    """Batch is Pro and Enterprise only: Basic gets 403 forbidden."""
    _, key = await gw.account("basic")
    response = await gw.client.post(
        "/v1/remove-background/batch", json={"urls": [image_host.url("/photos/coffee.jpg")]},
        headers={"X-API-Key": key},
    )
    assert_error(response.status, await response.json(), 403, "forbidden")


async def wait_for_batch(gw: Gateway, key: str, batch_id: str, timeout_s: float = 240) -> dict[str, Any]:
    async def completed() -> dict[str, Any] | None:
        response = await gw.client.get(f"/v1/batches/{batch_id}", headers={"X-API-Key": key})
        body: dict[str, Any] = await response.json()
        if response.status == 429:  # a slow (loaded) machine polls past the plan's 60 a minute: wait it out
            return None
        assert response.status == 200, body
        return body if body["data"]["status"] == "completed" else None

    body: dict[str, Any] | None = await eventually(
        # Every poll counts against the key's rate limit (Pro: 60 a minute): 2 s keeps a slow batch under it.
        completed, timeout_s, message=f"batch {batch_id} completed", interval_s=2.0
    )
    assert body is not None
    return body


async def test_url_batch_progresses_to_completion_with_signed_webhook(
    gw: Gateway, image_host: ImageHost, receiver: WebhookReceiver
) -> None:
    """A batch answers at once (processing), finishes in the background, reports each image and calls the
    webhook once with a signature that verifies; only the successful images count against the quota."""
    account_id, key = await gw.account("pro")
    urls = [image_host.url("/photos/astronaut.jpg"), image_host.url("/text"), image_host.url("/photos/coffee.jpg")]
    response = await gw.client.post(
        "/v1/remove-background/batch",
        json={"urls": urls, "output_format": "png", "output_size": "medium", "webhook_url": receiver.url},
        headers={"X-API-Key": key},
    )
    body = await response.json()
    assert response.status == 202, body
    data = body["data"]
    assert re.fullmatch(r"batch_[a-z0-9]{12,}", data["batch_id"])
    assert data["total_images"] == 3 and data["status"] == "processing" and ISO_UTC.match(data["created_at"])
    assert [(i["original_url"], i["status"]) for i in data["images"]] == [(u, "processing") for u in urls]

    done = await wait_for_batch(gw, key, data["batch_id"])
    assert done["meta"] == {"completed": 2, "failed": 1, "processing": 0}
    statuses = [image["status"] for image in done["data"]["images"]]
    assert statuses == ["completed", "failed", "completed"]
    assert done["data"]["images"][1]["error"]["code"] == "unsupported_media_type"
    for image in (done["data"]["images"][0], done["data"]["images"][2]):
        status, content_type, png = await download(image["output_url"])
        assert (status, content_type) == (200, "image/png")
        assert Image.open(io.BytesIO(png)).mode == "RGBA"
    assert await quota.usage(gw.app[SESSIONS], account_id) == 2

    [payload] = await receiver.wait_for(1)
    headers, raw = receiver.deliveries[0]
    account = await accounts.get_account(gw.app[SESSIONS], account_id)
    assert account is not None
    assert verify(account.webhook_secret, headers["X-RemovAI-Timestamp"], raw, headers["X-RemovAI-Signature"])
    assert not verify("another-secret", headers["X-RemovAI-Timestamp"], raw, headers["X-RemovAI-Signature"])
    assert payload["success"] is True and payload["meta"]["event"] == "batch.completed"
    assert payload["data"]["batch_id"] == data["batch_id"] and payload["data"]["status"] == "completed"


async def test_file_batch(gw: Gateway) -> None:
    """A batch of uploaded files (multipart 'files') completes like a URL batch."""
    _, key = await gw.account("enterprise")
    form = aiohttp.FormData()
    form.add_field("output_format", "jpg")
    for name in ("chelsea.jpg", "coffee.jpg"):
        form.add_field("files", (DATA / name).read_bytes(), filename=name, content_type="image/jpeg")
    response = await gw.client.post("/v1/remove-background/batch", data=form, headers={"X-API-Key": key})
    body = await response.json()
    assert response.status == 202, body
    done = await wait_for_batch(gw, key, body["data"]["batch_id"])
    assert [i["status"] for i in done["data"]["images"]] == ["completed", "completed"]
    assert all(i["output_format"] == "jpg" for i in done["data"]["images"])


async def test_single_image_webhook_is_signed(gw: Gateway, image_host: ImageHost, receiver: WebhookReceiver) -> None:
    """webhook_url on a single image gets the result in the envelope, signed with the account's secret."""
    account_id, key = await gw.account("pro")
    response = await gw.client.post(
        "/v1/remove-background/url",
        json={"url": image_host.url("/photos/chelsea.jpg"), "webhook_url": receiver.url},
        headers={"X-API-Key": key},
    )
    assert response.status == 200
    image_id = (await response.json())["data"]["id"]
    [payload] = await receiver.wait_for(1)
    headers, raw = receiver.deliveries[0]
    account = await accounts.get_account(gw.app[SESSIONS], account_id)
    assert account is not None
    assert verify(account.webhook_secret, headers["X-RemovAI-Timestamp"], raw, headers["X-RemovAI-Signature"])
    assert payload["data"]["id"] == image_id and payload["meta"]["event"] == "image.completed"


async def test_key_rotation_stops_the_old_key_within_the_cache_ttl(gw: Gateway) -> None:
    """After rotation the new key works at once and the old key is 401 within auth_cache_ttl_s (this replica may
    remember it that long; tests/gateway/test_hot_path.py pins the TTL itself)."""
    account_id, old = await gw.account("pro")
    assert (await gw.client.get("/v1/account", headers={"X-API-Key": old})).status == 200
    new = await accounts.rotate_key(gw.app[SESSIONS], account_id)
    assert new is not None and new != old
    assert (await gw.client.get("/v1/account", headers={"X-API-Key": new})).status == 200

    async def refused() -> tuple[int, dict[str, Any]] | None:
        answer = await gw.client.get("/v1/account", headers={"X-API-Key": old})
        return (answer.status, await answer.json()) if answer.status != 200 else None

    # Polled twice a second: the old key's requests count against the plan's 60 a minute until it is refused.
    status, body = await eventually(
        refused, gw.settings.auth_cache_ttl_s + 10, message="the old key refused", interval_s=0.5
    )
    assert_error(status, body, 401, "invalid_api_key")


async def test_image_library_pagination_get_delete_and_isolation(gw: Gateway) -> None:
    """List with pagination in meta; get one; another account gets 404; delete removes record and file."""
    _, key = await gw.account("enterprise")
    _, other = await gw.account("enterprise", name="other")
    ids = []
    for _ in range(3):
        response = await gw.client.post(
            "/v1/remove-background/file", data=file_form(PHOTO, output_size="small"), headers={"X-API-Key": key}
        )
        ids.append((await response.json())["data"]["id"])
    page = await (await gw.client.get("/v1/images?page=1&per_page=2", headers={"X-API-Key": key})).json()
    assert [i["id"] for i in page["data"]] == ids[::-1][:2]
    assert page["meta"] == {"page": 1, "per_page": 2, "total": 3, "total_pages": 2}
    page2 = await (await gw.client.get("/v1/images?page=2&per_page=2", headers={"X-API-Key": key})).json()
    assert [i["id"] for i in page2["data"]] == [ids[0]]

    one = await gw.client.get(f"/v1/images/{ids[0]}", headers={"X-API-Key": key})
    data = (await one.json())["data"]
    assert one.status == 200 and data["id"] == ids[0] and data["status"] == "completed"
    theirs = await gw.client.get(f"/v1/images/{ids[0]}", headers={"X-API-Key": other})
    assert_error(theirs.status, await theirs.json(), 404, "not_found")
    not_theirs = await gw.client.delete(f"/v1/images/{ids[0]}", headers={"X-API-Key": other})
    assert_error(not_theirs.status, await not_theirs.json(), 404, "not_found")

    deleted = await gw.client.delete(f"/v1/images/{ids[0]}", headers={"X-API-Key": key})
    assert deleted.status == 200 and (await deleted.json())["data"] == {"id": ids[0], "deleted": True}
    assert (await download(data["output_url"]))[0] == 404
    gone = await gw.client.get(f"/v1/images/{ids[0]}", headers={"X-API-Key": key})
    assert_error(gone.status, await gone.json(), 404, "not_found")
    assert not list((gw.settings.data_dir / "files" / "outputs").glob(f"{ids[0]}.*"))
