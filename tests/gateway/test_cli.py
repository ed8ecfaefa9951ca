"""The `removai` CLI: folders through the real gateway (in-process and as the real process: resume, JSON, Ctrl-C,
wrong key, gateway down), retry policy and rate-limit display against a scripted server, --grpc."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import pytest
import pytest_asyncio
from aiohttp import web
from PIL import Image

from removai_cli.__main__ import run
from removai_cli.inputs import OutputFolder, Source
from tests.gateway.harness import Gateway, serve
from tests.reference import DATA
from tools.triton_launcher import free_port

PHOTO = (DATA / "chelsea.jpg").read_bytes()


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
    """Two photos (one in a subfolder) and a corrupt JPEG: two RGBA cut-outs, the subfolder kept under --out,
    exit 1, the failure named with its code."""
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
    assert sorted(str(path.relative_to(out)) for path in out.rglob("*")) == [
        "chelsea.png", "nested", "nested/coffee.png"
    ]
    assert_cutout(out / "chelsea.png", DATA / "chelsea.jpg")
    assert_cutout(out / "nested" / "coffee.png", DATA / "coffee.jpg")
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
    output_base: str | None = None  # where output_url points (default: this server)

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
                    "id": "img_scripted", "output_url": f"{self.output_base or self.url}/v1/files/img_scripted.png",
                    "status": "completed",
                }, "meta": {}})
            return web.json_response(
                {"success": False, "error": {"code": code, "message": f"scripted {code}", "status": status}},
                status=status, headers=headers,
            )

        async def account(request: web.Request) -> web.Response:
            if request.headers.get("X-API-Key") != "rmv_test":
                return web.json_response({"success": False, "error": {
                    "code": "invalid_api_key", "message": "scripted: unknown key", "status": 401}}, status=401)
            return web.json_response({"success": True, "data": {"id": "acct_scripted", "plan": "pro"}, "meta": {}})

        async def output(request: web.Request) -> web.Response:
            assert "X-API-Key" not in request.headers
            return web.Response(body=tiny_png(), content_type="image/png")

        app = web.Application()
        app.router.add_post("/v1/remove-background/file", remove)
        app.router.add_post("/v1/remove-background/url", remove)
        app.router.add_get("/v1/files/img_scripted.png", output)
        app.router.add_get("/v1/account", account)
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
    """No API key, a URL with --grpc, bad values, --overwrite with --skip-existing, an empty folder: exit 2 with a
    message."""
    monkeypatch.delenv("REMOVAI_API_KEY", raising=False)
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(PHOTO)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases: list[tuple[list[str], str]] = [
        (["remove", str(photo)], "an API key is needed"),
        (["remove", str(photo), "--api-key", "k", "--overwrite", "--skip-existing"], "choose one"),
        (["remove", "https://photos.example/a.jpg", "--grpc", "127.0.0.1:1"], "--grpc takes local files only"),
        (["remove", str(photo), "--api-key", "k", "--bg-color", "bluish"], "'bluish': must be a hex colour like #FF0000"),
        (["remove"], "the following arguments are required: PATH"),
        (["remove", str(photo), "--api-key", "k", "--concurrency", "four"], "'four' is not a whole number"),
        (["remove", str(photo), "--api-key", "k", "--timeout", "0"], "must be more than 0"),
        (["remove", str(empty), "--api-key", "k"], "no images to process: name a file, a folder with"),
    ]
    for argv, message in cases:
        assert await run(argv) == 2, argv
        assert message in capsys.readouterr().err


async def test_lost_gateway_mid_run_is_a_plain_failure_line(
    scripted: ScriptedApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """output_url on a port where nothing listens: the file fails with "cannot reach the gateway at ...:
    connection refused" (no aiohttp text), exit 1."""
    down = f"http://127.0.0.1:{free_port()}"
    scripted.output_base = down
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(PHOTO)

    status = await _remove_via(scripted, str(photo), tmp_path / "out", "--max-attempts", "1")

    out = capsys.readouterr().out
    assert status == 1
    assert out.splitlines() == [
        (f"failed  {photo}: connection_error: cannot reach the gateway at {down}: connection refused, nothing "
        "listens there (is it running?)"),
        "0 succeeded, 1 failed",
    ]


