"""A Python SDK generated from the served document by openapi-python-client (as API users would make one)
drives a real gateway: upload, URL, both batch forms, get, list, account, the image answer, delete, download and
a wrong key, all typed. The answers do not depend on ISNet: the gateway runs on the `held` test model."""

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

from tests.gateway.client_generators import ClientGenerators
from tests.gateway.harness import Gateway, ImageHost
from tests.reference import DATA
from tests.waiting import eventually

PACKAGE = "removai_generated_client"
# openapi-python-client reads binary answers only as application/octet-stream: its documented setting maps the
# image types onto it, so the `/image` operations' answer is a File (docs/clients.md).
CONFIG = """content_type_overrides:
  image/png: application/octet-stream
  image/jpeg: application/octet-stream
  image/webp: application/octet-stream
"""


@pytest.fixture
def sdk_factory(tmp_path: Path, client_generators: ClientGenerators) -> Iterator[Any]:
    """Generates the client package from a document into tmp_path and imports it; unloads it afterwards.
    (client_generators: the generated-client tier; this generator itself comes from the venv.)"""

    def generate(document: bytes) -> ModuleType:
        source = tmp_path / "openapi.json"
        source.write_bytes(document)
        (tmp_path / "config.yml").write_text(CONFIG)
        bin_dir = str(Path(sys.executable).parent)  # the generator formats its output with this venv's ruff
        generated = subprocess.run(
            [os.path.join(bin_dir, "openapi-python-client"), "generate", "--path", str(source), "--meta", "none",
             "--config", str(tmp_path / "config.yml"), "--output-path", str(tmp_path / PACKAGE)],
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


async def test_generated_client_drives_every_operation(
    held_gw: Gateway, image_host: ImageHost, sdk_factory: Any
) -> None:
    """Upload (multipart, bytes), URL, a batch of URLs and one of files and their polling, get, list, account, the
    image answer (bytes), delete, download (bytes) and a wrong key (typed 401 error envelope) through the generated
    client, each answer parsed into its own model."""
    gw = held_gw
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

        photo_file = types.File(payload=photo, file_name="chelsea.jpg", mime_type="image/jpeg")
        files_batch = await _api(f"{removal}.remove_background_batch_from_files").asyncio_detailed(
            client=client, body=models.BatchFileUpload(files=[photo_file, photo_file],
                                                       output_format=models.OutputFormat.JPG),
        )
        assert files_batch.status_code == HTTPStatus.ACCEPTED, files_batch.content
        assert isinstance(files_batch.parsed, models.BatchAcceptedEnvelope)
        assert files_batch.parsed.data.total_images == 2
        batch_id = files_batch.parsed.data.batch_id
        files_done = await eventually(finished, 120, message="batch of files completed", interval_s=0.5)
        assert [i.output_format.value for i in files_done.data.images] == ["jpg", "jpg"]

        as_image = await _api(f"{removal}.remove_background_from_file_as_image").asyncio_detailed(
            client=client, body=models.FileUpload(file=photo_file), accept="image/png",
        )
        assert as_image.status_code == HTTPStatus.OK and as_image.headers["Content-Type"] == "image/png"
        assert isinstance(as_image.parsed, types.File)
        assert as_image.parsed.payload.read()[:8] == b"\x89PNG\r\n\x1a\n"
        assert as_image.headers["X-Width"] == "451" and as_image.headers["X-Image-Id"].startswith("img_")

        got = await _api("library.get_image").asyncio_detailed(client=client, image_id=image.id)
        assert got.status_code == HTTPStatus.OK and got.parsed.data.id == image.id

        listed = await _api("library.list_images").asyncio_detailed(client=client, page=1, per_page=10)
        assert listed.status_code == HTTPStatus.OK and isinstance(listed.parsed, models.ImageListEnvelope)
        # The upload, the URL image, the batch of URLs' completed image, the two files and the image answer.
        assert listed.parsed.meta.total == 7 and len(listed.parsed.data) == 7

        account = await _api("account.get_account").asyncio_detailed(client=client)
        assert isinstance(account.parsed, models.AccountEnvelope)
        assert account.parsed.data.plan.value == "enterprise" and account.parsed.data.images_used_this_month == 6

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
