"""A Python SDK generated from the served document by openapi-python-client (as API users would make one)
drives the real stack: upload, URL, batch, get, list, account, delete, download and a wrong key, all typed."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.gateway.harness import Gateway, ImageHost
from tests.reference import DATA
from tests.waiting import eventually

PACKAGE = "removai_generated_client"


@pytest.fixture
def sdk_factory(tmp_path: Path) -> Iterator[Any]:
    """Generates the client package from a document into tmp_path and imports it; unloads it afterwards."""

    def generate(document: bytes) -> ModuleType:
        source = tmp_path / "openapi.json"
        source.write_bytes(document)
        bin_dir = str(Path(sys.executable).parent)  # the generator formats its output with this venv's ruff
        generated = subprocess.run(
            [os.path.join(bin_dir, "openapi-python-client"), "generate", "--path", str(source), "--meta", "none",
             "--output-path", str(tmp_path / PACKAGE)],
            capture_output=True, text=True, timeout=120, check=False, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        )
        assert generated.returncode == 0, generated.stdout + generated.stderr
        # Every operation and response came through: the generator warns about anything it had to leave out.
        assert "Warning" not in generated.stdout + generated.stderr, generated.stdout + generated.stderr
        sys.path.insert(0, str(tmp_path))
        importlib.invalidate_caches()
        return importlib.import_module(PACKAGE)

    # httpx logs every request's full URL at INFO, the signed download link's signature included.
    httpx_logger = logging.getLogger("httpx")
    level = httpx_logger.level
    httpx_logger.setLevel(logging.WARNING)
    yield generate
    httpx_logger.setLevel(level)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))
    for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def _api(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.api.{name}")


def _models() -> Any:
    return importlib.import_module(f"{PACKAGE}.models")


async def test_generated_client_drives_every_operation(gw: Gateway, image_host: ImageHost, sdk_factory: Any) -> None:
    """Upload (multipart, bytes), URL, batch and its polling, get, list, account, delete, download (bytes) and a
    wrong key (typed 401 error envelope) through the generated client, each answer parsed into its own model."""
    document = await (await gw.client.get("/v1/openapi.json")).read()
    sdk = await asyncio.to_thread(sdk_factory, document)  # the generator runs ~4 s: off the event loop
    types = importlib.import_module(f"{PACKAGE}.types")
    models = _models()
    _, key = await gw.account("enterprise")  # 300 requests a minute: room for polling the batch
    base_url = str(gw.client.make_url("")).rstrip("/")
    client = sdk.AuthenticatedClient(base_url=base_url, token=key, prefix="", auth_header_name="X-API-Key",
                                     timeout=None)
    removal = "remove_background"

    async with client:
        photo = (DATA / "chelsea.jpg").read_bytes()
        upload = models.FileUpload(
            file=types.File(payload=photo, file_name="chelsea.jpg", mime_type="image/jpeg"),
            output_format=models.OutputFormat.WEBP,
        )
        uploaded = await _api(f"{removal}.remove_background_from_file").asyncio_detailed(client=client, body=upload)
        assert uploaded.status_code == HTTPStatus.OK, uploaded.content
        assert isinstance(uploaded.parsed, models.ImageEnvelope)
        image = uploaded.parsed.data
        assert image.status.value == "completed" and image.output_format.value == "webp"
        assert (image.width, image.height) == (451, 300) and isinstance(image.original_url, types.Unset)

        url = image_host.url("/photos/astronaut.jpg")
        by_url = await _api(f"{removal}.remove_background_from_url").asyncio_detailed(
            client=client, body=models.UrlRequest(url=url, bg_color="#00ff00"),
        )
        assert by_url.status_code == HTTPStatus.OK, by_url.content
        assert by_url.parsed.data.original_url == url and by_url.parsed.data.bg_color == "#00FF00"

        batch = await _api(f"{removal}.remove_background_batch").asyncio_detailed(
            client=client, body=models.BatchUrlRequest(urls=[url, image_host.url("/text")]),
        )
        assert batch.status_code == HTTPStatus.ACCEPTED, batch.content
        assert isinstance(batch.parsed, models.BatchAcceptedEnvelope) and batch.parsed.data.total_images == 2
        batch_id = batch.parsed.data.batch_id

        async def finished() -> Any:
            answer = await _api("library.get_batch").asyncio_detailed(client=client, batch_id=batch_id)
            assert answer.status_code == HTTPStatus.OK, answer.content
            return answer.parsed if answer.parsed.data.status.value == "completed" else None

        done = await eventually(finished, 120, message="batch completed", interval_s=0.5)
        assert isinstance(done, models.BatchEnvelope)
        assert (done.meta.completed, done.meta.failed, done.meta.processing) == (1, 1, 0)
        assert [i.status.value for i in done.data.images] == ["completed", "failed"]
        assert done.data.images[1].error.code.value == "unsupported_media_type"

        got = await _api("library.get_image").asyncio_detailed(client=client, image_id=image.id)
        assert got.status_code == HTTPStatus.OK and got.parsed.data.id == image.id

        listed = await _api("library.list_images").asyncio_detailed(client=client, page=1, per_page=10)
        assert listed.status_code == HTTPStatus.OK and isinstance(listed.parsed, models.ImageListEnvelope)
        assert listed.parsed.meta.total == 4 and len(listed.parsed.data) == 4

        account = await _api("account.get_account").asyncio_detailed(client=client)
        assert isinstance(account.parsed, models.AccountEnvelope)
        assert account.parsed.data.plan.value == "enterprise" and account.parsed.data.images_used_this_month == 3

        name, _, query = image.output_url.rpartition("/")[2].partition("?")
        params = dict(part.split("=", 1) for part in query.split("&"))
        public = sdk.Client(base_url=base_url)
        async with public:
            downloaded = await _api("files.download_output").asyncio_detailed(
                client=public, name=name, expires=int(params["expires"]), signature=params["signature"],
            )
        assert downloaded.status_code == HTTPStatus.OK and downloaded.headers["Content-Type"] == "image/webp"
        assert downloaded.content[:4] == b"RIFF" and downloaded.content[8:12] == b"WEBP"
        assert downloaded.parsed is not None and downloaded.parsed.payload.read()[:4] == b"RIFF"

        deleted = await _api("library.delete_image").asyncio_detailed(client=client, image_id=image.id)
        assert isinstance(deleted.parsed, models.DeletedImageEnvelope) and deleted.parsed.data.deleted is True
        gone = await _api("library.get_image").asyncio_detailed(client=client, image_id=image.id)
        assert gone.status_code == HTTPStatus.NOT_FOUND and isinstance(gone.parsed, models.ErrorEnvelope)
        assert gone.parsed.error.code.value == "not_found"

    wrong = sdk.AuthenticatedClient(base_url=base_url, token="rmv_wrong", prefix="", auth_header_name="X-API-Key")
    async with wrong:
        refused = await _api("account.get_account").asyncio_detailed(client=wrong)
    assert refused.status_code == HTTPStatus.UNAUTHORIZED and isinstance(refused.parsed, models.ErrorEnvelope)
    assert refused.parsed.error.code.value == "invalid_api_key" and refused.parsed.error.status == 401