async def test_grpc_service_down_is_one_plain_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--grpc at a port where nothing listens: "cannot reach the inference service at ... (is it running?)", exit 2."""
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(PHOTO)
    target = f"127.0.0.1:{free_port()}"

    status = await run(["remove", str(photo), "--grpc", target, "--timeout", "1", "--out", str(tmp_path / "out")])

    captured = capsys.readouterr()
    assert (status, captured.out) == (2, "")
    assert captured.err == f"removai: error: cannot reach the inference service at {target} (is it running?)\n"


def test_output_folder_overwrite_replaces_but_one_run_never_collides(tmp_path: Path) -> None:
    """--overwrite replaces an existing file; two inputs with one stem in a run still get distinct names."""
    (tmp_path / "cat.png").write_bytes(b"old")
    output = OutputFolder(tmp_path, overwrite=True)
    cat = Source(label="cat.jpg", path=Path("cat.jpg"))

    assert output.write(cat, "png", b"first") == tmp_path / "cat.png"
    assert output.write(cat, "png", b"second") == tmp_path / "cat-1.png"
    assert (tmp_path / "cat.png").read_bytes() == b"first"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cat-1.png", "cat.png"]


def test_output_folder_never_replaces_and_leaves_no_partial_files(tmp_path: Path) -> None:
    """Without --overwrite an existing cut-out is kept (the new one is x-1.png); no `.partial` file remains."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"old")
    output = OutputFolder(tmp_path, overwrite=False)
    source = Source(label="photos/a/x.jpg", path=Path("photos/a/x.jpg"), folder=PurePath("a"))

    assert output.target(source, "png") == tmp_path / "a" / "x.png"
    assert output.write(source, "png", b"new") == tmp_path / "a" / "x-1.png"
    assert (tmp_path / "a" / "x.png").read_bytes() == b"old"
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == ["x-1.png", "x.png"]


# --- straight to the inference service ---------------------------------------------------------------------


