"""A caller in another language: tests/grpc_node/remove_background.mjs (Node.js, @grpc/grpc-js and
@grpc/proto-loader from npm, pinned in its package-lock.json, loading protos/ as they are) streams an image
through the real inference service on a real Triton (the `held` test model) and reads the cut-out, and reads a
failure's code, message and google.rpc.ErrorInfo from the status details trailer."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from contract.errors import DOMAIN, Reason
from inference_service.server import InferenceServer, create_server
from inference_service.settings import InferenceSettings
from tests.held_model import NAME as HELD
from tests.node_packages import PACKAGES, install_node_packages
from tests.reference import DATA
from tools.triton_launcher import TritonServer

CLIENT = PACKAGES / "remove_background.mjs"
RUN_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def node_grpc_client() -> Path:
    """The Node.js client, its npm packages installed."""
    install_node_packages()
    return CLIENT


@dataclass(frozen=True)
class NodeRun:
    status: int
    result: dict[str, Any]
    stderr: str


async def run_node(client: Path, *arguments: str) -> NodeRun:
    process = await asyncio.create_subprocess_exec(
        "node", str(client), *arguments, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=RUN_TIMEOUT_S)
    assert process.returncode is not None
    assert stdout, stderr.decode()
    return NodeRun(process.returncode, json.loads(stdout), stderr.decode())


def noisy_png(path: Path, width: int, height: int) -> Path:
    """A PNG of random pixels (incompressible: several MiB, so it travels in several 1 MiB chunks)."""
    pixels = np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "PNG", compress_level=1)
    return path


async def test_a_node_client_streams_an_image_and_reads_the_cutout(
    node_grpc_client: Path, held_inference_server: InferenceServer, tmp_path: Path
) -> None:
    """An image of several MiB goes up in chunks; the metadata (size, type, model, foreground box) comes back
    first, then the cut-out in chunks: an RGBA PNG of the image's size, as long as the metadata says."""
    photo = noisy_png(tmp_path / "noise.png", 1600, 1200)
    assert photo.stat().st_size > 3 * 1024 * 1024
    output = tmp_path / "cutout.png"

    run = await run_node(node_grpc_client, "--target", f"127.0.0.1:{held_inference_server.port}",
                         "--input", str(photo), "--output", str(output))

    assert run.status == 0, run
    assert run.result["ok"] is True
    metadata = run.result["metadata"]
    assert (metadata["width"], metadata["height"]) == (1600, 1200)
    assert (metadata["original_width"], metadata["original_height"]) == (1600, 1200)
    assert metadata["content_type"] == "image/png" and metadata["output_format"] == "OUTPUT_FORMAT_PNG"
    assert metadata["output_type"] == "OUTPUT_TYPE_CUTOUT"
    assert metadata["model_name"] == HELD
    assert metadata["foreground"] == {"left": 0, "top": 0, "width": 1600, "height": 1200}  # held: all foreground
    assert metadata["size_bytes"] == run.result["received_bytes"] == output.stat().st_size
    with Image.open(io.BytesIO(output.read_bytes())) as cutout:
        assert cutout.format == "PNG" and cutout.mode == "RGBA" and cutout.size == (1600, 1200)


async def test_a_node_client_reads_a_jpg_with_a_background_colour(
    node_grpc_client: Path, held_inference_server: InferenceServer, tmp_path: Path
) -> None:
    """Options travel as the proto names them (enums by name): JPG at the small size with a background colour
    comes back as an opaque JPEG whose longer side is 1080 px at most (never upscaled)."""
    output = tmp_path / "cutout.jpg"
    run = await run_node(node_grpc_client, "--target", f"127.0.0.1:{held_inference_server.port}",
                         "--input", str(DATA / "coffee.jpg"), "--output", str(output), "--format", "jpg",
                         "--size", "small", "--bg-color", "#00FF00")
    assert run.status == 0, run
    assert run.result["metadata"]["content_type"] == "image/jpeg"
    with Image.open(output) as cutout, Image.open(DATA / "coffee.jpg") as photo:
        assert cutout.format == "JPEG" and cutout.mode == "RGB"
        assert max(cutout.size) == min(1080, max(photo.size))


@pytest_asyncio.fixture
async def small_upload_service(held_triton: TritonServer) -> AsyncIterator[InferenceServer]:
    """The real inference service on the held Triton, accepting uploads of at most 100 kB."""
    running = create_server(InferenceSettings(
        port=0, metrics_port=-1, triton_url=held_triton.grpc_url, health_interval_s=0.5, default_model=HELD,
        max_image_bytes=100_000,
    ))
    await running.start()
    yield running
    await running.stop()


async def test_a_node_client_reads_the_error_details(
    node_grpc_client: Path, small_upload_service: InferenceServer, tmp_path: Path
) -> None:
    """An upload over the service's limit: RESOURCE_EXHAUSTED with the google.rpc.ErrorInfo the contract
    promises (domain removai.v1, reason IMAGE_TOO_LARGE: final, unlike SERVICE_BUSY); no file is written."""
    photo = noisy_png(tmp_path / "noise.png", 400, 400)
    output = tmp_path / "cutout.png"

    run = await run_node(node_grpc_client, "--target", f"127.0.0.1:{small_upload_service.port}",
                         "--input", str(photo), "--output", str(output))

    assert run.status == 1, run
    assert run.result["ok"] is False
    assert (run.result["code"], run.result["code_name"]) == (8, "RESOURCE_EXHAUSTED")
    assert "100000" in run.result["details"].replace(",", "").replace("_", ""), run.result["details"]
    assert run.result["error_info"] is not None, run.stderr
    assert run.result["error_info"]["domain"] == DOMAIN == "removai.v1"
    assert run.result["error_info"]["reason"] == Reason.IMAGE_TOO_LARGE == "IMAGE_TOO_LARGE"
    assert not output.exists()


async def test_a_node_client_reads_an_unknown_model_as_not_found(
    node_grpc_client: Path, held_inference_server: InferenceServer, tmp_path: Path
) -> None:
    """A model the repository lacks: NOT_FOUND, its message naming the ready models; no ErrorInfo (the status
    alone says it)."""
    run = await run_node(node_grpc_client, "--target", f"127.0.0.1:{held_inference_server.port}",
                         "--input", str(DATA / "coffee.jpg"), "--output", str(tmp_path / "x.png"),
                         "--model", "no-such-model")
    assert run.status == 1, run
    assert (run.result["code"], run.result["code_name"]) == (5, "NOT_FOUND")
    assert "no-such-model" in run.result["details"] and HELD in run.result["details"]
    assert run.result["error_info"] is None
