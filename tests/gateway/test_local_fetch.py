"""`python -m tools.stack --allow-local-fetch`, the quick start's URL example: a gateway given the stack's
environment fetches a sample image that `python -m http.server` serves from tests/data on 127.0.0.1, and
processes it; without the flag (production's default) the same request is refused before anything is fetched."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from tests.gateway.harness import gateway
from tests.reference import DATA
from tools.stack.cli import banner, parse_settings
from tools.stack.parts import compose
from tools.stack.settings import FETCH_ALLOW_NETWORKS_VARIABLE, gateway_environment
from tools.triton_launcher import free_port

START_TIMEOUT_S = 30.0


@pytest.fixture
def sample_images(tmp_path: Path) -> Iterator[int]:
    """`python -m http.server --bind 127.0.0.1` serving tests/data, as the quick start runs it; its port. Its
    log goes to a file, so the test can tell whether anything was fetched."""
    port = free_port()
    log = tmp_path / "http.server.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(DATA)],
            stdout=output, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"http.server did not listen within {START_TIMEOUT_S} s"
                time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def fetches(tmp_path: Path) -> list[str]:
    """The requests http.server logged (one line each, "GET /coffee.jpg HTTP/1.1" ...)."""
    return [line for line in (tmp_path / "http.server.log").read_text().splitlines() if '"GET ' in line]


def stack_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *flags: str) -> dict[str, str]:
    """The environment `python -m tools.stack` hands its gateways, with no fetch allowance of the caller's own."""
    monkeypatch.delenv(FETCH_ALLOW_NETWORKS_VARIABLE, raising=False)
    settings = parse_settings([f"--data-dir={tmp_path}", *flags])
    shown = banner(settings, compose(settings).all, "rmv_demo", "created demo account acct_x (plan pro)")
    if flags:
        assert settings.allow_local_fetch
        assert "  URL fetches and webhooks: may reach this machine (127.0.0.0/8, ::1/128): --allow-local-fetch, " \
               "for development only\n" in shown
    else:
        assert not settings.allow_local_fetch
        assert "  URL fetches and webhooks: public addresses only (--allow-local-fetch lets them reach images " \
               "served on this machine)\n" in shown
    return gateway_environment(settings)


async def test_allow_local_fetch_lets_the_quick_starts_url_request_through(
    held_inference_url: str, sample_images: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --allow-local-fetch the gateway fetches http://127.0.0.1:PORT/coffee.jpg from http.server and
    answers 200 with a completed cut-out whose link serves a PNG of the photo's size."""
    env = stack_settings(tmp_path, monkeypatch, "--allow-local-fetch")
    assert env[FETCH_ALLOW_NETWORKS_VARIABLE] == "127.0.0.0/8,::1/128"
    url = f"http://127.0.0.1:{sample_images}/coffee.jpg"

    async with gateway(inference_url=held_inference_url, data_dir=tmp_path / "gateway",
                       fetch_allow_networks=env[FETCH_ALLOW_NETWORKS_VARIABLE]) as running:
        _, api_key = await running.account("pro")
        response = await running.client.post(
            "/v1/remove-background/url", headers={"X-API-Key": api_key}, json={"url": url}
        )
        assert response.status == HTTPStatus.OK, await response.text()
        assert response.headers["Content-Type"].startswith("application/json")
        body = await response.json()
        assert body["success"] is True and body["data"]["status"] == "completed"
        assert body["data"]["original_url"] == url
        async with aiohttp.ClientSession() as session, session.get(body["data"]["output_url"]) as download:
            assert download.status == HTTPStatus.OK and download.headers["Content-Type"] == "image/png"
            cutout_bytes = await download.read()
        with Image.open(io.BytesIO(cutout_bytes)) as cutout, Image.open(DATA / "coffee.jpg") as photo:
            assert cutout.format == "PNG" and cutout.mode == "RGBA" and cutout.size == photo.size
    assert [line.split('"')[1] for line in fetches(tmp_path)] == ["GET /coffee.jpg HTTP/1.1"]


async def test_without_the_flag_a_local_url_is_refused_and_nothing_is_fetched(
    held_inference_url: str, sample_images: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stack's default, production's: the same URL is 400 invalid_request (the destination is not allowed)
    and http.server is never asked."""
    env = stack_settings(tmp_path, monkeypatch)
    assert FETCH_ALLOW_NETWORKS_VARIABLE not in env

    async with gateway(inference_url=held_inference_url, data_dir=tmp_path / "gateway",
                       fetch_allow_networks=env.get(FETCH_ALLOW_NETWORKS_VARIABLE, "")) as running:
        _, api_key = await running.account("pro")
        response = await running.client.post(
            "/v1/remove-background/url", headers={"X-API-Key": api_key},
            json={"url": f"http://127.0.0.1:{sample_images}/coffee.jpg"},
        )
        assert response.status == HTTPStatus.BAD_REQUEST
        body = await response.json()
        assert body["success"] is False and body["error"]["code"] == "invalid_request"
        assert "is not allowed" in body["error"]["message"]
    assert fetches(tmp_path) == []


def test_the_flag_adds_to_the_networks_the_environment_already_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch allowance the operator already set is kept; loopback is added once."""
    monkeypatch.setenv(FETCH_ALLOW_NETWORKS_VARIABLE, "10.1.0.0/16, ::1/128")
    env = gateway_environment(parse_settings([f"--data-dir={tmp_path}", "--allow-local-fetch"]))
    assert env[FETCH_ALLOW_NETWORKS_VARIABLE] == "10.1.0.0/16,::1/128,127.0.0.0/8"
    untouched = gateway_environment(parse_settings([f"--data-dir={tmp_path}"]))
    assert untouched[FETCH_ALLOW_NETWORKS_VARIABLE] == "10.1.0.0/16, ::1/128"
