"""Every operation's documented examples (x-codeSamples: curl and Python) run as written against the real
gateway, inference service and Triton, with only the example values swapped for real ones."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.http import routes
from gateway.http.samples import SAMPLE_FILE, SAMPLE_KEY_VARIABLE
from tests.gateway.harness import Gateway, ImageHost
from tests.reference import DATA

# Dependencies first (an image before its read, its delete last); every documented operation is listed.
ORDER = (
    "removeBackgroundFromFile", "removeBackgroundFromUrl", "removeBackground", "removeBackgroundFromFileAsImage",
    "removeBackgroundFromUrlAsImage", "removeBackgroundBatchFromUrls", "removeBackgroundBatchFromFiles",
    "removeBackgroundBatch", "getBatch",
    "listImages", "getImage", "downloadOutput", "getAccount", "listModels", "getWebhookSecret", "rotateWebhookSecret",
    "getOpenApiDocument", "getDocs", "removebgRemoveBackground", "removebgAccount", "deleteImage",
)


async def _run(program: list[str], cwd: Path, env: dict[str, str]) -> str:
    process = await asyncio.create_subprocess_exec(
        *program, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, (program, output.decode())
    return output.decode()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_every_code_sample_runs_against_the_real_stack(
    gw: Gateway, image_host: ImageHost, tmp_path: Path
) -> None:
    """Each operation has a curl and a Python sample; each runs and gets the documented success status (the
    JSON envelope printed, the download written as an image, the docs as HTML)."""
    document = await (await gw.client.get("/v1/openapi.json")).json()
    operations = {op["operationId"]: op for item in document["paths"].values() for op in item.values()}
    assert set(operations) == set(ORDER)
    _, key = await gw.account("enterprise")
    env = {**os.environ, SAMPLE_KEY_VARIABLE: key}
    shutil.copy(DATA / "chelsea.jpg", tmp_path / SAMPLE_FILE)
    swaps = {
        routes.SOURCE_URL: image_host.url("/photos/astronaut.jpg"),
        "https://example.com/image2.jpg": image_host.url("/photos/chelsea.jpg"),
    }
    real: dict[str, Any] = {}
    for operation_id in ORDER:
        operation = operations[operation_id]
        samples = {sample["label"]: sample["source"] for sample in operation["x-codeSamples"]}
        assert set(samples) == {"curl", "Python"}, operation_id
        for label, source in samples.items():
            for example, value in swaps.items():
                source = source.replace(example, value)
            assert gw.settings.base_url in source and "example.com" not in source, source
            if label == "curl":
                output = await _run(["bash", "-c", source + " -w '\\n%{http_code}'"], tmp_path, env)
                body, _, status = output.rpartition("\n")
            else:
                output = await _run([sys.executable, "-c", source], tmp_path, env)
                status, _, body = output.strip().partition(" ")
            expected = "202" if operation_id.startswith("removeBackgroundBatch") else "200"
            assert status == expected, (operation_id, label, output)
            if operation_id == "downloadOutput":
                assert (tmp_path / "output.bin").read_bytes()[:4] == b"RIFF", label
            elif operation_id == "removebgRemoveBackground":  # remove.bg's answer: the cut-out itself (auto: PNG)
                assert (tmp_path / "output.bin").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", label
            elif operation_id == "removebgAccount" and label == "curl":  # remove.bg's account object
                assert json.loads(body)["data"]["attributes"]["api"] == {"free_calls": 0, "sizes": "all"}
            elif operation_id.endswith("AsImage"):
                cutout = tmp_path / "cutout.png"
                assert cutout.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (operation_id, label)
                cutout.unlink()
            elif operation_id == "getDocs":
                assert "text/html" in body or body.startswith("<!doctype html>"), body[:200]
            elif operation_id != "getOpenApiDocument" and label == "curl":
                answer = json.loads(body)
                assert answer["success"] is True, answer
                real[operation_id] = answer["data"]
            if operation_id == "deleteImage":  # the curl sample deleted the upload: Python deletes another
                swaps[routes.IMAGE_ID] = real["removeBackgroundFromUrl"]["id"]
        # Later samples act on what the earlier ones made.
        if operation_id == "removeBackgroundFromFile":
            uploaded = real[operation_id]
            link = uploaded["output_url"].removeprefix(gw.settings.base_url)
            # Before the id: the example link contains the example id.
            swaps[f"/v1/files/{routes.IMAGE_ID}.png?expires={routes.EXPIRES}&signature={routes.SIGNATURE}"] = link
            swaps[routes.IMAGE_ID] = uploaded["id"]
        elif operation_id == "removeBackgroundBatch":
            swaps[routes.BATCH_ID] = real[operation_id]["batch_id"]
    assert real["getImage"]["id"] == real["removeBackgroundFromFile"]["id"]
    assert real["deleteImage"] == {"id": real["removeBackgroundFromFile"]["id"], "deleted": True}
