"""An image is billed once its output is stored: every failure before that gives the reservation
back and removes what was stored for it. The store fails for real: a local folder that cannot be created (a file
stands where it should be: root ignores permission bits) and a stopped S3 server; the usage is read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from gateway.domain import quota
from gateway.http.appkeys import PROCESSOR, SESSIONS
from gateway.store.storage import OutputStorage, StoredEntry, StoredObject
from tests.gateway.harness import Gateway, gateway
from tests.gateway.s3server import S3Server
from tests.reference import DATA


def _form(field: str, *names: str, bg_image: bool = False) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name in names:
        form.add_field(field, (DATA / name).read_bytes(), filename=name, content_type="image/jpeg")
    if bg_image:
        form.add_field("bg_image", (DATA / "coffee.jpg").read_bytes(), filename="bg.jpg", content_type="image/jpeg")
    return form


def _block(files: Path, prefix: str) -> None:
    """The store's folder for `prefix` cannot be made: a file stands in its place."""
    files.mkdir(parents=True, exist_ok=True)
    (files / prefix).write_bytes(b"not a folder")


async def _error(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await response.json()
    assert response.status == 500, body
    assert body["success"] is False and body["error"]["code"] == "server_error", body
    return dict(body["error"])


async def _usage(replica: Gateway, account_id: str) -> int:
    return await quota.usage(replica.app[SESSIONS], account_id)


async def test_an_image_whose_output_cannot_be_stored_is_not_billed(inference_url: str, tmp_path: Path) -> None:
    """Inference succeeds, the output's write fails: 500, and the usage is where it was (the old rule billed
    every image whose inference had completed)."""
    async with gateway(inference_url=inference_url, data_dir=tmp_path / "data") as replica:
        account_id, key = await replica.account("basic")
        _block(tmp_path / "data" / "files", "outputs")
        response = await replica.client.post("/v1/remove-background/file", data=_form("file", "chelsea.jpg"),
                                              headers={"X-API-Key": key})
        await _error(response)
        assert await _usage(replica, account_id) == 0
        listed = await replica.client.get("/v1/images", headers={"X-API-Key": key})
        assert (await listed.json())["data"] == []


async def test_a_batch_whose_originals_cannot_be_stored_keeps_no_reservation(
    inference_url: str, tmp_path: Path
) -> None:
    """A 3-file batch refused because its originals cannot be stored: 500, no batch, usage unchanged, twice
    in a row (the old code kept each refused batch's whole reservation: 0 -> 3 -> 6)."""
    async with gateway(inference_url=inference_url, data_dir=tmp_path / "data") as replica:
        account_id, key = await replica.account("pro")
        _block(tmp_path / "data" / "files", "sources")
        for _ in range(2):
            response = await replica.client.post(
                "/v1/remove-background/batch", data=_form("files", "chelsea.jpg", "coffee.jpg", "rocket.jpg"),
                headers={"X-API-Key": key},
            )
            await _error(response)
            assert await _usage(replica, account_id) == 0


class _BackgroundsFail:
    """The gateway's own store, except that writing a background image fails as a full disk would."""

    def __init__(self, inner: OutputStorage) -> None:
        self._inner = inner

    async def put(self, key: str, content: bytes, content_type: str) -> None:
        await self._inner.put(key, content, content_type)

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        if key.startswith("sources/bg_"):
            raise OSError(28, "No space left on device")
        await self._inner.put_file(key, path, content_type)

    async def get(self, key: str) -> bytes:
        return await self._inner.get(key)

    async def open(self, key: str) -> StoredObject:
        return await self._inner.open(key)

    async def delete(self, key: str) -> bool:
        return await self._inner.delete(key)

    async def exists(self, key: str) -> bool:
        return await self._inner.exists(key)

    def scan(self, prefix: str) -> Any:
        return self._inner.scan(prefix)


async def test_a_batch_whose_background_cannot_be_stored_removes_its_originals(
    inference_url: str, tmp_path: Path
) -> None:
    """The first original is stored, its background's write fails: 500, usage unchanged, and the original
    stored for it is removed (the old code lost track of it: it was stored but not yet listed)."""
    async with gateway(inference_url=inference_url, data_dir=tmp_path / "data") as replica:
        account_id, key = await replica.account("pro")
        processor = replica.app[PROCESSOR]
        processor.storage = _BackgroundsFail(processor.storage)
        response = await replica.client.post(
            "/v1/remove-background/batch", data=_form("files", "chelsea.jpg", "coffee.jpg", bg_image=True),
            headers={"X-API-Key": key},
        )
        await _error(response)
        assert await _usage(replica, account_id) == 0
        left: list[StoredEntry] = [entry async for entry in processor.storage.scan("sources")]
        assert left == []


async def test_an_image_is_not_billed_when_the_s3_store_is_down(inference_url: str, tmp_path: Path) -> None:
    """The S3 server is stopped after the gateway started: the output cannot be stored, 500, usage 0."""
    server = S3Server.start()
    try:
        async with gateway(inference_url=inference_url, data_dir=tmp_path / "data",
                           storage_url=server.storage_url(server.create_bucket())) as replica:
            account_id, key = await replica.account("basic")
            server.stop()
            response = await replica.client.post("/v1/remove-background/file", data=_form("file", "coffee.jpg"),
                                                  headers={"X-API-Key": key})
            await _error(response)
            assert await _usage(replica, account_id) == 0
    finally:
        server.stop()
