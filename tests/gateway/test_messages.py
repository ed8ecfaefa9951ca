"""Error messages a client sees are plain, correct English and give examples that fit the field they name."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import pytest
from PIL import Image

from tests.gateway.harness import Gateway


@pytest.fixture
def gw(held_gw: Gateway) -> Gateway:
    """Every answer here is given before the model runs (by the gateway or the inference service's decoder), so
    the `held` test model stands in for ISNet."""
    return held_gw


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def _form(*files: bytes, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    for index, content in enumerate(files):
        form.add_field("file", content, filename=f"{index}.png", content_type="image/png")
    return form


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/remove-background/url", {"url": "https://example.com/a.jpg", "webhook_url": ""},
         "webhook_url: must not be empty; leave the field out instead"),
        ("/v1/remove-background/url", {"url": "https://example.com/a.jpg", "webhook_url": "/hooks/removai"},
         "webhook_url: the URL must be absolute, starting with https:// or http://"),
        ("/v1/remove-background/url", {"url": "image.jpg"},
         "url: the URL must be absolute, starting with https:// or http://"),
        ("/v1/remove-background/url", {"url": "https://example.com/a.jpg", "bg_color": ""},
         "bg_color: must be a hex colour like #FF0000, FF0000 or #F00, or a CSS colour name like red"),
        ("/v1/remove-background/url", {"url": "https://example.com/a.jpg", "colour": "red"},
         "colour: is not a known parameter"),
    ],
    ids=["empty-webhook", "relative-webhook", "relative-url", "empty-bg-color", "unknown-field"],
)
async def test_json_refusals_name_the_field_plainly(gw: Gateway, path: str, body: dict[str, Any], message: str) -> None:
    """Each refused JSON body is 400 invalid_request with a message naming the field and a fitting example."""
    _, key = await gw.account("pro")
    response = await gw.client.post(path, json=body, headers={"X-API-Key": key})
    answer = await response.json()
    assert response.status == 400, answer
    assert answer == {"success": False, "error": {"code": "invalid_request", "message": message, "status": 400}}


async def test_two_files_on_the_single_upload_say_one_file(gw: Gateway) -> None:
    """Two `file` parts on the single-image upload: "file: one file per request", not "at most 1 files"."""
    _, key = await gw.account("pro")
    response = await gw.client.post(
        "/v1/remove-background/file", data=_form(_png(8, 8), _png(8, 8)), headers={"X-API-Key": key}
    )
    answer = await response.json()
    assert response.status == 400, answer
    assert answer["error"] == {"code": "invalid_request", "message": "file: one file per request", "status": 400}


@pytest.mark.parametrize(
    ("dims", "message"),
    [
        ((20_000, 20_000), "the image has more than 50,000,000 pixels; the limit is 50,000,000 pixels (50 MP)"),
        ((10_000, 6_000), "the image is 10000x6000 = 60,000,000 pixels; the limit is 50,000,000 pixels (50 MP)"),
    ],
    ids=["400MP-pillow-bomb", "60MP"],
)
async def test_over_size_images_get_the_50_mp_message(gw: Gateway, dims: tuple[int, int], message: str) -> None:
    """A 400 MP PNG (a decompression bomb to Pillow) and a 60 MP one both get 422 with the service's 50 MP
    message, and neither leaves an image in the library."""
    _, key = await gw.account("pro")
    response = await gw.client.post(
        "/v1/remove-background/file", data=_form(_png(*dims)), headers={"X-API-Key": key}
    )
    answer = await response.json()
    assert response.status == 422, answer
    assert answer["error"]["code"] == "unprocessable_entity" and message in answer["error"]["message"]
    listed = await (await gw.client.get("/v1/images", headers={"X-API-Key": key})).json()
    assert listed["data"] == []
