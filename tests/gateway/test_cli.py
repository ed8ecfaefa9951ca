"""The `removai` CLI: folders through the real gateway, retry policy against a scripted server, --grpc, admin."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from PIL import Image

from gateway import accounts
from gateway.database import create_database_engine, create_sessions
from removai_cli.__main__ import run
from removai_cli.inputs import OutputFolder
from tests.gateway.harness import Gateway, serve
from tests.reference import DATA

PHOTO = (DATA / "chelsea.jpg").read_bytes()
CONSOLE_SCRIPT = Path(sys.executable).parent / "removai"


def assert_cutout(path: Path, original: Path) -> None:
    """A PNG with an alpha channel, of the original's size (output_size original never resizes)."""
    with Image.open(path) as cutout, Image.open(original) as source:
        assert cutout.format == "PNG" and cutout.mode == "RGBA"
        assert cutout.size == source.size


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 3), (255, 0, 0, 128)).save(buffer, "PNG")
    return buffer.getvalue()


# --- through the real gateway ------------------------------------------------------------------------------


async def test_remove_folder_writes_cutouts_and_reports_the_corrupt_file(
    gw: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two photos and a corrupt JPEG in a folder: two RGBA cut-outs, exit 1, the failure named with its code."""
    _, key = await gw.account("pro")
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    shutil.copy(DATA / "chelsea.jpg", photos / "chelsea.jpg")
    shutil.copy(DATA / "coffee.jpg", photos / "nested" / "coffee.jpg")
    (photos / "broken.jpg").write_bytes(PHOTO[:600] + bytes(2000))
    (photos / "notes.txt").write_text("not an image, and not picked up from a folder")
    out = tmp_path / "out"

    status = await run([
        "remove", str(photos), "--out", str(out), "--api-key", key, "--url", f"http://127.0.0.1:{gw.settings.port}",
        "--concurrency", "3", "--no-progress",
    ])

    summary = capsys.readouterr().out
    assert status == 1, summary
    assert sorted(path.name for path in out.iterdir()) == ["chelsea.png", "coffee.png"]
    assert_cutout(out / "chelsea.png", DATA / "chelsea.jpg")
    assert_cutout(out / "coffee.png", DATA / "coffee.jpg")
    failed = [line for line in summary.splitlines() if line.startswith("failed")]
    assert len(failed) == 1
    assert str(photos / "broken.jpg") in failed[0] and "unprocessable_entity (422)" in failed[0]
    assert f"-> {out / 'chelsea.png'}" in summary
    assert summary.rstrip().endswith("2 succeeded, 1 failed")


# --- the retry policy, against a scripted server -------------------------------------------------------------


@dataclass
class ScriptedApi:
    """Answers the removal endpoints from a script of (status, headers, error code) and records each call."""

    script: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    calls: list[tuple[str, float]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        async def remove(request: web.Request) -> web.Response:
            self.calls.append((request.path, time.monotonic()))
            assert request.headers["X-API-Key"] == "rmv_test"
            if request.path.endswith("/file"):
                form = await request.post()
                assert form["output_format"] == "png" and form["output_size"] == "original"
                assert isinstance(form["file"], web.FileField)
            else:
                assert (await request.json())["url"] == "https://photos.example/cats/tabby.jpg"
            status, headers, code = self.script.pop(0) if self.script else (200, {}, "")
            if status == 200:
                return web.json_response({"success": True, "data": {
                    "id": "img_scripted", "output_url": f"{self.url}/v1/files/img_scripted.png", "status": "completed",
                }, "meta": {}})
            return web.json_response(
                {"success": False, "error": {"code": code, "message": f"scripted {code}", "status": status}},
                status=status, headers=headers,
            )

        async def output(request: web.Request) -> web.Response:
            assert "X-API-Key" not in request.headers
            return web.Response(body=tiny_png(), content_type="image/png")

        app = web.Application()
        app.router.add_post("/v1/remove-background/file", remove)
        app.router.add_post("/v1/remove-background/url", remove)
        app.router.add_get("/v1/files/img_scripted.png", output)
        return app


@pytest_asyncio.fixture
async def scripted() -> AsyncIterator[ScriptedApi]:
    api = ScriptedApi()
    async with serve(api.app()) as port:
        api.port = port
        yield api


async def _remove_via(api: ScriptedApi, source: str, out: Path, *extra: str) -> int:
    return await run(["remove", source, "--out", str(out), "--api-key", "rmv_test", "--url", api.url,
                      "--no-progress", *extra])


async def test_429_waits_for_retry_after_then_succeeds(
    scripted: ScriptedApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 429 with Retry-After: 1 is retried once, no sooner than a second later; the cut-out is written."""
    scripted.script = [(429, {"Retry-After": "1", "X-RateLimit-Reset": "1"}, "rate_limit_exceeded")]
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(PHOTO)

    status = await _remove_via(scripted, str(photo), tmp_path / "out")

    assert status == 0, capsys.readouterr().out
    assert [path for path, _ in scripted.calls] == ["/v1/remove-background/file"] * 2
    assert scripted.calls[1][1] - scripted.calls[0][1] >= 0.95
    assert (tmp_path / "out" / "chelsea.png").read_bytes() == tiny_png()
    assert capsys.readouterr().out.rstrip().endswith("1 succeeded, 0 failed")


async def test_503_twice_backs_off_then_succeeds_and_never_overwrites(
    scripted: ScriptedApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two 503s then 200: three attempts for a URL; a second run writes tabby-1.png beside tabby.png."""
    scripted.script = [(503, {}, "server_error"), (503, {}, "server_error")]
    url = "https://photos.example/cats/tabby.jpg"
    out = tmp_path / "out"

    assert await _remove_via(scripted, url, out) == 0
    assert [path for path, _ in scripted.calls] == ["/v1/remove-background/url"] * 3
    assert await _remove_via(scripted, url, out) == 0

    assert sorted(path.name for path in out.iterdir()) == ["tabby-1.png", "tabby.png"]
    assert "-> " + str(out / "tabby-1.png") in capsys.readouterr().out


async def test_4xx_and_quota_exceeded_are_not_retried(
    scripted: ScriptedApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 415 and a 429 quota_exceeded (Retry-After: next month) fail at once with their codes; exit 1."""
    scripted.script = [
        (415, {}, "unsupported_media_type"),
        (429, {"Retry-After": "2000000"}, "quota_exceeded"),
    ]
    first, second = tmp_path / "a.jpg", tmp_path / "b.jpg"
    first.write_bytes(PHOTO)
    second.write_bytes(PHOTO)

    status = await run(["remove", str(first), str(second), "--out", str(tmp_path / "out"), "--api-key", "rmv_test",
                        "--url", scripted.url, "--concurrency", "1", "--no-progress"])

    summary = capsys.readouterr().out
    assert status == 1
    assert len(scripted.calls) == 2
    assert f"failed  {first}: unsupported_media_type (415): scripted unsupported_media_type" in summary
    assert f"failed  {second}: quota_exceeded (429): scripted quota_exceeded" in summary
    assert summary.rstrip().endswith("0 succeeded, 2 failed")
    assert not (tmp_path / "out").exists()


async def test_5xx_retries_are_bounded(
    scripted: ScriptedApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --max-attempts 2, a gateway that keeps answering 503 is tried twice, then reported."""
    scripted.script = [(503, {"Retry-After": "0"}, "server_error")] * 3
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(PHOTO)

    status = await _remove_via(scripted, str(photo), tmp_path / "out", "--max-attempts", "2")

    assert status == 1
    assert len(scripted.calls) == 2
    assert "server_error (503): scripted server_error" in capsys.readouterr().out


async def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No API key, a missing path, a URL with --grpc, a bad colour: exit 2 with a message, nothing sent."""
    monkeypatch.delenv("REMOVAI_API_KEY", raising=False)
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(PHOTO)
    cases: list[tuple[list[str], str]] = [
        (["remove", str(photo)], "an API key is needed"),
        (["remove", str(tmp_path / "missing.jpg"), "--api-key", "k"], "missing.jpg: no such file or folder"),
        (["remove", "https://photos.example/a.jpg", "--grpc", "127.0.0.1:1"], "--grpc takes local files only"),
        (["remove", str(photo), "--api-key", "k", "--bg-color", "red"], "is not a #RRGGBB colour"),
        (["remove"], "the following arguments are required: PATH"),
    ]
    for argv, message in cases:
        assert await run(argv) == 2, argv
        assert message in capsys.readouterr().err


def test_output_folder_overwrite_replaces_but_one_run_never_collides(tmp_path: Path) -> None:
    """--overwrite replaces an existing file; two inputs with one stem in a run still get distinct names."""
    (tmp_path / "cat.png").write_bytes(b"old")
    output = OutputFolder(tmp_path, overwrite=True)

    assert output.write("cat", "png", b"first") == tmp_path / "cat.png"
    assert output.write("cat", "png", b"second") == tmp_path / "cat-1.png"
    assert (tmp_path / "cat.png").read_bytes() == b"first"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cat-1.png", "cat.png"]


# --- straight to the inference service ---------------------------------------------------------------------


async def test_grpc_mode_writes_a_cutout(inference_url: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """--grpc HOST:PORT needs no API key and writes the service's cut-out for a file."""
    status = await run(["remove", str(DATA / "astronaut.jpg"), "--grpc", inference_url,
                        "--out", str(tmp_path), "--no-progress"])

    assert status == 0, capsys.readouterr()
    assert_cutout(tmp_path / "astronaut.png", DATA / "astronaut.jpg")
    assert capsys.readouterr().out.rstrip().endswith("1 succeeded, 0 failed")


# --- admin ---------------------------------------------------------------------------------------------------


async def _console_script(*arguments: str) -> tuple[int, str, str]:
    if not CONSOLE_SCRIPT.exists():
        pytest.fail(f"{CONSOLE_SCRIPT} is missing: run `pip install -e .` (make setup does)")
    process = await asyncio.create_subprocess_exec(
        str(CONSOLE_SCRIPT), *arguments, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_admin_creates_an_account_and_rotates_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`removai admin` (the installed script) creates an account; keys rotate revokes the old key."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'removai.db'}"

    status, created, _ = await _console_script(
        "admin", "--database-url", database_url, "accounts", "create", "--name", "Acme", "--plan", "pro"
    )
    assert status == 0, created
    account_id = re.search(r"^account_id: (acct_[a-z0-9]+)$", created, re.MULTILINE)
    first_key = re.search(r"^api_key: (rmv_\S+)$", created, re.MULTILINE)
    assert account_id is not None and first_key is not None

    assert await run(["admin", "--database-url", database_url, "keys", "rotate", account_id[1]]) == 0
    second_key = re.search(r"^api_key: (rmv_\S+)$", capsys.readouterr().out, re.MULTILINE)
    assert second_key is not None and second_key[1] != first_key[1]
    assert await run(["admin", "--database-url", database_url, "accounts", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"{account_id[1]}\tpro\tAcme" in listing and "rmv_" not in listing

    engine = create_database_engine(database_url)
    try:
        sessions = create_sessions(engine)
        assert await accounts.authenticate(sessions, first_key[1]) is None
        authenticated: Any = await accounts.authenticate(sessions, second_key[1])
        assert authenticated is not None and authenticated.id == account_id[1]
    finally:
        await engine.dispose()
