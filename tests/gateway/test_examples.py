"""The client examples the README and docs/cli.md show run as written against the real servers."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from PIL import Image

from inference_service.server import InferenceServer
from tests.gateway.harness import Gateway
from tests.reference import DATA

ROOT = Path(__file__).resolve().parents[2]


async def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, output.decode()


async def test_grpc_example_streams_a_file(inference_server: InferenceServer, tmp_path: Path) -> None:
    """examples/grpc_client.py writes an RGBA PNG cut-out of the given size."""
    out = tmp_path / "cut.png"
    code, output = await _run("examples/grpc_client.py", str(DATA / "coffee.jpg"), str(out),
                              "--target", f"127.0.0.1:{inference_server.port}")
    assert code == 0, output
    assert "600x400 image/png by isnet v1" in output
    assert Image.open(out).mode == "RGBA"


async def test_http_example_uploads_and_downloads(gw: Gateway, tmp_path: Path) -> None:
    """examples/http_client.py uploads, reports the rate limit and downloads the signed output_url."""
    _, key = await gw.account("pro")
    out = tmp_path / "cut.png"
    code, output = await _run("examples/http_client.py", str(DATA / "chelsea.jpg"), str(out),
                              "--url", gw.settings.base_url, env={"REMOVAI_API_KEY": key})
    assert code == 0, output
    assert "200: 59 requests left this minute" in output and "completed" in output
    assert Image.open(out).size == (451, 300)
