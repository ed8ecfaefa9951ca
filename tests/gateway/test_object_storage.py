"""Originals and outputs in an S3-compatible object store (a real moto server on 127.0.0.1): the storage_url
setting, streamed downloads, and replicas on different disks serving each other's output_url."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pydantic
import pytest
import pytest_asyncio
from multidict import CIMultiDict

from gateway.domain import batches, images
from gateway.domain.images import ImageSource
from gateway.http.appkeys import PROCESSOR, SESSIONS
from gateway.settings import GatewaySettings
from gateway.store.database import open_database
from gateway.store.storage import (
    InvalidStorageUrl,
    LocalDiskStorage,
    ObjectStoreStorage,
    open_storage,
    parse_storage_url,
)
from tests.gateway.harness import Gateway, gateway
from tests.gateway.s3server import S3Server
from tests.reference import DATA

# Nothing listens here: the tests that need no inference never call it.
NO_INFERENCE = "127.0.0.1:9"


async def _download(url: str) -> tuple[int, CIMultiDict[str], bytes]:
    """Fetches a link as any client would: no API key."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


# --- the storage_url setting ---------------------------------------------------------------------------------


def test_storage_url_names_bucket_prefix_endpoint_region_and_credentials() -> None:
    """An s3:// URL gives the bucket, an optional key prefix and obstore's S3 options; http endpoints only
    are allowed plain HTTP."""
    location = parse_storage_url(
        "s3://removai-files/prod?endpoint=http://127.0.0.1:9000&region=eu-west-1"
        "&access_key_id=AK&secret_access_key=SK&virtual_hosted_style_request=false"
    )

    assert (location.bucket, location.prefix, location.allow_http) == ("removai-files", "prod", True)
    assert location.config == {
        "endpoint": "http://127.0.0.1:9000", "region": "eu-west-1", "access_key_id": "AK",
        "secret_access_key": "SK", "virtual_hosted_style_request": False,
    }
    on_aws = parse_storage_url("s3://removai-files")
    assert (on_aws.bucket, on_aws.prefix, on_aws.config, on_aws.allow_http) == ("removai-files", "", {}, False)
    assert not parse_storage_url("s3://b?endpoint=https://s3.example.com").allow_http


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("https://bucket.example.com", "must be empty or s3://bucket"),
        ("/var/files", "must be empty or s3://bucket"),
        ("s3://", "must name a bucket"),
        ("s3://bucket:9000", "must name a bucket"),
        ("s3://bucket?endpoint=http://h:1&colour=blue", "unknown parameter 'colour'"),
        ("s3://bucket?region=", "parameter 'region' is empty"),
        ("s3://bucket?endpoint=ftp://h", "endpoint must be an http(s)://host"),
        ("s3://bucket?virtual_hosted_style_request=yes", "must be true or false"),
        ("s3://bucket/../up", "invalid storage key"),
    ],
)
def test_bad_storage_urls_are_refused_with_the_reason(url: str, complaint: str) -> None:
    """A storage_url that names no usable store stops the settings from being built, saying why."""
    with pytest.raises(InvalidStorageUrl) as raised:
        parse_storage_url(url)
    assert complaint in str(raised.value)
    with pytest.raises(pydantic.ValidationError) as invalid:
        GatewaySettings(storage_url=url)
    assert invalid.value.errors()[0]["loc"] == ("storage_url",)
    assert complaint in invalid.value.errors()[0]["msg"]


def test_storage_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """REMOVAI_GATEWAY_STORAGE_URL sets it; the default is empty (local disk under data_dir/files)."""
    assert GatewaySettings().storage_url == ""
    monkeypatch.setenv("REMOVAI_GATEWAY_STORAGE_URL", "s3://removai-files?region=eu-west-1")
    assert GatewaySettings().storage_url == "s3://removai-files?region=eu-west-1"


async def test_open_storage_picks_the_store_and_checks_the_bucket(s3_server: S3Server, tmp_path: Path) -> None:
    """Empty storage_url is local disk under the given root; an s3 URL is the bucket, reached once at start;
    a bucket that does not exist is refused with a message naming it."""
    local = await open_storage("", tmp_path / "files")
    assert isinstance(local, LocalDiskStorage) and local.root == (tmp_path / "files").resolve()
    bucket = s3_server.create_bucket()
    remote = await open_storage(s3_server.storage_url(bucket), tmp_path / "files")
    assert isinstance(remote, ObjectStoreStorage) and remote.location.bucket == bucket

    with pytest.raises(InvalidStorageUrl, match="cannot reach bucket 'removai-missing'"):
        await open_storage(s3_server.storage_url("removai-missing"), tmp_path / "files")
    assert not (tmp_path / "files").exists()


