"""The forms of bg_color and output_format people use (3- or 6-digit hex with or without '#', CSS colour
names, `jpeg`) through the real gateway -> inference service -> Triton (the `held` test model: an all-foreground
mask, so the background shows exactly where the input is itself transparent)."""

from __future__ import annotations

import io

import aiohttp
import pytest
from PIL import Image

from tests.gateway.harness import Gateway, assert_error
from tests.gateway.test_api import download
from tests.gateway.test_openapi import fetch_contract


@pytest.fixture
def gw(held_gw: Gateway) -> Gateway:
    """What is checked is the options' handling and the compositing, not ISNet's mask."""
    return held_gw


def _half_transparent() -> bytes:
    """A 16 x 8 RGBA PNG: the left half fully transparent, the right half opaque green."""
    image = Image.new("RGBA", (16, 8), (0, 200, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 8, 8))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _form(**fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("file", _half_transparent(), filename="half.png", content_type="image/png")
    return form


@pytest.mark.parametrize(
    ("given", "expected", "rgb"),
    [
        ("#FF8000", "#FF8000", (255, 128, 0)),
        ("ff8000", "#FF8000", (255, 128, 0)),
        ("#f80", "#FF8800", (255, 136, 0)),
        ("f80", "#FF8800", (255, 136, 0)),
        ("red", "#FF0000", (255, 0, 0)),
        ("CornflowerBlue", "#6495ED", (100, 149, 237)),
    ],
)
async def test_bg_color_forms_are_composited_and_echoed_as_rrggbb(
    gw: Gateway, given: str, expected: str, rgb: tuple[int, int, int]
) -> None:
    """Every accepted form of bg_color is painted behind the subject and answered as #RRGGBB (upper-case), on
    the upload form and in a JSON-described answer that the OpenAPI document validates."""
    contract = await fetch_contract(gw)
    _, key = await gw.account("pro")
    response = await gw.client.post(
        "/v1/remove-background/file", data=_form(bg_color=given), headers={"X-API-Key": key}
    )
    assert response.status == 200, await response.text()
    data = (await contract.check(response, "/v1/remove-background/file", "POST"))["data"]
    assert data["bg_color"] == expected and data["output_format"] == "png"
    status, content_type, body = await download(data["output_url"])
    assert (status, content_type) == (200, "image/png")
    result = Image.open(io.BytesIO(body)).convert("RGBA")
    assert result.getpixel((2, 4)) == (*rgb, 255)  # where the input was transparent: the colour
    assert result.getpixel((13, 4)) == (0, 200, 0, 255)  # the subject itself


async def test_jpeg_is_taken_as_jpg(gw: Gateway) -> None:
    """output_format=jpeg is jpg: the answer says jpg, the link serves image/jpeg, and with no bg_color the
    transparent part is white."""
    contract = await fetch_contract(gw)
    _, key = await gw.account("pro")
    response = await gw.client.post(
        "/v1/remove-background/file", data=_form(output_format="jpeg"), headers={"X-API-Key": key}
    )
    assert response.status == 200, await response.text()
    data = (await contract.check(response, "/v1/remove-background/file", "POST"))["data"]
    assert data["output_format"] == "jpg" and ".jpg?" in data["output_url"]
    status, content_type, body = await download(data["output_url"])
    assert (status, content_type) == (200, "image/jpeg") and body[:3] == b"\xff\xd8\xff"
    result = Image.open(io.BytesIO(body))
    assert result.format == "JPEG" and result.mode == "RGB"
    white = result.getpixel((2, 4))
    assert isinstance(white, tuple) and all(channel > 245 for channel in white)  # give or take JPEG's rounding

    # The image itself when Accept asks for it, with output_format=jpeg or without it; a short colour is used.
    for body_fields in ({"output_format": "jpeg", "bg_color": "#000"}, {"bg_color": "000"}):
        form = _form(**body_fields)
        response = await gw.client.post(
            "/v1/remove-background/file", data=form, headers={"X-API-Key": key, "Accept": "image/jpeg"}
        )
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "image/jpeg"
        jpeg = Image.open(io.BytesIO(await response.read()))
        black = jpeg.getpixel((2, 4))
        assert jpeg.format == "JPEG" and isinstance(black, tuple) and all(channel < 10 for channel in black)


async def test_output_format_jpeg_with_accept_png_is_406(gw: Gateway) -> None:
    """jpeg names jpg for negotiation as well: asking for jpeg and accepting only PNG is 406, as jpg is."""
    _, key = await gw.account("pro")
    response = await gw.client.post(
        "/v1/remove-background/file", data=_form(output_format="jpeg"), headers={"X-API-Key": key, "Accept": "image/png"}
    )
    assert_error(response.status, await response.json(), 406, "not_acceptable")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("bg_color", "#ff80", "bg_color: must be a hex colour like #FF0000, FF0000 or #F00, or a CSS colour name like red"),
        ("bg_color", "notacolour", "bg_color: must be a hex colour like #FF0000, FF0000 or #F00, or a CSS colour name like red"),
        ("output_format", "JPEG", "output_format: must be one of png, jpg, webp, zip, jpeg"),
        ("output_format", "gif", "output_format: must be one of png, jpg, webp, zip, jpeg"),
    ],
)
async def test_other_forms_are_refused_naming_the_field(gw: Gateway, field: str, value: str, message: str) -> None:
    """A colour that is neither hex nor a CSS name, and a format that is no name or alias, are 400s naming
    the field, before any image is read."""
    _, key = await gw.account("pro")
    response = await gw.client.post(
        "/v1/remove-background/url", json={"url": "https://example.com/a.jpg", field: value}, headers={"X-API-Key": key}
    )
    body = await response.json()
    assert_error(response.status, body, 400, "invalid_request")
    assert body["error"]["message"] == message


async def test_the_document_lists_the_accepted_forms(gw: Gateway) -> None:
    """The OpenAPI document's request schemas list jpeg among the formats and describe bg_color's forms."""
    contract = await fetch_contract(gw)
    schemas = contract.document["components"]["schemas"]
    for name in ("UrlRequest", "FileUpload", "BatchUrlRequest", "BatchFileUpload"):
        properties = schemas[name]["properties"]
        assert properties["output_format"]["enum"] == ["png", "jpg", "webp", "zip", "jpeg"], name
        assert "`jpeg` is accepted as jpg" in properties["output_format"]["description"]
        assert "CSS colour name" in properties["bg_color"]["description"]
        assert {"#FF0000", "#f00", "red"} <= set(properties["bg_color"]["examples"])
