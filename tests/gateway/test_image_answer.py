"""The cut-out in the answer: Accept negotiation between the JSON envelope and the image's
bytes, end to end through the real gateway, inference service and Triton; the negotiation rule as a unit."""

from __future__ import annotations

import io
import time
from typing import Any

import aiohttp
import pytest
from PIL import Image

from gateway.errors import NotAcceptable
from gateway.http.handlers.removal import foreground_headers
from gateway.http.negotiation import choose_answer, choose_image
from tests.gateway.harness import Gateway, ImageHost, file_form
from tests.reference import DATA

PHOTO = (DATA / "chelsea.jpg").read_bytes()


def assert_rate_headers(headers: Any) -> None:
    assert headers["X-RateLimit-Limit"] == "60"
    assert 0 <= int(headers["X-RateLimit-Remaining"]) < 60
    assert 0 < int(headers["X-RateLimit-Reset"]) - time.time() <= 61


async def download(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.read()


@pytest.mark.parametrize(
    ("accept", "output_format", "expected"),
    [
        (None, None, None),
        ("", "jpg", None),
        ("*/*", None, None),
        ("*/*", "jpg", None),  # curl's, requests' and aiohttp's default: existing clients keep the envelope
        ("application/json", None, None),
        ("image/png", None, "png"),
        ("image/webp", None, "webp"),
        ("image/jpeg", "jpg", "jpg"),
        ("image/*", None, "png"),
        ("image/*", "webp", "webp"),
        ("image/png, */*;q=0.1", None, "png"),
        ("image/png, */*", None, "png"),  # same q, the image named more precisely than */*
        ("image/png, application/json", None, None),  # a tie goes to the documented default
        ("image/png;q=0.5, application/json", None, None),
        ("application/json;q=0.2, image/webp;q=0.8", None, "webp"),
        ("image/webp, image/png", None, "webp"),
        ("image/webp;q=0.5, image/png", None, "png"),
        ("image/png;q=0, */*", None, None),
        ("text/html, image/gif;q=0.9, */*;q=0.1", None, None),
        ("image/png;q=bogus", None, "png"),
        ("IMAGE/PNG", None, "png"),
    ],
)
def test_accept_rule(accept: str | None, output_format: str | None, expected: str | None) -> None:
    """Which answer each Accept header gets (None: the JSON envelope), q-values and specificity included."""
    assert choose_answer(accept, output_format) == expected


@pytest.mark.parametrize(
    ("accept", "output_format", "image_allowed"),
    [
        ("text/html", None, True),
        ("image/gif", None, True),
        ("image/png", "jpg", True),
        ("application/json;q=0, image/png", "webp", True),
        ("image/png", None, False),
        ("application/json;q=0", None, False),
    ],
)
def test_accept_nothing_producible_is_406(accept: str, output_format: str | None, image_allowed: bool) -> None:
    """An Accept that admits neither the envelope nor an image this request can make is NotAcceptable (406)."""
    with pytest.raises(NotAcceptable) as raised:
        choose_answer(accept, output_format, image_allowed=image_allowed)
    assert raised.value.status == 406 and raised.value.code == "not_acceptable"
    assert "application/json" in raised.value.message


@pytest.mark.parametrize(
    ("accept", "output_format", "expected"),
    [
        (None, None, "png"),
        ("*/*", None, "png"),
        ("application/json, */*;q=0.1", None, "png"),
        ("image/webp, */*", None, "webp"),
        ("image/jpeg;q=0.5, image/webp;q=0.9", None, "webp"),
        ("image/*", "jpg", "jpg"),
        (None, "webp", "webp"),
    ],
)
def test_image_only_rule(accept: str | None, output_format: str | None, expected: str) -> None:
    """The `/image` operations always answer an image: any type (or none) gets output_format or png; otherwise
    the image type the Accept header prefers."""
    assert choose_image(accept, output_format) == expected


@pytest.mark.parametrize(("accept", "output_format"), [("application/json", None), ("image/png", "webp"),
                                                       ("text/html, image/gif", None)])
def test_image_only_accept_without_a_producible_image_is_406(accept: str, output_format: str | None) -> None:
    """An Accept that admits no image this request can make is NotAcceptable (406), naming what it can make."""
    with pytest.raises(NotAcceptable) as raised:
        choose_image(accept, output_format)
    assert raised.value.status == 406 and "image/" in raised.value.message and "json" not in raised.value.message


def test_foreground_headers_come_from_the_images_box() -> None:
    """The X-Foreground-* hook: from the JSON's `foreground` box when there is one, none otherwise."""
    assert foreground_headers({"id": "img_x"}) == {}
    assert foreground_headers({"foreground": {"left": 3, "top": 4, "width": 50, "height": 60}}) == {
        "X-Foreground-Left": "3", "X-Foreground-Top": "4", "X-Foreground-Width": "50", "X-Foreground-Height": "60",
    }


async def test_file_upload_with_accept_png_answers_the_cutout_itself(gw: Gateway) -> None:
    """Accept: image/png -> 200 with the PNG bytes, its id and size in headers, rate-limit headers; the record
    and its output_url exist and serve the very same bytes."""
    _, key = await gw.account("pro")
    response = await gw.client.post(
        "/v1/remove-background/file", data=file_form(PHOTO), headers={"X-API-Key": key, "Accept": "image/png"}
    )
    body = await response.read()
    assert response.status == 200, body[:300]
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Vary"] == "Accept"
    assert_rate_headers(response.headers)
    assert response.headers["X-Request-Id"]
    assert response.headers["Cache-Control"] == "no-store"
    image_id = response.headers["X-Image-Id"]
    assert image_id.startswith("img_")
    assert response.headers["Content-Disposition"] == f'inline; filename="{image_id}.png"'
    cutout = Image.open(io.BytesIO(body))
    assert cutout.format == "PNG" and cutout.mode == "RGBA"
    assert (int(response.headers["X-Width"]), int(response.headers["X-Height"])) == cutout.size
    assert cutout.size == Image.open(io.BytesIO(PHOTO)).size

    record = await gw.client.get(f"/v1/images/{image_id}", headers={"X-API-Key": key})
    data = (await record.json())["data"]
    assert record.status == 200 and data["status"] == "completed" and data["output_format"] == "png"
    assert (data["width"], data["height"]) == cutout.size and data["size_bytes"] == len(body)
    assert await download(data["output_url"]) == body


async def test_url_with_accept_webp_sets_the_output_format(gw: Gateway, image_host: ImageHost) -> None:
    """Accept: image/webp without output_format: the answer is a WEBP and the record says webp."""
    _, key = await gw.account("pro")
    response = await gw.client.post(
        "/v1/remove-background/url", json={"url": image_host.url("/photos/coffee.jpg")},
        headers={"X-API-Key": key, "Accept": "image/webp"},
    )
    body = await response.read()
    assert response.status == 200, body[:300]
    assert response.headers["Content-Type"] == "image/webp"
    assert_rate_headers(response.headers)
    assert Image.open(io.BytesIO(body)).format == "WEBP"
    record = await gw.client.get(f"/v1/images/{response.headers['X-Image-Id']}", headers={"X-API-Key": key})
    data = (await record.json())["data"]
    assert data["output_format"] == "webp" and data["original_url"] == image_host.url("/photos/coffee.jpg")


async def test_image_wildcard_follows_output_format_and_star_keeps_json(gw: Gateway, image_host: ImageHost) -> None:
    """image/* with output_format=jpg is a JPEG; */* (curl's default) with output_format keeps the envelope."""
    _, key = await gw.account("pro")
    url = image_host.url("/photos/chelsea.jpg")
    jpeg = await gw.client.post(
        "/v1/remove-background/url", json={"url": url, "output_format": "jpg"},
        headers={"X-API-Key": key, "Accept": "image/*"},
    )
    assert jpeg.status == 200 and jpeg.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(await jpeg.read())).format == "JPEG"

    envelope = await gw.client.post(
        "/v1/remove-background/url", json={"url": url, "output_format": "jpg"},
        headers={"X-API-Key": key, "Accept": "*/*"},
    )
    body = await envelope.json()
    assert envelope.status == 200 and envelope.headers["Content-Type"].startswith("application/json")
    assert body["success"] is True and body["data"]["output_format"] == "jpg"
    assert "X-Image-Id" not in envelope.headers and envelope.headers["Vary"] == "Accept"


