"""TypeScript clients generated from the served document, as API users make them, drive a real gateway: the SDK
of @hey-api/openapi-ts, and openapi-typescript's types with openapi-fetch. Each program (tests/clients/*.ts) is
compiled with `tsc --strict` and contains no cast; it uploads a file, sends a batch of files and a batch of URLs,
polls the batch, reads the image, downloads it by its signed link, asks for the image itself and meets a 401,
printing what it saw for the assertions here. The answers do not depend on ISNet: the `held` test model serves."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.client_generators import ClientGenerators
from tests.gateway.harness import Gateway, ImageHost
from tests.reference import DATA

PNG = b"\x89PNG\r\n\x1a\n".hex()
# What a cast looks like in TypeScript: `x as T`, `<T>x`, `any` or a non-null assertion `x!.` / `x!)` (and, in
# comments, a directive that silences the compiler).
_CAST = re.compile(r"\bas\s+[A-Za-z{(\[]|(?:[=(,:]|return)\s*<[A-Za-z]+>|\bany\b|!\.|!\)")


async def _run(program: list[str], cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 300) -> str:
    process = await asyncio.create_subprocess_exec(
        *program, cwd=cwd, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    text = output.decode()
    assert process.returncode == 0, f"{program}:\n{text}"
    return text


def _without_comments(source: str) -> str:
    return "\n".join(line.split("//", 1)[0] for line in source.splitlines())


@pytest.mark.parametrize("program", ["heyapi", "openapi_fetch"])
async def test_typescript_client_compiles_strict_and_drives_the_gateway(
    held_gw: Gateway, image_host: ImageHost, client_generators: ClientGenerators, tmp_path: Path, program: str
) -> None:
    """The generated client and the program compile under --strict with no cast; against the gateway the
    upload, both batch forms, get, download, the image answer (PNG bytes with X-Image-Id) and the 401 (typed
    error envelope) answer as documented."""
    sources = client_generators.sources
    for name in (f"{program}.ts", "shared.ts", "tsconfig.json", "generate_openapi_typescript.mjs"):
        shutil.copy(sources / name, tmp_path / name)
    for name in (f"{program}.ts", "shared.ts"):
        source = (tmp_path / name).read_text()
        assert _CAST.findall(_without_comments(source)) == [] and "@ts-" not in source, name
    (tmp_path / "node_modules").symlink_to(client_generators.node_modules)
    document = tmp_path / "openapi.json"
    document.write_bytes(await (await held_gw.client.get("/v1/openapi.json")).read())

    if program == "heyapi":
        await _run([client_generators.bin("openapi-ts"), "-i", str(document), "-o", "generated/heyapi",
                    "-c", "@hey-api/client-fetch", "-s"], tmp_path)
    else:
        await _run(["node", "generate_openapi_typescript.mjs", str(document),
                    "generated/openapi-typescript/schema.ts"], tmp_path)
    await _run([client_generators.bin("tsc"), "-p", "tsconfig.json", "--strict"], tmp_path)

    _, key = await held_gw.account("enterprise")  # 300 requests a minute: room for polling the batch
    output = await _run(["node", f"out/{program}.js"], tmp_path, {
        "REMOVAI_BASE_URL": str(held_gw.client.make_url("")).rstrip("/"),
        "REMOVAI_API_KEY": key,
        "REMOVAI_PHOTO": str(DATA / "chelsea.jpg"),
        "REMOVAI_IMAGE_URL": image_host.url("/photos/astronaut.jpg"),
    })
    seen: dict[str, Any] = json.loads(output.strip().splitlines()[-1])

    assert seen["upload"] == {"status": 200, "id": seen["upload"]["id"], "format": "webp", "width": 451}
    assert seen["upload"]["id"].startswith("img_")
    assert seen["files_batch"] == {"status": 202, "total": 2, "completed": 2, "formats": ["jpg", "jpg"]}
    assert seen["urls_batch"] == {"status": 202, "total": 1}
    assert seen["get"] == {"status": 200, "id": seen["upload"]["id"]}
    assert seen["download"]["status"] == 200 and seen["download"]["type"] == "image/webp"
    assert seen["download"]["magic"][:8] == b"RIFF".hex() and seen["download"]["magic"][16:] == b"WEBP".hex()
    image_answer = seen["image_answer"]
    assert image_answer["status"] == 200 and image_answer["type"] == "image/png"
    assert image_answer["magic"].startswith(PNG) and image_answer["width"] == "451"
    assert image_answer["image_id"].startswith("img_") and image_answer["image_id"] != seen["upload"]["id"]
    assert seen["unauthorized"] == {"status": 401, "code": "invalid_api_key", "data": None}
    # The image answer made a library record like the envelope's: the id in its header reads back.
    record = await held_gw.client.get(f"/v1/images/{image_answer['image_id']}", headers={"X-API-Key": key})
    body = await record.json()
    assert record.status == 200 and body["data"]["output_format"] == "png" and body["data"]["width"] == 451
