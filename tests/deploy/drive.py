"""Real traffic through the compose stack, run by `make deploy-test` inside the test's network namespace (every
address is 127.0.0.1 there): a file upload, a URL job from an image host in the namespace, a batch with a signed
webhook to a receiver in the namespace, the library (list, get, delete), the output object read back from the S3
store, and the inference container killed while a call is in flight (seen in its own in-flight gauge, never
assumed after a sleep). Ends with the account's books: every image completed or failed with a reason, none lost,
usage equal to the completed images. Exits non-zero naming the first thing that was wrong."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from standardwebhooks import Webhook

from gateway.store.storage import ObjectStoreStorage, parse_storage_url
from tests.gateway.harness import ImageHost, WebhookReceiver, serve
from tests.reference import DATA

GATEWAY = "http://127.0.0.1:8080"
INFERENCE_METRICS = "http://127.0.0.1:9101/metrics"
S3_ENDPOINT = "http://127.0.0.1:9000"
BUCKET = "removai"
T = TypeVar("T")


class DriveError(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise DriveError(message)


def log(message: str) -> None:
    print(f"[deploy-test]   {message}", flush=True)


async def until(what: str, probe: Callable[[], Awaitable[T | None]], timeout_s: float, every_s: float = 0.5) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise DriveError(f"{what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(every_s)


class Api:
    def __init__(self, session: aiohttp.ClientSession, key: str) -> None:
        self._session = session
        self._headers = {"X-API-Key": key}

    async def call(self, method: str, path: str, expect: int, **kwargs: Any) -> dict[str, Any]:
        async with self._session.request(method, GATEWAY + path, headers=self._headers, **kwargs) as response:
            body = await response.json()
            check(response.status == expect, f"{method} {path}: {response.status} {body}")
            check(response.headers.get("X-RateLimit-Limit") is not None, f"{method} {path}: no rate-limit headers")
            return dict(body)

    async def download(self, url: str) -> bytes:
        async with self._session.get(url) as response:
            check(response.status == 200, f"GET {url}: {response.status}")
            check(response.headers["Content-Type"].startswith("image/"), f"GET {url}: {response.headers}")
            return await response.read()


async def upload_and_url(api: Api, host: ImageHost) -> list[str]:
    form = aiohttp.FormData()
    form.add_field("file", (DATA / "chelsea.jpg").read_bytes(), filename="chelsea.jpg", content_type="image/jpeg")
    uploaded = (await api.call("POST", "/v1/remove-background/file", 200, data=form))["data"]
    check(uploaded["status"] == "completed", f"upload: {uploaded}")
    check((await api.download(uploaded["output_url"])).startswith(b"\x89PNG"), "upload: the cut-out is no PNG")
    log(f"file upload: {uploaded['id']} completed")
    url = host.url("/photos/coffee.jpg")
    fetched = (await api.call("POST", "/v1/remove-background/url", 200, json={"url": url}))["data"]
    check(fetched["status"] == "completed" and fetched["original_url"] == url, f"URL job: {fetched}")
    log(f"URL job from the namespace's image host: {fetched['id']} completed")
    return [uploaded["id"], fetched["id"]]


async def batch_with_webhook(api: Api, host: ImageHost, receiver: WebhookReceiver) -> list[str]:
    secret = (await api.call("GET", "/v1/account/webhook-secret", 200))["data"]["secret"]
    urls = [host.url(f"/photos/{name}") for name in ("astronaut.jpg", "rocket.jpg")]
    accepted = (await api.call("POST", "/v1/remove-background/batch", 202,
                               json={"urls": urls, "webhook_url": receiver.url}))["data"]
    [delivery] = await receiver.wait_for(1, timeout_s=300)
    headers, body = receiver.deliveries[0]  # the raw body, as signed
    Webhook(secret).verify(body, headers, json_parse=False)
    check(delivery["meta"]["event"] == "batch.completed", f"webhook: {delivery}")
    check(delivery["data"]["batch_id"] == accepted["batch_id"], f"webhook names another batch: {delivery}")
    statuses = [image["status"] for image in delivery["data"]["images"]]
    check(statuses == ["completed", "completed"], f"batch: {statuses}")
    log(f"batch {accepted['batch_id']}: 2 images completed, signed webhook verified (standardwebhooks)")
    return [image["id"] for image in delivery["data"]["images"]]


async def library_and_storage(api: Api, ids: list[str], s3_password: str) -> list[str]:
    listed = await api.call("GET", "/v1/images?limit=100", 200)
    check({image["id"] for image in listed["data"]} >= set(ids), f"library list misses images: {listed}")
    image = (await api.call("GET", f"/v1/images/{ids[0]}", 200))["data"]
    served = await api.download(image["output_url"])
    # Through the gateway's own S3 client, as the compose file configures it (bucket, endpoint, region).
    store = ObjectStoreStorage(parse_storage_url(
        f"s3://{BUCKET}?endpoint={S3_ENDPOINT}&region=us-east-1&access_key_id=removai&secret_access_key={s3_password}"
    ))
    keys = [entry.key async for entry in store.scan("outputs")]
    [key] = [key for key in keys if re.fullmatch(rf"outputs/{ids[0]}(-\d+)?\.png", key)]
    stored = await store.get(key)
    check(stored == served, "the object in the S3 store differs from the downloaded cut-out")
    log(f"output of {ids[0]} read back from the S3 store ({len(stored)} bytes, same as the download)")
    deleted = (await api.call("DELETE", f"/v1/images/{ids[1]}", 200))["data"]
    check(deleted == {"id": ids[1], "deleted": True}, f"delete: {deleted}")
    await api.call("GET", f"/v1/images/{ids[1]}", 404)
    gone = [entry.key async for entry in store.scan("outputs") if entry.key.startswith(f"outputs/{ids[1]}")]
    check(gone == [], f"deleted image's objects are still stored: {gone}")
    log(f"library: list, get, delete ({ids[1]}: record and object gone)")
    return [i for i in ids if i != ids[1]]


async def in_flight(session: aiohttp.ClientSession) -> float:
    try:
        async with session.get(INFERENCE_METRICS) as response:
            text = await response.text()
    except aiohttp.ClientError:
        return 0.0
    match = re.search(r"^removai_inference_calls_in_flight (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


KILL_REQUEST = "@@kill-inference-now"


async def ask_for_the_kill() -> str:
    """The kill and the restart are the orchestrator's: podman cannot run inside this namespace (`ip netns exec`
    remounts /sys without the cgroup tree). Ask on stdout, read its answer on stdin."""
    print(KILL_REQUEST, flush=True)
    answer: str = (await asyncio.to_thread(sys.stdin.readline)).strip()
    check(answer.startswith("restarted "), f"the orchestrator answered {answer!r}")
    return answer.removeprefix("restarted ")


async def kill_inference_mid_call(api: Api, session: aiohttp.ClientSession, host: ImageHost) -> str:
    """A batch keeps the inference service busy; once its own gauge shows a call in flight, the orchestrator kills
    its main process (as the OOM killer would) and waits for the restart policy to bring it back healthy; the
    batch then ends with every image completed or failed with a reason."""
    urls = [host.url(f"/photos/{name}") for name in ("astronaut.jpg", "coffee.jpg", "chelsea.jpg", "rocket.jpg") * 2]
    batch_id = (await api.call("POST", "/v1/remove-background/batch", 202, json={"urls": urls}))["data"]["batch_id"]

    async def busy() -> bool | None:
        return True if await in_flight(session) >= 1 else None

    await until("an inference call in flight", busy, 300, every_s=0.02)
    log(f"inference container killed while a call was in flight, then healthy again: {await ask_for_the_kill()}")

    async def finished() -> dict[str, Any] | None:
        batch = await api.call("GET", f"/v1/batches/{batch_id}", 200)
        return batch if batch["data"]["status"] == "completed" else None

    batch = (await until("the batch finishing after the kill", finished, 600))["data"]
    outcomes: dict[str, int] = {}
    for image in batch["images"]:
        outcomes[image["status"]] = outcomes.get(image["status"], 0) + 1
        check(image["status"] in ("completed", "failed"), f"image left unfinished: {image}")
        if image["status"] == "failed":
            check(bool(image.get("error", {}).get("code")) and bool(image["error"].get("message")), f"no reason: {image}")
    check(len(batch["images"]) == len(urls), f"images lost: {len(batch['images'])} of {len(urls)}")
    log(f"batch {batch_id} after the kill: {outcomes}, none lost")
    return str(batch_id)


async def books(api: Api) -> None:
    images = (await api.call("GET", "/v1/images?limit=100", 200))["data"]
    completed = sum(image["status"] == "completed" for image in images)
    check(all(image["status"] in ("completed", "failed") for image in images), f"unfinished: {images}")
    used = (await api.call("GET", "/v1/account", 200))["data"]["images_used_this_month"]
    # The image deleted from the library was billed too (deleting gives no quota back).
    check(used == completed + 1, f"usage {used}, but {completed} completed images (+1 deleted)")
    log(f"books: {completed} completed images (+1 deleted), usage {used}")


async def main_async() -> None:
    key = os.environ["REMOVAI_DEPLOY_API_KEY"]
    s3_password = os.environ["REMOVAI_DEPLOY_S3_PASSWORD"]
    host, receiver = ImageHost(), WebhookReceiver()
    async with serve(host.app()) as host_port, serve(receiver.app()) as receiver_port:
        host.port, receiver.port = host_port, receiver_port
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            api = Api(session, key)
            ids = await upload_and_url(api, host)
            ids += await batch_with_webhook(api, host, receiver)
            await library_and_storage(api, ids, s3_password)
            await kill_inference_mid_call(api, session, host)
            await books(api)


async def one_cutout() -> None:
    """The manifests' pods: once the gateway pod answers (its model loaded behind it), one real cut-out."""
    key = os.environ["REMOVAI_DEPLOY_API_KEY"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        api = Api(session, key)

        async def ready() -> bool | None:
            try:
                async with session.get(f"{GATEWAY}/v1/models", headers={"X-API-Key": key}) as response:
                    return True if response.status == 200 and (await response.json())["data"] else None
            except aiohttp.ClientError:
                return None

        await until("the gateway pod serving with a model ready", ready, 600, every_s=1)
        form = aiohttp.FormData()
        form.add_field("file", (DATA / "astronaut.jpg").read_bytes(), filename="astronaut.jpg",
                       content_type="image/jpeg")
        image = (await api.call("POST", "/v1/remove-background/file", 200, data=form))["data"]
        check(image["status"] == "completed", f"kube play: {image}")
        check((await api.download(image["output_url"])).startswith(b"\x89PNG"), "kube play: the cut-out is no PNG")
        log(f"through the gateway pod: {image['id']} completed, {image['width']}x{image['height']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--one-cutout", action="store_true", help="only wait for the stack and make one cut-out")
    arguments = parser.parse_args()
    try:
        asyncio.run(one_cutout() if arguments.one_cutout else main_async())
    except DriveError as error:
        print(f"[deploy-test]   FAILED: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
