"""Mask output, foreground box and crop, model choice and background images through the public HTTP API (real
gateway -> real inference service -> real Triton)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from contract.options import FOREGROUND_ALPHA_THRESHOLD
from inference_service import compositing
from removai_cli.__main__ import run
from tests.gateway.harness import Gateway, ImageHost, assert_error
from tests.gateway.test_api import download, wait_for_batch
from tests.gateway.test_openapi import fetch_contract
from tests.reference import DATA

PHOTO = (DATA / "chelsea.jpg").read_bytes()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _form(files: dict[str, bytes], **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    for name, content in files.items():
        form.add_field(name, content, filename=f"{name}.png", content_type="application/octet-stream")
    return form


def _box_of(alpha: npt.NDArray[np.uint8]) -> dict[str, int]:
    ys, xs = np.nonzero(alpha > FOREGROUND_ALPHA_THRESHOLD)
    return {
        "left": int(xs.min()), "top": int(ys.min()),
        "width": int(xs.max() - xs.min() + 1), "height": int(ys.max() - ys.min() + 1),
    }


async def _post(gw: Gateway, key: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    response = await gw.client.post(path, headers={"X-API-Key": key}, **kwargs)
    return response.status, await response.json()


def test_threshold_is_the_services() -> None:
    """The threshold the API documents is the one the inference service applies."""
    assert FOREGROUND_ALPHA_THRESHOLD == compositing.FOREGROUND_ALPHA_THRESHOLD


async def test_mask_and_foreground_through_the_api(gw: Gateway, image_host: ImageHost) -> None:
    """output_type=mask stores a single-channel PNG equal to the cut-out's alpha; every completed image's JSON
    has the foreground box of that alpha, also from GET /v1/images/{id}."""
    _, key = await gw.account("pro")
    url = image_host.url("/photos/chelsea.jpg")
    status, cutout = await _post(gw, key, "/v1/remove-background/url", json={"url": url})
    assert status == 200, cutout
    status, mask = await _post(gw, key, "/v1/remove-background/url", json={"url": url, "output_type": "mask"})
    assert status == 200, mask
    assert mask["data"]["output_type"] == "mask" and "output_type" not in cutout["data"]
    _, content_type, cutout_png = await download(cutout["data"]["output_url"])
    _, mask_type, mask_png = await download(mask["data"]["output_url"])
    assert (content_type, mask_type) == ("image/png", "image/png")
    matte = Image.open(io.BytesIO(mask_png))
    alpha = np.asarray(Image.open(io.BytesIO(cutout_png)).getchannel("A"))
    assert matte.mode == "L" and np.array_equal(np.asarray(matte), alpha)
    assert cutout["data"]["foreground"] == mask["data"]["foreground"] == _box_of(alpha)
    again = await gw.client.get(f"/v1/images/{mask['data']['id']}", headers={"X-API-Key": key})
    assert (await again.json())["data"]["foreground"] == _box_of(alpha)


async def test_crop_with_margin_and_no_foreground(gw: Gateway) -> None:
    """crop=true with crop_margin returns the box plus the margin, clamped; an image with no foreground is a
    422 saying so; a margin without crop is a 400."""
    _, key = await gw.account("pro")
    status, full = await _post(gw, key, "/v1/remove-background/file", data=_form({"file": PHOTO}))
    assert status == 200, full
    box = full["data"]["foreground"]
    contract = await fetch_contract(gw)
    response = await gw.client.post(
        "/v1/remove-background/file", data=_form({"file": PHOTO}, crop="true", crop_margin="10px"),
        headers={"X-API-Key": key},
    )
    assert response.status == 200
    data = (await contract.check(response, "/v1/remove-background/file", "POST"))["data"]
    assert data["crop"] is True and data["crop_margin"] == "10px"
    left, top = max(0, box["left"] - 10), max(0, box["top"] - 10)
    right = min(full["data"]["width"], box["left"] + box["width"] + 10)
    bottom = min(full["data"]["height"], box["top"] + box["height"] + 10)
    assert (data["width"], data["height"]) == (right - left, bottom - top)
    assert data["foreground"] == {
        "left": box["left"] - left, "top": box["top"] - top, "width": box["width"], "height": box["height"],
    }
    _, _, png = await download(data["output_url"])
    assert Image.open(io.BytesIO(png)).size == (data["width"], data["height"])

    clear = _png(Image.new("RGBA", (40, 30), (0, 0, 0, 0)))
    response = await gw.client.post(
        "/v1/remove-background/file", data=_form({"file": clear}), headers={"X-API-Key": key}
    )
    assert response.status == 200
    plain = await contract.check(response, "/v1/remove-background/file", "POST")
    assert plain["data"]["foreground"] is None
    status, refused = await _post(gw, key, "/v1/remove-background/file", data=_form({"file": clear}, crop="true"))
    assert_error(status, refused, 422, "unprocessable_entity")
    assert "no foreground" in refused["error"]["message"]

    status, bad = await _post(gw, key, "/v1/remove-background/file", data=_form({"file": PHOTO}, crop_margin="5%"))
    assert_error(status, bad, 400, "invalid_request")
    assert bad["error"]["message"] == "crop_margin: applies only with crop=true"


async def test_models_listed_chosen_and_refused(gw: Gateway, image_host: ImageHost) -> None:
    """GET /v1/models needs no key and lists the models, the default first; a chosen model is used and echoed;
    an unknown one is a 400 naming the available ones, a retired one a 400 naming its replacement, for a single
    image and (before queueing) a batch."""
    contract = await fetch_contract(gw)
    response = await gw.client.get("/v1/models")
    assert response.status == 200 and "X-RateLimit-Limit" not in response.headers
    body = await contract.check(response, "/v1/models", "GET")
    models = body["data"]["models"]
    assert [(m["name"], m["default"]) for m in models] == [("isnet", True), ("isnet_int8", False)]
    assert models[0]["version"] == "1" and models[0]["description"].startswith("ISNet (DIS)")

    _, key = await gw.account("pro")
    url = image_host.url("/photos/chelsea.jpg")
    response = await gw.client.post(
        "/v1/remove-background/url", json={"url": url, "model": "isnet"}, headers={"X-API-Key": key}
    )
    assert response.status == 200
    chosen = await contract.check(response, "/v1/remove-background/url", "POST")
    assert chosen["data"]["model"] == "isnet" and chosen["data"]["foreground"]["width"] > 0, chosen
    for path, payload in (
        ("/v1/remove-background/url", {"url": url, "model": "u2net"}),
        ("/v1/remove-background/batch", {"urls": [url], "model": "u2net"}),
    ):
        status, refused = await _post(gw, key, path, json=payload)
        assert_error(status, refused, 400, "invalid_request")
        assert refused["error"]["message"].endswith("unknown model 'u2net'; available: isnet, isnet_int8")
    for path, payload in (
        ("/v1/remove-background/url", {"url": url, "model": "isnet_fp16"}),
        ("/v1/remove-background/batch", {"urls": [url], "model": "isnet_fp16"}),
    ):
        status, refused = await _post(gw, key, path, json=payload)
        assert_error(status, refused, 400, "invalid_request")
        assert refused["error"]["message"].endswith(
            "model 'isnet_fp16' is retired: its 8-bit weights (a dynamic quantisation, whatever the name said) ran "
            "5x slower than isnet on CPUs and held 1.45 GB; use 'isnet_int8' (INT8, faster than isnet) or 'isnet' "
            "(the default)"), refused


async def test_background_image_file_and_url(gw: Gateway, image_host: ImageHost) -> None:
    """A bg_image file part is composited under the subject (opaque result, the backdrop where alpha is 0);
    bg_image_url goes through the URL guard; either with bg_color, or both together, is a 400."""
    _, key = await gw.account("pro")
    backdrop = _png(Image.new("RGB", (90, 60), (0, 200, 0)))
    status, mask = await _post(gw, key, "/v1/remove-background/file", data=_form({"file": PHOTO}, output_type="mask"))
    assert status == 200, mask
    status, composed = await _post(gw, key, "/v1/remove-background/file", data=_form({"file": PHOTO, "bg_image": backdrop}))
    assert status == 200, composed
    _, _, alpha_png = await download(mask["data"]["output_url"])
    _, _, composed_png = await download(composed["data"]["output_url"])
    alpha = np.asarray(Image.open(io.BytesIO(alpha_png)))
    result = Image.open(io.BytesIO(composed_png))
    assert result.mode == "RGB"
    pixels = np.asarray(result).astype(int)
    assert (np.abs(pixels[alpha == 0] - (0, 200, 0)) <= 1).all() and (alpha == 0).any()

    status, by_url = await _post(
        gw, key, "/v1/remove-background/url",
        json={"url": image_host.url("/photos/chelsea.jpg"), "bg_image_url": image_host.url("/photos/coffee.jpg")},
    )
    assert status == 200 and by_url["data"]["bg_image_url"].endswith("/photos/coffee.jpg"), by_url
    _, _, by_url_png = await download(by_url["data"]["output_url"])
    assert Image.open(io.BytesIO(by_url_png)).mode == "RGB"

    for path, kwargs, field in (
        ("/v1/remove-background/url", {"json": {"url": image_host.url("/photos/chelsea.jpg"),
                                                 "bg_image_url": "http://10.1.2.3/bg.png"}}, "bg_image_url"),
        ("/v1/remove-background/url", {"json": {"url": image_host.url("/photos/chelsea.jpg"), "bg_color": "#000000",
                                                 "bg_image_url": image_host.url("/photos/coffee.jpg")}}, "bg_color"),
        ("/v1/remove-background/file", {"data": _form({"file": PHOTO, "bg_image": backdrop}, bg_color="#000000")},
         "bg_color"),
    ):
        status, refused = await _post(gw, key, path, **kwargs)
        assert_error(status, refused, 400, "invalid_request")
        assert refused["error"]["message"].startswith(f"{field}: "), refused


async def test_batch_carries_the_options(gw: Gateway, image_host: ImageHost) -> None:
    """A file batch with crop, a model and a bg_image part applies them to every image: each is cropped to its
    box (foreground from 0,0), made by the chosen model, over the background."""
    _, key = await gw.account("enterprise")  # its 300 requests a minute leave room for polling a slow batch
    backdrop = _png(Image.new("RGB", (50, 50), (10, 20, 30)))
    form = aiohttp.FormData()
    form.add_field("crop", "true")
    form.add_field("model", "isnet")
    for name in ("chelsea.jpg", "coffee.jpg"):
        form.add_field("files", (DATA / name).read_bytes(), filename=name, content_type="image/jpeg")
    form.add_field("bg_image", backdrop, filename="bg.png", content_type="image/png")
    status, body = await _post(gw, key, "/v1/remove-background/batch", data=form)
    assert status == 202, body
    done = await wait_for_batch(gw, key, body["data"]["batch_id"], timeout_s=480)
    assert len(done["data"]["images"]) == 2
    for image in done["data"]["images"]:
        assert image["status"] == "completed", image
        assert image["crop"] is True and image["model"] == "isnet"
        assert image["foreground"]["left"] == 0 and image["foreground"]["top"] == 0
        assert (image["foreground"]["width"], image["foreground"]["height"]) == (image["width"], image["height"])
        _, content_type, png = await download(image["output_url"])
        assert content_type == "image/png" and Image.open(io.BytesIO(png)).mode == "RGB"


async def test_cli_mask_crop_model_and_background(
    gw: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`removai remove --mask --crop --model` writes the cropped grayscale mask; `--bg-image FILE` an opaque
    PNG over that image; contradictory flags stop the run with status 2 before any upload."""
    _, key = await gw.account("pro")
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(PHOTO)
    backdrop = tmp_path / "backdrop.png"
    backdrop.write_bytes(_png(Image.new("RGB", (30, 20), (0, 0, 255))))
    common = ["--api-key", key, "--url", f"http://127.0.0.1:{gw.settings.port}", "--no-progress"]

    status = await run(["remove", str(photo), "--out", str(tmp_path / "mask"), "--mask", "--crop", "--model",
                        "isnet", *common])
    assert status == 0, capsys.readouterr().out
    with Image.open(tmp_path / "mask" / "chelsea.png") as matte:
        assert matte.mode == "L" and (matte.width < 451 or matte.height < 300)
        assert _box_of(np.asarray(matte)) == {"left": 0, "top": 0, "width": matte.width, "height": matte.height}

    status = await run(["remove", str(photo), "--out", str(tmp_path / "bg"), "--bg-image", str(backdrop), *common])
    assert status == 0, capsys.readouterr().out
    with Image.open(tmp_path / "bg" / "chelsea.png") as composed:
        assert composed.mode == "RGB" and composed.size == (451, 300)

    capsys.readouterr()
    status = await run(["remove", str(photo), "--out", str(tmp_path / "no"), "--mask", "--format", "jpg", *common])
    assert status == 2
    assert "--format: a mask is a single-channel PNG" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