async def test_credentials_come_from_the_standard_aws_variables(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A storage_url without credentials (here with a key prefix) uses AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION from the
    environment (read by the store client itself): the bucket is reached and objects round-trip."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    bucket = s3_server.create_bucket()
    url = f"s3://{bucket}/tenant-a?endpoint={s3_server.endpoint}"
    assert "access_key_id" not in parse_storage_url(url).config

    storage = await open_storage(url, tmp_path / "files")
    await storage.put("outputs/img_env.png", b"png bytes", "image/png")

    assert await storage.get("outputs/img_env.png") == b"png bytes"
    whole_bucket = ObjectStoreStorage(parse_storage_url(f"s3://{bucket}?endpoint={s3_server.endpoint}"))
    assert await whole_bucket.get("tenant-a/outputs/img_env.png") == b"png bytes"  # the prefix is a folder
    assert not (tmp_path / "files").exists()


# --- downloads stream from the store (no inference needed) ----------------------------------------------------


@pytest_asyncio.fixture(params=["local", "s3"])
async def storage_gateway(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway on local disk or on a fresh bucket of the session's S3 server."""
    storage_url = request.getfixturevalue("s3_storage_url") if request.param == "s3" else ""
    async with gateway(inference_url=NO_INFERENCE, data_dir=tmp_path / "data", storage_url=storage_url) as running:
        yield running


async def test_download_streams_a_big_output_from_the_store(storage_gateway: Gateway) -> None:
    """A completed image's signed link answers 200 with the stored bytes (9 MiB, many chunks), its length, type
    and request id (HEAD: the same headers, no body); once the stored object is gone the same link is a 404 in the error envelope."""
    app = storage_gateway.app
    processor = app[PROCESSOR]
    account_id, _ = await storage_gateway.account()
    image = await images.create_image(
        app[SESSIONS], account_id, ImageSource(original_filename="big.png"), output_format="png",
        output_size="original",
    )
    content = os.urandom(9 * 1024 * 1024)
    key = f"outputs/{image.id}.png"
    await processor.storage.put(key, content, "image/png")
    completed = await images.mark_image_completed(
        app[SESSIONS], image.id, storage_key=key, content_type="image/png", width=1, height=1,
        size_bytes=len(content),
    )
    assert completed is not None
    link = processor.output_url(completed)
    assert link is not None

    status, headers, body = await _download(link)

    assert status == 200
    assert headers["Content-Type"] == "image/png"
    assert headers["Content-Length"] == str(len(content))
    assert headers["Content-Disposition"] == f'inline; filename="{image.id}.png"'
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "private, max-age=3600"
    assert len(headers["X-Request-Id"]) == 32
    assert body == content
    async with aiohttp.ClientSession() as session, session.head(link) as head:
        assert head.status == 200 and head.headers["Content-Length"] == str(len(content))
        assert head.headers["Content-Type"] == "image/png" and await head.read() == b""

    assert await processor.storage.delete(key)
    status, headers, body = await _download(link)
    assert status == 404 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {
        "success": False, "error": {"code": "not_found", "message": "the file is gone", "status": 404}
    }


# --- replicas on different disks share one bucket (real inference) ------------------------------------------


def _replica(inference_url: str, data_dir: Path, shared: dict[str, Any]) -> Any:
    return gateway(inference_url=inference_url, data_dir=data_dir, **shared)


async def test_output_url_from_one_replica_downloads_from_another(
    inference_url: str, tmp_path: Path, postgres_url: str, s3_storage_url: str
) -> None:
    """Two gateways with their own data_dirs, one PostgreSQL database, one secret and one bucket: an upload
    processed by the first is downloaded through the second's output_url with the same bytes, and nothing
    is written to either gateway's local disk."""
    shared = {"database_url": postgres_url, "url_signing_secret": uuid.uuid4().hex, "storage_url": s3_storage_url}
    async with (
        _replica(inference_url, tmp_path / "first", shared) as first,
        _replica(inference_url, tmp_path / "second", shared) as second,
    ):
        _, key = await first.account("pro")
        form = aiohttp.FormData()
        form.add_field("file", (DATA / "chelsea.jpg").read_bytes(), filename="chelsea.jpg", content_type="image/jpeg")
        made = await first.client.post("/v1/remove-background/file", data=form, headers={"X-API-Key": key})
        made_body = await made.json()
        assert made.status == 200, made_body
        image_id = made_body["data"]["id"]
        status, headers, from_first = await _download(made_body["data"]["output_url"])
        assert status == 200 and from_first[:8] == b"\x89PNG\r\n\x1a\n"

        seen = await second.client.get(f"/v1/images/{image_id}", headers={"X-API-Key": key})
        seen_body = await seen.json()
        assert seen.status == 200 and seen_body["data"]["status"] == "completed"
        assert seen_body["data"]["output_url"].startswith(second.settings.base_url)
        status, headers, from_second = await _download(seen_body["data"]["output_url"])

        assert status == 200
        assert headers["Content-Type"] == "image/png" and headers["Content-Length"] == str(len(from_first))
        assert from_second == from_first
        bucket = ObjectStoreStorage(parse_storage_url(s3_storage_url))
        record = await images.get_image_by_id(second.app[SESSIONS], image_id)
        assert record is not None and record.storage_key is not None
        assert record.storage_key.startswith(f"outputs/{image_id}-")  # one key per processing attempt
        assert await bucket.get(record.storage_key) == from_first
    assert not (tmp_path / "first" / "files").exists() and not (tmp_path / "second" / "files").exists()


async def test_batch_upload_originals_wait_in_the_store_for_any_replica(
    inference_url: str, tmp_path: Path, postgres_url: str, s3_storage_url: str
) -> None:
    """A batch of uploaded files accepted by a gateway that stops at once leaves its originals in the bucket,
    not on that gateway's disk; another gateway with another data_dir finishes the batch from them, deletes
    them, and serves the outputs."""
    shared: dict[str, Any] = {
        "database_url": postgres_url, "url_signing_secret": uuid.uuid4().hex, "storage_url": s3_storage_url,
        "batch_concurrency": 1,
    }
    bucket = ObjectStoreStorage(parse_storage_url(s3_storage_url))
    names = ("chelsea.jpg", "coffee.jpg", "rocket.jpg")
    async with _replica(inference_url, tmp_path / "first", shared) as first:
        account_id, key = await first.account("pro")
        form = aiohttp.FormData()
        for name in names:
            form.add_field("files", (DATA / name).read_bytes(), filename=name, content_type="image/jpeg")
        accepted = await first.client.post("/v1/remove-background/batch", data=form, headers={"X-API-Key": key})
        accepted_body = await accepted.json()
        assert accepted.status == 202, accepted_body
        batch_id = accepted_body["data"]["batch_id"]
        batch = await batches.get_batch(first.app[SESSIONS], account_id, batch_id)
        assert batch is not None
        source_keys = [image.source_key for image in batch.images]
        assert all(source_key and source_key.startswith("sources/") for source_key in source_keys)
    # The first gateway stopped right after answering; with one image at a time, the later ones still wait.
    async with open_database(postgres_url) as sessions:
        left = await batches.get_batch(sessions, account_id, batch_id)
    assert left is not None
    waiting = [image for image in left.images if image.status == "processing"]
    assert waiting, "the stopped gateway finished the whole batch before stopping"
    for image in waiting:
        assert image.source_key is not None and await bucket.exists(image.source_key)
    assert not (tmp_path / "first" / "files").exists()
    async with _replica(inference_url, tmp_path / "second", shared) as second:
        await asyncio.wait_for(second.batches_done(), 240)
        done = await batches.get_batch(second.app[SESSIONS], account_id, batch_id)
        assert done is not None and done.status == "completed"
        assert [image.status for image in done.images] == ["completed"] * len(names)
        assert [image.original_filename for image in done.images] == list(names)
        for source_key in source_keys:
            assert source_key is not None and not await bucket.exists(source_key)
        for image in done.images:
            link = second.app[PROCESSOR].output_url(image)
            assert link is not None
            status, headers, body = await _download(link)
            assert status == 200 and headers["Content-Type"] == "image/png" and body[:4] == b"\x89PNG"
            assert image.storage_key is not None and image.storage_key.startswith(f"outputs/{image.id}-")
            assert body == await bucket.get(image.storage_key)
    assert not (tmp_path / "second" / "files").exists()