async def test_unproducible_accept_is_406_before_any_work(gw: Gateway, image_host: ImageHost) -> None:
    """An Accept the request cannot satisfy is 406 not_acceptable in the envelope, with rate-limit headers,
    and leaves nothing in the library and nothing fetched; a batch answers only JSON."""
    _, key = await gw.account("pro")
    url = image_host.url("/photos/rocket.jpg")
    fetched = len(image_host.requests)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/remove-background/url", {"json": {"url": url, "output_format": "jpg"}}, "image/png"),
        ("/v1/remove-background/url", {"json": {"url": url}}, "text/html"),
        ("/v1/remove-background/file", {"data": file_form(PHOTO)}, "image/gif"),
        ("/v1/remove-background/file", {"data": file_form(PHOTO, output_format="webp")}, "image/png"),
        ("/v1/remove-background/batch", {"json": {"urls": [url]}}, "image/png"),
    ]
    for path, payload, accept in cases:
        response = await gw.client.post(path, headers={"X-API-Key": key, "Accept": accept}, **payload)
        body = await response.json()
        assert response.status == 406, (path, accept, body)
        assert body["success"] is False and body["error"]["code"] == "not_acceptable"
        assert body["error"]["status"] == 406 and "application/json" in body["error"]["message"]
        assert_rate_headers(response.headers)
    listed = await gw.client.get("/v1/images", headers={"X-API-Key": key})
    assert (await listed.json())["meta"]["total"] == 0
    assert len(image_host.requests) == fetched

    batch = await gw.client.post(
        "/v1/remove-background/batch", json={"urls": [url]}, headers={"X-API-Key": key, "Accept": "*/*"}
    )
    assert batch.status == 202


