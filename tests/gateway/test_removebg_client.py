"""An existing remove.bg client from PyPI, remove-bg-api 0.2.1 (pinned in the dev dependencies, installed by `make
setup`), drives the real gateway, inference service and Triton (the held test model) with only its base URL
changed (its module's API_URL): a file, a URL and base64 sources, its account calls, a bad key and a rate-limited
call. The client is synchronous (requests), so each call runs in a thread while the gateway serves on the loop.

The client reads X-Credits-Charged with int(), so a preview's "0.25" would break it (as it would against
remove.bg, which charges previews 0.25 too): these calls ask for size full, 1 credit.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import remove_bg_api
from PIL import Image

from tests.gateway.harness import Gateway, ImageHost
from tests.reference import DATA

FULL = {"size": "full", "format": "auto", "type": "auto"}


@pytest.fixture
def client_base_url(held_gw: Gateway) -> Iterator[str]:
    """The library's one setting, pointed at the test gateway for the test's duration."""
    original = remove_bg_api.API_URL
    remove_bg_api.API_URL = f"http://127.0.0.1:{held_gw.settings.port}/v1.0"
    try:
        yield remove_bg_api.API_URL
    finally:
        remove_bg_api.API_URL = original


async def test_file_url_and_base64_through_the_client(
    held_gw: Gateway, client_base_url: str, image_host: ImageHost, tmp_path: Path
) -> None:
    """The client's three removal calls and its balance: each result is a PNG of the photo's size, and the
    balance it reads (credits.total) falls by one per call."""
    _account_id, key = await held_gw.account("pro")
    client = await asyncio.to_thread(remove_bg_api.RemoveBg, key)  # reads GET /v1.0/account at once
    assert client.account.balance() == 500
    photo = DATA / "chelsea.jpg"
    from_file = await asyncio.to_thread(client.remove_bg_file, str(photo), data=dict(FULL))
    from_url = await asyncio.to_thread(
        client.remove_bg_url, image_host.url("/photos/chelsea.jpg"), data=dict(FULL)
    )
    encoded = base64.b64encode(photo.read_bytes()).decode()
    from_base64 = await asyncio.to_thread(client.remove_bg_base64, encoded, data=dict(FULL))
    for result in (from_file, from_url, from_base64):
        image = Image.open(io.BytesIO(result))
        assert (image.format, image.size, image.mode) == ("PNG", (451, 300), "RGBA")
    assert client.account.balance() == 497  # its own count from X-Credits-Charged
    assert await asyncio.to_thread(client.account.get_balance_dict) == {
        "total": 497, "subscription": 497, "payg": 0, "enterprise": 0}
    assert await asyncio.to_thread(client.account.free_api_calls) == 0
    saved = tmp_path / "no-bg.png"
    assert await asyncio.to_thread(
        client.remove_bg_file, str(photo), out_path=str(saved), raw=False, data=dict(FULL)
    ) == str(saved)
    assert Image.open(saved).size == (451, 300)


async def test_bad_key_raises_the_clients_403(held_gw: Gateway, client_base_url: str) -> None:
    """An unknown key: the client's own 403 error (authentication failed), raised by its first call."""
    with pytest.raises(remove_bg_api.Errors.ApiErrorCode403):
        await asyncio.to_thread(remove_bg_api.RemoveBg, "not-a-key")


async def test_bad_input_raises_the_clients_400(held_gw: Gateway, client_base_url: str, tmp_path: Path) -> None:
    """A file that is not an image: the client's 400 error (invalid parameters or unprocessable image)."""
    _account_id, key = await held_gw.account("pro")
    client = await asyncio.to_thread(remove_bg_api.RemoveBg, key)
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    with pytest.raises(remove_bg_api.Errors.ApiErrorCode400):
        await asyncio.to_thread(client.remove_bg_file, str(text), data=dict(FULL))
    assert await asyncio.to_thread(client.account.get_balance_dict) == {
        "total": 500, "subscription": 500, "payg": 0, "enterprise": 0}


async def test_rate_limited_call_raises_the_clients_429(held_gw: Gateway, client_base_url: str) -> None:
    """Past the basic plan's 10 requests a minute: the client's 429 error (rate limit exceeded)."""
    _account_id, key = await held_gw.account("basic")
    client = await asyncio.to_thread(remove_bg_api.RemoveBg, key)  # request 1
    for _ in range(9):  # requests 2..10
        await asyncio.to_thread(client.account.get_all_info)
    with pytest.raises(remove_bg_api.Errors.ApiErrorCode429):
        await asyncio.to_thread(client.account.get_all_info)
