"""The remove.bg drop-in (POST /v1.0/removebg, GET /v1.0/account) through the real gateway, inference service and
Triton on the held test model (an all-foreground mask, so pixels are exact): the reference's request examples,
every answer header and body field, placement pixels, credits and remove.bg's error shape."""

from __future__ import annotations

import base64
import io
import zipfile
from typing import Any

import numpy as np
from aiohttp import FormData
from PIL import Image

from common import matting_truth
from gateway.domain import quota
from gateway.http.appkeys import SESSIONS
from tests.gateway.harness import Gateway, ImageHost
from tests.reference import DATA

PATH = "/v1.0/removebg"
ROCKET = (DATA / "rocket.jpg").read_bytes()  # 640 x 427: 0.27 MP, above the preview tier's 0.25


def _png(size: tuple[int, int] = (200, 100), colour: tuple[int, int, int] = (30, 140, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def _form(image: bytes, **fields: str) -> FormData:
    form = FormData()
    form.add_field("image_file", image, filename="photo.png", content_type="image/png")
    for name, value in fields.items():
        form.add_field(name, value)
    return form


async def _account(gw: Gateway, plan: str = "pro") -> tuple[str, dict[str, str]]:
    account_id, key = await gw.account(plan)  # type: ignore[arg-type]
    return account_id, {"X-Api-Key": key}


async def _credits_left(gw: Gateway, headers: dict[str, str]) -> Any:
    response = await gw.client.get("/v1.0/account", headers=headers)
    assert response.status == 200
    return (await response.json())["data"]["attributes"]["credits"]["total"]


def _assert_error(body: Any, code: str) -> None:
    assert set(body) == {"errors"} and len(body["errors"]) == 1
    error = body["errors"][0]
    assert set(error) == {"title", "code", "detail"}
    assert error["code"] == code and error["title"] and error["detail"]


async def test_multipart_file_preview(held_gw: Gateway) -> None:
    """The reference's first example: image_file in a multipart form, size preview (the default): the image's
    bytes with every header, at most 0.25 megapixels, 0.25 credits charged and counted."""
    account_id, headers = await _account(held_gw)
    response = await held_gw.client.post(PATH, data=_form(ROCKET), headers=headers)
    assert response.status == 200, await response.text()
    assert response.content_type == "image/png"
    body = await response.read()
    result = Image.open(io.BytesIO(body))
    width, height = result.size
    assert width * height <= 250_000 and abs(width / height - 640 / 427) < 0.01 and width >= 600
    assert result.mode == "RGBA"
    assert response.headers["X-Width"] == str(width) and response.headers["X-Height"] == str(height)
    assert response.headers["X-Type"] == "other"
    assert response.headers["X-Credits-Charged"] == "0.25"
    assert [response.headers[f"X-Foreground-{side}"] for side in ("Top", "Left", "Width", "Height")] == [
        "0", "0", str(width), str(height)]
    assert response.headers["X-RateLimit-Limit"] == "60"
    assert int(response.headers["X-RateLimit-Remaining"]) == 59
    assert int(response.headers["X-RateLimit-Reset"]) > 0
    assert response.headers["X-Image-Id"].startswith("img_")
    assert await quota.credits_used(held_gw.app[SESSIONS], account_id) == 0.25
    assert await _credits_left(held_gw, headers) == 499.75
    # The result is in the library, like /v1's.
    kept = await held_gw.client.get(f"/v1/images/{response.headers['X-Image-Id']}", headers=headers)
    assert kept.status == 200 and (await kept.json())["data"]["width"] == width


async def test_url_in_a_form_full_size(held_gw: Gateway, image_host: ImageHost) -> None:
    """image_url in an urlencoded form (loopback, allowed by the test gateway's fetch settings), size full: the
    original size, 1 credit."""
    _account_id, headers = await _account(held_gw)
    response = await held_gw.client.post(
        PATH, data={"image_url": image_host.url("/photos/rocket.jpg"), "size": "full"}, headers=headers
    )
    assert response.status == 200, await response.text()
    assert (response.headers["X-Width"], response.headers["X-Height"]) == ("640", "427")
    assert response.headers["X-Credits-Charged"] == "1"
    assert Image.open(io.BytesIO(await response.read())).size == (640, 427)
    assert await _credits_left(held_gw, headers) == 499


async def test_base64_in_json_as_zip(held_gw: Gateway) -> None:
    """image_file_b64 in a JSON body, format zip: color.jpg and alpha.png of the result's size."""
    _account_id, headers = await _account(held_gw)
    response = await held_gw.client.post(
        PATH, json={"image_file_b64": base64.b64encode(_png()).decode(), "format": "zip", "size": "hd"},
        headers=headers,
    )
    assert response.status == 200, await response.text()
    assert response.content_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(await response.read())) as archive:
        assert sorted(archive.namelist()) == ["alpha.png", "color.jpg"]
        colour = Image.open(io.BytesIO(archive.read("color.jpg")))
        alpha = Image.open(io.BytesIO(archive.read("alpha.png")))
    assert (colour.format, colour.size) == ("JPEG", (200, 100))
    assert (alpha.mode, alpha.size) == ("L", (200, 100)) and np.asarray(alpha).min() == 255
    assert response.headers["X-Credits-Charged"] == "1"


async def test_channels_alpha_is_the_matte(held_gw: Gateway) -> None:
    """channels=alpha: a grayscale PNG, the matte (here the roi's rectangle: 255 inside, 0 outside)."""
    _account_id, headers = await _account(held_gw)
    response = await held_gw.client.post(
        PATH, data=_form(_png(), channels="alpha", roi="0 0 100px 50px", size="full"), headers=headers
    )
    assert response.status == 200, await response.text()
    assert response.content_type == "image/png"
    matte = Image.open(io.BytesIO(await response.read()))
    assert matte.mode == "L"
    pixels = np.asarray(matte)
    assert pixels[:50, :100].min() == 255 and pixels[50:, :].max() == 0 and pixels[:, 100:].max() == 0


async def test_accept_json_answers_result_b64(held_gw: Gateway) -> None:
    """Accept: application/json: {"data": {result_b64, foreground_top/left/width/height}} and the same headers."""
    _account_id, headers = await _account(held_gw)
    response = await held_gw.client.post(
        PATH, data=_form(_png(), roi="50px 20px 150px 80px", size="full"),
        headers={**headers, "Accept": "application/json"},
    )
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    data = (await response.json())["data"]
    assert set(data) == {"result_b64", "foreground_top", "foreground_left", "foreground_width", "foreground_height"}
    assert (data["foreground_left"], data["foreground_top"], data["foreground_width"], data["foreground_height"]) == (
        50, 20, 100, 60)
    image = Image.open(io.BytesIO(base64.b64decode(data["result_b64"])))
    assert image.size == (200, 100) and image.format == "PNG"
    assert response.headers["X-Foreground-Left"] == "50" and response.headers["X-Foreground-Width"] == "100"


async def test_crop_with_margins(held_gw: Gateway) -> None:
    """roi makes the subject 100 x 60 at (50, 20); crop with margins '10px 5px' (top/bottom, left/right)."""
    _account_id, headers = await _account(held_gw)
    response = await held_gw.client.post(
        PATH, data=_form(_png(), roi="50px 20px 150px 80px", crop="true", crop_margin="10px 5px", size="full"),
        headers=headers,
    )
    assert response.status == 200, await response.text()
    assert (response.headers["X-Width"], response.headers["X-Height"]) == ("110", "80")
    alpha = np.asarray(Image.open(io.BytesIO(await response.read())).getchannel("A"))
    assert alpha[10:70, 5:105].min() == 255 and alpha[:10].max() == 0 and alpha[:, :5].max() == 0


async def test_scale_and_position(held_gw: Gateway) -> None:
    """scale 50% with position '0% 100%': the 100 x 60 subject at 5/6 of its size in the bottom-left corner."""
    _account_id, headers = await _account(held_gw)
    response = await held_gw.client.post(
        PATH, data=_form(_png(), roi="50px 20px 150px 80px", scale="50%", position="0% 100%", size="full"),
        headers=headers,
    )
    assert response.status == 200, await response.text()
    # 0.5 x min(200/100, 100/60) = 0.833: 83 x 50, left 0, top 100 - 50.
    assert [response.headers[f"X-Foreground-{side}"] for side in ("Left", "Top", "Width", "Height")] == [
        "0", "50", "83", "50"]


async def test_shadow_under_the_subject(held_gw: Gateway) -> None:
    """add_shadow: below the subject's bottom edge the result is partly opaque and dark; above it, transparent."""
    _account_id, headers = await _account(held_gw)
    response = await held_gw.client.post(
        PATH, data=_form(_png((200, 200)), roi="50px 20px 150px 120px", add_shadow="1", size="full"), headers=headers
    )
    assert response.status == 200, await response.text()
    rgba = np.asarray(Image.open(io.BytesIO(await response.read())))
    below, above = rgba[121, 60:140], rgba[17, 60:140]
    assert (below[:, 3] > 40).all() and (below[:, 3] < 255).all() and (below[:, :3] == 0).all()
    assert (above[:, 3] < below[:, 3]).all()
    assert response.headers["X-Foreground-Top"] == "20"  # the box is the subject's, not its shadow's


async def test_background_colour_forms_and_auto_format(held_gw: Gateway) -> None:
    """bg_color as a name, 3-digit hex and hex without '#': format auto is then JPG (no transparency left)."""
    _account_id, headers = await _account(held_gw)
    for colour, rgb in (("red", (255, 0, 0)), ("#00f", (0, 0, 255)), ("00ff00", (0, 255, 0))):
        response = await held_gw.client.post(
            PATH, data=_form(_png(), bg_color=colour, roi="0 0 10px 10px", size="full"), headers=headers
        )
        assert response.status == 200, await response.text()
        assert response.content_type == "image/jpeg"
        pixel = Image.open(io.BytesIO(await response.read())).getpixel((150, 80))
        assert isinstance(pixel, tuple)
        assert all(abs(got - want) <= 8 for got, want in zip(pixel, rgb, strict=True)), (colour, pixel)


async def test_bad_parameters_are_removebg_errors_and_cost_nothing(held_gw: Gateway) -> None:
    """Bad input: 400 in remove.bg's shape, a clear detail naming the parameter, and no credit used."""
    account_id, headers = await _account(held_gw)
    cases: list[tuple[Any, str]] = [
        ({"size": "full"}, "image_file"),  # no source
        ({"image_url": "http://127.0.0.1:1/x.jpg", "image_file_b64": "aGk="}, "exactly one"),
        ({"image_file_b64": "%%%not base64"}, "base64"),
        ({"image_file_b64": base64.b64encode(_png()).decode(), "size": "huge"}, "size"),
        ({"image_file_b64": base64.b64encode(_png()).decode(), "scale": "5%"}, "scale"),
        ({"image_file_b64": base64.b64encode(_png()).decode(), "roi": "10 10 5 5"}, "roi"),
        ({"image_file_b64": base64.b64encode(_png()).decode(), "bg_color": "notacolour"}, "bg_color"),
        ({"image_file_b64": base64.b64encode(_png()).decode(), "crop": "maybe"}, "crop"),
        ({"image_file_b64": base64.b64encode(_png()).decode(), "colour": "red"}, "colour"),
        ({"image_file_b64": base64.b64encode(b"not an image").decode()}, "JPG, PNG and WEBP"),
        # The fetch guard as on /v1: a private address is refused before any connection is tried.
        ({"image_url": "http://10.1.2.3/photo.jpg"}, "image_url"),
        ({"image_file_b64": base64.b64encode(_png()).decode(), "bg_image_url": "http://192.168.0.1/b.jpg"},
         "bg_image_url"),
    ]
    for body, detail in cases:
        response = await held_gw.client.post(PATH, json=body, headers=headers)
        assert response.status == 400, (body, await response.text())
        answer = await response.json()
        _assert_error(answer, answer["errors"][0]["code"])
        assert detail in answer["errors"][0]["detail"], answer
        assert "X-Request-Id" in response.headers and response.headers["X-RateLimit-Limit"] == "60"
    assert await quota.credits_used(held_gw.app[SESSIONS], account_id) == 0


async def test_key_errors_are_403(held_gw: Gateway) -> None:
    """A missing or unknown key: 403 auth_failed (remove.bg's status), on both endpoints."""
    for headers in ({}, {"X-Api-Key": "nope"}):
        for method, path in (("POST", PATH), ("GET", "/v1.0/account")):
            response = await held_gw.client.request(method, path, headers=headers)
            assert response.status == 403
            _assert_error(await response.json(), "auth_failed")


async def test_rate_limit_is_429_with_retry_after(held_gw: Gateway) -> None:
    """Over the plan's requests per minute (basic: 10): 429 rate_limit_exceeded with Retry-After and the
    rate-limit headers, counted across both doors."""
    _account_id, headers = await _account(held_gw, "basic")
    for _ in range(5):
        assert (await held_gw.client.get("/v1/account", headers=headers)).status == 200
    for _ in range(5):
        assert (await held_gw.client.get("/v1.0/account", headers=headers)).status == 200
    response = await held_gw.client.get("/v1.0/account", headers=headers)
    assert response.status == 429
    _assert_error(await response.json(), "rate_limit_exceeded")
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["X-RateLimit-Remaining"] == "0"


async def test_no_credits_is_402(held_gw: Gateway) -> None:
    """With the plan's monthly images used up: 402 insufficient_credits, nothing charged; the account says 0."""
    account_id, headers = await _account(held_gw, "basic")
    assert await quota.reserve_images(held_gw.app[SESSIONS], account_id, 50, 50)
    response = await held_gw.client.post(PATH, data=_form(_png()), headers=headers)
    assert response.status == 402
    _assert_error(await response.json(), "insufficient_credits")
    assert await _credits_left(held_gw, headers) == 0


async def test_account_object(held_gw: Gateway) -> None:
    """GET /v1.0/account: remove.bg's object, the credits from the plan (pro: 500 images a month)."""
    _account_id, headers = await _account(held_gw)
    response = await held_gw.client.get("/v1.0/account", headers=headers)
    assert response.status == 200
    assert await response.json() == {"data": {"attributes": {
        "credits": {"total": 500, "subscription": 500, "payg": 0, "enterprise": 0},
        "api": {"free_calls": 0, "sizes": "all"},
    }}}


async def test_idempotency_key_replays_once_billed(held_gw: Gateway) -> None:
    """The same request with the same Idempotency-Key: the same image again, marked replayed, billed once."""
    account_id, headers = await _account(held_gw)
    body = {"image_file_b64": base64.b64encode(_png()).decode(), "size": "full"}
    keyed = {**headers, "Idempotency-Key": "order-42"}
    first = await held_gw.client.post(PATH, json=body, headers=keyed)
    again = await held_gw.client.post(PATH, json=body, headers=keyed)
    assert first.status == again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["X-Image-Id"] == first.headers["X-Image-Id"]
    assert await again.read() == await first.read()
    assert await quota.credits_used(held_gw.app[SESSIONS], account_id) == 1


async def test_no_foreground_is_unknown_foreground_and_costs_nothing(held_gw: Gateway) -> None:
    """An image that is transparent everywhere has no foreground whatever the mask: remove.bg's 400
    unknown_foreground, no credit used and nothing left in the library."""
    account_id, headers = await _account(held_gw)
    noise = np.random.default_rng(7).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    noise[..., 3] = 0
    buffer = io.BytesIO()
    Image.fromarray(noise, "RGBA").save(buffer, "PNG")
    assert len(buffer.getvalue()) > 8 * 1024  # past a multipart text field's usual limit
    form = FormData(default_to_multipart=True)
    form.add_field("image_file_b64", base64.b64encode(buffer.getvalue()).decode())  # a long text field, multipart
    form.add_field("size", "full")
    response = await held_gw.client.post(PATH, data=form, headers=headers)
    assert response.status == 400
    body = await response.json()
    _assert_error(body, "unknown_foreground")
    assert body["errors"][0]["title"] == "Could not identify foreground in image"
    assert await quota.credits_used(held_gw.app[SESSIONS], account_id) == 0
    library = await held_gw.client.get("/v1/images", headers=headers)
    assert (await library.json())["meta"]["total"] == 0


def _edge_colour_error(rgb: Any, truth: matting_truth.Composite) -> float:
    """Mean over the true soft edge of true alpha x |RGB - true foreground RGB| (as make quality measures it)."""
    edge = truth.soft_edge
    difference = np.abs(rgb.astype(np.float64) - truth.colour).mean(axis=-1)
    return float(np.mean(truth.alpha[edge] * difference[edge]))


async def test_decontaminate_extension_in_every_body(held_gw: Gateway) -> None:
    """Our extension decontaminate, on fur shot on studio green (known true alpha and colour) sent with the true
    alpha as its own transparency (the held model keeps every pixel, so the result's alpha is the input's): left
    out or true, the soft edges lose the green; false keeps the photo's colours exactly; the alpha is identical.
    Multipart, urlencoded and JSON bodies, text and JSON booleans."""
    _account_id, headers = await _account(held_gw)
    truth = next(c for c in matting_truth.truth_set() if c.name == "fur/green")
    alpha8 = np.clip(np.rint(truth.alpha * 255), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([truth.image, alpha8]), "RGBA").save(buffer, "PNG")
    png = buffer.getvalue()
    b64 = base64.b64encode(png).decode()
    requests: list[tuple[str, dict[str, Any]]] = [
        ("left out", {"data": _form(png, size="full")}),
        ("multipart false", {"data": _form(png, size="full", decontaminate="false")}),
        ("multipart 1", {"data": _form(png, size="full", decontaminate="1")}),
        ("urlencoded 0", {"data": {"image_file_b64": b64, "size": "full", "decontaminate": "0"}}),
        ("json true", {"json": {"image_file_b64": b64, "size": "full", "decontaminate": True}}),
        ("json false", {"json": {"image_file_b64": b64, "size": "full", "decontaminate": False}}),
    ]
    results: dict[str, Any] = {}
    for name, body in requests:
        response = await held_gw.client.post(PATH, headers=headers, **body)
        assert response.status == 200, (name, await response.text())
        rgba = np.asarray(Image.open(io.BytesIO(await response.read())))
        assert rgba.shape == (*alpha8.shape, 4), name
        results[name] = rgba
    for name, rgba in results.items():
        assert np.array_equal(rgba[..., 3], alpha8), name  # alpha never changes
    cleaned, plain = results["left out"], results["multipart false"]
    for name in ("multipart 1", "json true"):
        assert np.array_equal(results[name], cleaned), name
    for name in ("urlencoded 0", "json false"):
        assert np.array_equal(results[name], plain), name
    shows = alpha8 > 0
    assert np.array_equal(plain[..., :3][shows], truth.image[shows])  # the photo's own colours
    assert not np.array_equal(cleaned[..., :3][shows], plain[..., :3][shows])
    before, after = _edge_colour_error(plain[..., :3], truth), _edge_colour_error(cleaned[..., :3], truth)
    assert before > 5.0 and after < 0.5 * before, (before, after)


async def test_decontaminate_bad_value_is_a_removebg_error(held_gw: Gateway) -> None:
    """A value that is not a boolean, in any body: remove.bg's 400 invalid_parameters naming decontaminate, and
    no credit used."""
    account_id, headers = await _account(held_gw)
    b64 = base64.b64encode(_png()).decode()
    bodies: list[dict[str, Any]] = [
        {"data": _form(_png(), decontaminate="maybe")},
        {"data": {"image_file_b64": b64, "decontaminate": "sometimes"}},
        {"json": {"image_file_b64": b64, "decontaminate": "maybe"}},
        {"json": {"image_file_b64": b64, "decontaminate": 2}},
        {"json": {"image_file_b64": b64, "decontaminate": [True]}},
    ]
    for body in bodies:
        response = await held_gw.client.post(PATH, headers=headers, **body)
        assert response.status == 400, (body, await response.text())
        answer = await response.json()
        _assert_error(answer, "invalid_parameters")
        assert answer["errors"][0]["detail"].startswith("decontaminate: "), answer
    assert await quota.credits_used(held_gw.app[SESSIONS], account_id) == 0