async def test_grpc_mode_writes_a_cutout(inference_url: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """--grpc HOST:PORT needs no API key and writes the service's cut-out for a file."""
    status = await run(["remove", str(DATA / "astronaut.jpg"), "--grpc", inference_url,
                        "--out", str(tmp_path), "--no-progress"])

    assert status == 0, capsys.readouterr()
    assert_cutout(tmp_path / "astronaut.png", DATA / "astronaut.jpg")
    assert capsys.readouterr().out.rstrip().endswith("1 succeeded, 0 failed")


# --- the real `removai` process against the real stack --------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class CliProcess:
    """`python -m removai_cli ...` as a child process; stdout is read line by line as the CLI prints it."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *arguments: str, env: dict[str, str] | None = None) -> CliProcess:
        environment = {key: value for key, value in os.environ.items() if not key.startswith("REMOVAI_")}
        environment |= {"COLUMNS": "200", **(env or {})}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "removai_cli", *arguments, env=environment,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.lines.append(_ANSI.sub("", line.decode()).rstrip("\r\n"))
            self._changed.set()
        self._changed.set()

    async def wait_for_line(self, wanted: Callable[[str], bool], timeout_s: float = 120.0) -> str:
        async def found() -> str:
            while True:
                self._changed.clear()
                for line in self.lines:
                    if wanted(line):
                        return line
                if self._reader.done():
                    raise AssertionError(f"the CLI ended without that line; stdout: {self.lines}")
                await self._changed.wait()

        return await asyncio.wait_for(found(), timeout_s)

    async def finish(self, timeout_s: float = 180.0) -> tuple[int, list[str], str]:
        """Exit status, stdout lines, stderr text."""
        assert self.process.stderr is not None
        stderr = await asyncio.wait_for(self.process.stderr.read(), timeout_s)
        await asyncio.wait_for(self._reader, timeout_s)
        status = await asyncio.wait_for(self.process.wait(), timeout_s)
        return status, self.lines, stderr.decode()


async def _cli(*arguments: str, env: dict[str, str] | None = None) -> tuple[int, list[str], str]:
    return await (await CliProcess.start(*arguments, env=env)).finish()


async def test_process_mirrors_subfolders_resumes_with_skip_existing_and_prints_json(
    gw: Gateway, tmp_path: Path
) -> None:
    """a/x.jpg and b/x.jpg -> out/a/x.png and out/b/x.png (URL given with /v1/, -v after the subcommand), a missing
    path fails alone (exit 1); a --skip-existing --json rerun skips both and does only the new file."""
    _, key = await gw.account("pro")
    photos = tmp_path / "photos"
    for folder, name in (("a", "chelsea.jpg"), ("b", "coffee.jpg")):
        (photos / folder).mkdir(parents=True)
        shutil.copy(DATA / name, photos / folder / "x.jpg")
    out = tmp_path / "out"
    missing = tmp_path / "missing.jpg"
    base = f"http://127.0.0.1:{gw.settings.port}"

    status, lines, stderr = await _cli(
        "remove", str(photos), str(missing), "--out", str(out), "--url", f"{base}/v1/", "-v", "--no-progress",
        env={"REMOVAI_API_KEY": key},
    )

    assert status == 1, (lines, stderr)
    assert sorted(lines[:-1]) == sorted([
        f"failed  {missing}: not_found: no such file or folder (URLs must start with http:// or https://)",
        f"ok      {photos / 'a' / 'x.jpg'} -> {out / 'a' / 'x.png'}",
        f"ok      {photos / 'b' / 'x.jpg'} -> {out / 'b' / 'x.png'}",
    ])
    assert lines[-1] == "2 succeeded, 1 failed"
    assert_cutout(out / "a" / "x.png", DATA / "chelsea.jpg")
    assert_cutout(out / "b" / "x.png", DATA / "coffee.jpg")
    assert "Traceback" not in stderr and "rate" not in stderr
    first_cutout = (out / "a" / "x.png").read_bytes()

    (photos / "b" / "c").mkdir()
    shutil.copy(DATA / "astronaut.jpg", photos / "b" / "c" / "y.jpg")
    status, lines, stderr = await _cli(
        "-v", "remove", str(photos), "--out", str(out), "--url", base, "--api-key", key, "--skip-existing", "--json",
        "--no-progress",
    )

    assert status == 0, (lines, stderr)
    records = sorted((json.loads(line) for line in lines), key=lambda record: record["source"])
    assert records == [
        {"source": str(photos / "a" / "x.jpg"), "status": "skipped", "output": str(out / "a" / "x.png")},
        {"source": str(photos / "b" / "c" / "y.jpg"), "status": "ok", "output": str(out / "b" / "c" / "y.png")},
        {"source": str(photos / "b" / "x.jpg"), "status": "skipped", "output": str(out / "b" / "x.png")},
    ]
    assert stderr.rstrip().endswith("1 succeeded, 0 failed, 2 skipped (already done)")
    assert_cutout(out / "b" / "c" / "y.png", DATA / "astronaut.jpg")
    assert (out / "a" / "x.png").read_bytes() == first_cutout
    assert sorted(str(path.relative_to(out)) for path in out.rglob("*.png")) == ["a/x.png", "b/c/y.png", "b/x.png"]


async def test_process_wrong_key_stops_before_any_upload(gw: Gateway, tmp_path: Path) -> None:
    """A key the gateway does not know: one line on stderr, exit 2, nothing on stdout, nothing written."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for number in range(3):
        shutil.copy(DATA / "chelsea.jpg", photos / f"cat{number}.jpg")
    base = f"http://127.0.0.1:{gw.settings.port}"

    status, lines, stderr = await _cli(
        "remove", str(photos), "--out", str(tmp_path / "out"), "--url", base, "--api-key", "rmv_not_a_key",
    )

    assert status == 2
    assert lines == []
    assert len(stderr.splitlines()) == 1, stderr
    assert re.fullmatch(
        rf"removai: error: the gateway at {re.escape(base)} refused the API key \(401 invalid_api_key: [^\n]+\); "
        r"check --api-key or \$REMOVAI_API_KEY\n", stderr
    ), stderr
    assert not (tmp_path / "out").exists()


async def test_process_gateway_down_is_one_plain_line(tmp_path: Path) -> None:
    """Nothing listening at --url: exactly "cannot reach the gateway at URL: connection refused, nothing listens
    there (is it running?)", exit 2."""
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(PHOTO)
    base = f"http://127.0.0.1:{free_port()}"

    status, lines, stderr = await _cli("remove", str(photo), "--url", f"{base}/v1", "--api-key", "rmv_x",
                                       "--out", str(tmp_path / "out"))

    assert (status, lines) == (2, [])
    assert stderr == (f"removai: error: cannot reach the gateway at {base}: connection refused, nothing listens "
                      "there (is it running?)\n")


@dataclass
class HeldPhoto:
    """An image host whose one photo is held back until the test releases it: a request surely in flight."""

    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        async def photo(request: web.Request) -> web.Response:
            self.arrived.set()
            await self.release.wait()
            return web.Response(body=PHOTO, content_type="image/jpeg")

        app = web.Application()
        app.router.add_get("/held.jpg", photo)
        return app


async def test_process_ctrl_c_mid_run_ends_cleanly_with_the_summary_so_far(gw: Gateway, tmp_path: Path) -> None:
    """SIGINT while a URL is in flight (its host holds it) after a file's result was printed: no traceback, the
    finished result stays listed, the summary counts the rest as not done, exit 130."""
    _, key = await gw.account("pro")
    held = HeldPhoto()
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(PHOTO)
    out = tmp_path / "out"
    async with serve(held.app()) as port:
        try:
            cli = await CliProcess.start(
                "remove", str(photo), f"http://127.0.0.1:{port}/held.jpg", "--out", str(out),
                "--url", f"http://127.0.0.1:{gw.settings.port}", "--api-key", key, "--concurrency", "2",
            )
            done = await cli.wait_for_line(lambda line: line.startswith("ok"))
            await asyncio.wait_for(held.arrived.wait(), 120)
            cli.process.send_signal(signal.SIGINT)
            status, lines, stderr = await cli.finish()
        finally:
            held.release.set()

    assert status == 130, (lines, stderr)
    assert done == f"ok      {photo} -> {out / 'cat.png'}"
    assert lines == [done, "interrupted: 1 succeeded, 0 failed, 1 not done"]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert_cutout(out / "cat.png", photo)
    assert sorted(path.name for path in out.iterdir()) == ["cat.png"]


async def test_process_shows_rate_limit_waits_in_the_bar(scripted: ScriptedApi, tmp_path: Path) -> None:
    """A 429 with Retry-After: 2 on a terminal: the bar reads "waiting N s for the rate limit", -v (after the
    subcommand) logs the wait above it, then the cut-out is written and reported."""
    scripted.script = [(429, {"Retry-After": "2"}, "rate_limit_exceeded")]
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(PHOTO)
    out = tmp_path / "out"

    status, lines, stderr = await _cli(
        "remove", str(photo), "--out", str(out), "--api-key", "rmv_test", "--url", scripted.url, "-v",
        env={"TTY_COMPATIBLE": "1"},  # rich draws the bar as on a terminal, on stdout
    )

    screen = "\n".join(lines)
    assert status == 0, (screen, stderr)
    assert re.search(r"waiting [12] s for the rate limit", screen), screen
    assert re.search(r"rate limited; waiting 2 s for the window to reset", screen), screen
    assert f"ok      {photo} -> {out / 'chelsea.png'}" in screen
    assert screen.rstrip().endswith("1 succeeded, 0 failed")
    assert (out / "chelsea.png").read_bytes() == tiny_png()
    assert len(scripted.calls) == 2