async def test_failed_image_answer_is_the_error_envelope(gw: Gateway, image_host: ImageHost) -> None:
    """Asked for image bytes, a source that is not an image still answers the JSON error envelope (415)."""
    _, key = await gw.account("pro")
    response = await gw.client.post(
        "/v1/remove-background/url", json={"url": image_host.url("/text")},
        headers={"X-API-Key": key, "Accept": "image/png"},
    )
    body = await response.json()
    assert response.status == 415, body
    assert body["error"]["code"] == "unsupported_media_type"
    assert_rate_headers(response.headers)


async def test_image_answers_406_and_idempotency_answers_match_the_document(gw: Gateway) -> None:
    """The OpenAPI document describes the image answer (type, X-Image-Id/X-Width/X-Height), the 406, a
    replayed answer and the 422 of a reused Idempotency-Key, validated against real answers."""
    from tests.gateway.test_openapi import fetch_contract

    contract = await fetch_contract(gw)
    path = "/v1/remove-background/file"
    _, key = await gw.account("pro")
    headers = {"X-API-Key": key, "Accept": "image/webp", "Idempotency-Key": "doc-1"}
    image = await gw.client.post(path, data=file_form(PHOTO), headers=headers)
    assert image.status == 200 and image.content_type == "image/webp"
    assert Image.open(io.BytesIO(await contract.check(image, path, "POST"))).format == "WEBP"
    documented = contract.at(contract.response_pointer(path, "POST", 200))["headers"]
    assert {"X-Image-Id", "X-Width", "X-Height", "Idempotent-Replayed"} <= set(documented)
    replay = await gw.client.post(path, data=file_form(PHOTO), headers=headers)
    assert replay.headers["Idempotent-Replayed"] == "true"
    await contract.check(replay, path, "POST")
    reused = await gw.client.post(path, data=file_form(PHOTO, output_size="small"), headers=headers)
    assert (await contract.check(reused, path, "POST"))["error"]["code"] == "idempotency_key_reused"
    refused = await gw.client.post(path, data=file_form(PHOTO), headers={"X-API-Key": key, "Accept": "text/csv"})
    assert (await contract.check(refused, path, "POST"))["error"]["code"] == "not_acceptable"
