"""Fault test of the whole shape: the stack with 2 of each part loses, repeats and misbills nothing under kills and a rolling restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select

from gateway.domain import accounts
from gateway.jobs.webhook_signing import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from gateway.store.database import open_database
from gateway.store.tables import Batch, Image, WebhookDelivery
from tests.gateway.harness import postgres_database, serve
from tests.gateway.s3server import S3Server
from tests.reference import DATA
from tools.triton_launcher import free_port

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/0"
PHOTOS = ("chelsea.jpg", "coffee.jpg", "astronaut.jpg")
START_TIMEOUT_S = 300.0  # two Tritons load ISNet at once on a loaded 2-core machine
RESTART_TIMEOUT_S = 240.0
SETTLE_TIMEOUT_S = 240.0
# Fetches the image host must serve after the previous fault before the next one: requests are in flight then.
FETCHES_BEFORE_FAULT = 4
PART_LINE = re.compile(r"^    ((?:triton|inference|gateway)-\d+)\s+pid (\d+)\s")
# The gateways' settings for the test: loopback fetches and webhooks allowed; short leases, polls, sweeps and
# Retry-After so that work a killed replica held is taken over within seconds, not the production minute.
GATEWAY_ENV = {
    "REMOVAI_GATEWAY_FETCH_ALLOW_NETWORKS": "127.0.0.0/8",
    "REMOVAI_GATEWAY_LEASE_S": "6",
    "REMOVAI_GATEWAY_HEARTBEAT_S": "2",
    "REMOVAI_GATEWAY_POLL_INTERVAL_S": "1",
    "REMOVAI_GATEWAY_SWEEP_INTERVAL_S": "2",
    "REMOVAI_GATEWAY_WEBHOOK_BASE_DELAY_S": "0.2",
    "REMOVAI_GATEWAY_RETRY_AFTER_S": "1",
}

# A hard cap: a typical run takes 3 to 4 minutes on a loaded 2-core machine (two Tritons loading ISNet ~1 min).
pytestmark = [pytest.mark.isnet, pytest.mark.stack, pytest.mark.timeout(480)]


class Stack:
    """`python -m tools.stack` as a subprocess; its output kept line by line and waited on without blocking."""

    def __init__(self, process: asyncio.subprocess.Process, ports: dict[str, int]) -> None:
        self.process = process
        self.ports = ports
        self.lines: list[str] = []
        self.changed = asyncio.Condition()
        self.pids: dict[str, int] = {}
        self.all_pids: set[int] = set()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, data_dir: Path, *flags: str, env: dict[str, str]) -> Stack:
        ports = {name: free_port() for name in ("port", "grpc-port", "inference-metrics-port", "gateway-metrics-port",
                                                  "triton-http-port", "triton-grpc-port", "triton-metrics-port")}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.stack", f"--data-dir={data_dir}",
            *(f"--{name}={port}" for name, port in ports.items()), *flags,
            cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(process, ports)

    def gateway_url(self, replica: int) -> str:
        return f"http://127.0.0.1:{self.ports['port'] + 10 * replica}"

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if match := re.search(r"((?:triton|inference|gateway)-\d+) pid (\d+) started", line):
                self.pids[match[1]] = int(match[2])
                self.all_pids.add(int(match[2]))
            async with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        async with self.changed:
            self.lines.append("<stack output ended>")
            self.changed.notify_all()

    async def wait_line(self, pattern: str, timeout_s: float, after: int = 0) -> re.Match[str]:
        """The first line from index `after` on that matches; fails the test with the output if none comes."""
        compiled = re.compile(pattern)

        async def find() -> re.Match[str]:
            index = after
            async with self.changed:
                while True:
                    for position in range(index, len(self.lines)):
                        if match := compiled.search(self.lines[position]):
                            return match
                        if self.lines[position] == "<stack output ended>":
                            raise AssertionError("the stack exited")
                    index = len(self.lines)
                    await self.changed.wait()

        try:
            return await asyncio.wait_for(find(), timeout_s)
        except (TimeoutError, AssertionError) as error:
            pytest.fail(f"no line matching {pattern!r} ({error!r}); the stack printed:\n" + self.output())

    def output(self) -> str:
        """The last 200 lines, the banner's demo API key redacted."""
        return re.sub(r"rmv_[A-Za-z0-9_-]+", "rmv_(redacted)", "\n".join(self.lines[-200:]))

    async def stop(self) -> None:
        """SIGTERM (the stack stops its parts in order); failing that, SIGKILL to it and every part's group."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 120)
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        for pid in self.all_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reader, 10)


@dataclass
class Host:
    """Serves the sample photos; every fetch is counted, so faults can wait for requests to be in flight."""

    fetches: int = 0
    fetched: asyncio.Condition = field(default_factory=asyncio.Condition)
    port: int = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/photos/{name}"

    def app(self) -> web.Application:
        async def photo(request: web.Request) -> web.Response:
            async with self.fetched:
                self.fetches += 1
                self.fetched.notify_all()
            return web.Response(body=(DATA / request.match_info["name"]).read_bytes(), content_type="image/jpeg")

        app = web.Application()
        app.router.add_get("/photos/{name}", photo)
        return app

    async def wait_fetches(self, count: int, timeout_s: float = 180.0) -> None:
        """Until `count` fetches in all have been served."""
        async def enough() -> None:
            async with self.fetched:
                await self.fetched.wait_for(lambda: self.fetches >= count)

        await asyncio.wait_for(enough(), timeout_s)


@dataclass
class Receiver:
    """A webhook receiver as a client would write one: verifies the signature, de-duplicates by delivery id."""

    secret: str = ""
    port: int = 0
    deliveries: Counter[str] = field(default_factory=Counter)  # delivery id -> attempts received
    batch_of: dict[str, str] = field(default_factory=dict)  # delivery id -> batch id
    bad_signatures: int = 0
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            body = await request.read()
            headers = request.headers
            if not verify(self.secret, headers.get(TIMESTAMP_HEADER, ""), body, headers.get(SIGNATURE_HEADER, "")):
                self.bad_signatures += 1
                return web.Response(status=HTTPStatus.UNAUTHORIZED)
            delivery = headers[DELIVERY_HEADER]
            self.deliveries[delivery] += 1
            self.batch_of[delivery] = json.loads(body)["data"]["batch_id"]
            async with self.arrived:
                self.arrived.notify_all()
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        return app

    async def wait_batch(self, batch_id: str, unless: asyncio.Event, timeout_s: float = 240.0) -> None:
        """Until the webhook of `batch_id` has arrived (or `unless` is set)."""
        async def arrived() -> None:
            async with self.arrived:
                await self.arrived.wait_for(lambda: batch_id in self.batch_of.values() or unless.is_set())

        await asyncio.wait_for(arrived(), timeout_s)

    async def wake(self) -> None:
        async with self.arrived:
            self.arrived.notify_all()


@dataclass
class Load:
    """Clients that send to both gateways, as a load balancer would: a connection error means the other one."""

    stack: Stack
    host: Host
    receiver: Receiver
    api_key: str
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    graceful: bool = False  # set during the rolling restart: an in-flight request lost then is a failure
    image_ids: list[str] = field(default_factory=list)
    batch_ids: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    connection_errors: Counter[str] = field(default_factory=Counter)
    lost_in_graceful: list[str] = field(default_factory=list)
    retries: int = 0
    unexpected: list[str] = field(default_factory=list)

    async def send(self, session: aiohttp.ClientSession, first: int, path: str, body: dict[str, Any]) -> Any:
        """POSTs until a gateway answers 200 (retrying on the other gateway after a connection error, and after
        a 503's Retry-After); the answer's data, or None if the load stopped first or the answer was an error."""
        replica = first
        while True:
            try:
                async with session.post(f"{self.stack.gateway_url(replica)}{path}", json=body,
                                        headers={"X-API-Key": self.api_key}) as response:
                    self.statuses[response.status] += 1
                    answer = await response.json()
                    if response.status in (HTTPStatus.OK, HTTPStatus.ACCEPTED):  # a single image; a batch
                        return answer["data"]
                    if response.status in (HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.TOO_MANY_REQUESTS):
                        self.retries += 1
                        await asyncio.sleep(int(response.headers["Retry-After"]))
                        continue
                    self.unexpected.append(f"{response.status} {answer}")
                    return None
            except aiohttp.ClientConnectorError:
                self.connection_errors["refused"] += 1
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as error:
                self.connection_errors["dropped"] += 1
                if self.graceful:
                    self.lost_in_graceful.append(f"{path} on gateway-{replica + 1}: {error!r}")
            self.retries += 1
            replica = 1 - replica
            if self.stopping.is_set():
                return None

    async def singles(self, number: int) -> None:
        # force_close: a fresh connection per request, so a gateway that stops gracefully never races a
        # request onto a keep-alive connection it is closing (a real drop stays a drop).
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                         timeout=aiohttp.ClientTimeout(total=300)) as session:
            count = 0
            while not self.stopping.is_set():
                photo = PHOTOS[(number + count) % len(PHOTOS)]
                data = await self.send(session, (number + count) % 2, "/v1/remove-background/url",
                                       {"url": self.host.url(photo)})
                if data is not None:
                    self.image_ids.append(data["id"])
                count += 1

    async def batches(self) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                         timeout=aiohttp.ClientTimeout(total=300)) as session:
            count = 0
            while not self.stopping.is_set():
                urls = [self.host.url(PHOTOS[(count + i) % len(PHOTOS)]) for i in range(2)]
                data = await self.send(session, count % 2, "/v1/remove-background/batch",
                                       {"urls": urls, "webhook_url": self.receiver.url})
                if data is not None:
                    self.batch_ids.append(data["batch_id"])
                    self.image_ids.extend(image["id"] for image in data["images"])
                    # One batch at a time: the next once this one's webhook has arrived, so no backlog builds up.
                    await self.receiver.wait_batch(data["batch_id"], unless=self.stopping)
                count += 1


def output_keys(s3: S3Server, bucket: str) -> list[str]:
    """Every key under outputs/ in the bucket (moto answers unsigned ListObjectsV2)."""
    url = f"{s3.endpoint}/{bucket}?list-type=2&prefix=outputs/&max-keys=1000"
    with urllib.request.urlopen(url, timeout=30) as response:
        tree = ElementTree.fromstring(response.read())
    return [element.text or "" for element in tree.iter() if element.tag.endswith("}Key") or element.tag == "Key"]


async def settle(condition: Any, timeout_s: float, what: str) -> Any:
    """Polls `condition()` (a coroutine returning a value or None) every 0.5 s until it gives a value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := await condition()) is not None:
            return value
        await asyncio.sleep(0.5)
    pytest.fail(f"{what} did not happen within {timeout_s:.0f} s")


@contextlib.asynccontextmanager
async def s3_bucket() -> AsyncIterator[tuple[S3Server, str]]:
    server = await asyncio.to_thread(S3Server.start)
    try:
        yield server, await asyncio.to_thread(server.create_bucket)
    finally:
        await asyncio.to_thread(server.stop)


async def test_whole_shape_survives_a_kill_in_every_tier_and_a_rolling_restart(tmp_path: Path) -> None:
    """Under load, kill -9 of a replica per tier then SIGTERM of each gateway: every accepted image completes once (downloadable from both gateways) or fails refunded; usage, webhooks and statuses add up."""
    started = time.monotonic()
    host, receiver = Host(), Receiver()
    async with (
        postgres_database() as database_url,
        s3_bucket() as (s3, bucket),
        serve(host.app()) as host.port,
        serve(receiver.app()) as receiver.port,
        contextlib.AsyncExitStack() as exits,
    ):
        env = {**os.environ, **GATEWAY_ENV}
        stack = await Stack.start(
            tmp_path / "stack", "--gateways=2", "--inference-services=2", "--tritons=2",
            f"--database-url={database_url}", f"--redis-url={REDIS_URL}", f"--storage-url={s3.storage_url(bucket)}",
            env=env,
        )
        progress: dict[str, Any] = {}
        passed = False
        try:
            await stack.wait_line(r"^  storage: ", START_TIMEOUT_S)
            banner = {m[1]: int(m[2]) for line in stack.lines if (m := PART_LINE.search(line))}
            assert sorted(banner) == ["gateway-1", "gateway-2", "inference-1", "inference-2", "triton-1", "triton-2"]
            assert banner == {name: stack.pids[name] for name in banner}
            ready_s = time.monotonic() - started
            progress["stack ready s"] = round(ready_s)
            # An enterprise account (300 requests a minute, no monthly cap) so the limits do not shape the load.
            sessions = await exits.enter_async_context(open_database(database_url))
            account, api_key = await accounts.create_account(sessions, name="faults", plan="enterprise")
            receiver.secret = account.webhook_secret

            load = Load(stack, host, receiver, api_key)
            clients = [asyncio.create_task(load.singles(i)) for i in range(2)] + [asyncio.create_task(load.batches())]
            kills: list[str] = []
            triton_mark = 0
            for part in ("triton-1", "inference-2", "gateway-1"):
                await host.wait_fetches(host.fetches + FETCHES_BEFORE_FAULT)
                pid = stack.pids[part]
                mark = len(stack.lines)
                triton_mark = triton_mark or mark
                os.kill(pid, signal.SIGKILL)
                kills.append(part)
                await stack.wait_line(rf"{part} \(pid {pid}\) was killed by SIGKILL; restarting", 60, mark)
                if not part.startswith("triton"):  # a Triton takes minutes to load; the load goes on meanwhile
                    await stack.wait_line(rf"{part} pid \d+ ready", RESTART_TIMEOUT_S, mark)
            # The rolling restart once both Tritons serve again: while one loads ISNet, CPU is short and a single
            # image can take over a minute here, longer than the gateway's drain (aiohttp's 60 s shutdown timeout).
            await stack.wait_line(r"triton-1 pid \d+ ready", RESTART_TIMEOUT_S, triton_mark)
            load.graceful = True
            for part in ("gateway-1", "gateway-2"):
                await host.wait_fetches(host.fetches + FETCHES_BEFORE_FAULT)
                pid = stack.pids[part]
                mark = len(stack.lines)
                os.kill(pid, signal.SIGTERM)
                await stack.wait_line(rf"{part} \(pid {pid}\) exited with status 0; restarting", 150, mark)
                await stack.wait_line(rf"{part} pid \d+ ready", RESTART_TIMEOUT_S, mark)
            await host.wait_fetches(host.fetches + FETCHES_BEFORE_FAULT)
            load.stopping.set()
            await receiver.wake()
            await asyncio.wait_for(asyncio.gather(*clients), 300)
            load.graceful = False
            load_s = time.monotonic() - started - ready_s
            progress["load s"] = round(load_s)
            progress["images accepted"] = len(load.image_ids)
            progress["batches"] = len(load.batch_ids)

            async def finished() -> list[Image] | None:
                async with sessions() as session:
                    rows = list((await session.scalars(select(Image).where(Image.account_id == account.id))).all())
                    batches = list((await session.scalars(select(Batch).where(Batch.account_id == account.id))).all())
                    pending = (await session.scalars(select(WebhookDelivery).where(
                        WebhookDelivery.account_id == account.id, WebhookDelivery.status == "pending"))).all()
                busy = any(r.status == "processing" for r in rows) or any(b.status != "completed" for b in batches)
                return None if busy or pending else rows

            rows = await settle(finished, SETTLE_TIMEOUT_S, "every image, batch and webhook finishing")
            by_id = {row.id: row for row in rows}
            completed = {row.id for row in rows if row.status == "completed"}
            failed = {row.id for row in rows if row.status == "failed"}
            assert completed | failed == set(by_id)

            async with aiohttp.ClientSession() as session:
                headers = {"X-API-Key": api_key}

                async def quota_settled() -> int | None:
                    async with session.get(f"{stack.gateway_url(0)}/v1/account", headers=headers) as response:
                        assert response.status == HTTPStatus.OK, await response.text()
                        used = int((await response.json())["data"]["images_used_this_month"])
                    return used if used == len(completed) else None

                # Failed images are refunded by whichever replica failed them; the abandoned-image sweep does
                # it for a single image whose gateway was killed, a lease (6 s) plus a sweep (2 s) later.
                await settle(quota_settled, 60, f"images_used reaching the {len(completed)} completed images")

                keys = output_keys(s3, bucket)
                for image_id in load.image_ids:
                    assert image_id in by_id, image_id
                    async with session.get(f"{stack.gateway_url(0)}/v1/images/{image_id}", headers=headers) as reply:
                        assert reply.status == HTTPStatus.OK, await reply.text()
                        data = (await reply.json())["data"]
                    assert data["status"] in ("completed", "failed"), data
                    if data["status"] == "failed":
                        assert data.get("output_url") is None, data
                        continue
                    objects = [key for key in keys if re.fullmatch(rf"outputs/{image_id}(-\d+)?\.\w+", key)]
                    assert len(objects) == 1, (image_id, objects)
                    path = "/" + data["output_url"].split("/", 3)[3]
                    for replica in (0, 1):
                        async with session.get(f"{stack.gateway_url(replica)}{path}") as download:
                            assert download.status == HTTPStatus.OK, (replica, data["output_url"])
                            assert download.headers["Content-Type"].startswith("image/")
                            await download.read()
                for image_id in completed:
                    objects = [key for key in keys if re.fullmatch(rf"outputs/{image_id}(-\d+)?\.\w+", key)]
                    assert len(objects) == 1, (image_id, objects)

            async with sessions() as db:
                hooked = set((await db.scalars(select(Batch.id).where(
                    Batch.account_id == account.id, Batch.status == "completed", Batch.webhook_url.is_not(None)
                ))).all())
            assert set(load.batch_ids) <= hooked
            assert receiver.bad_signatures == 0
            assert sorted(receiver.batch_of.values()) == sorted(hooked), (receiver.batch_of, hooked)
            assert len(receiver.deliveries) == len(hooked)
            assert not load.unexpected, load.unexpected
            assert load.statuses[HTTPStatus.INTERNAL_SERVER_ERROR] == 0, load.statuses
            assert not load.lost_in_graceful, load.lost_in_graceful
            assert load.image_ids and load.batch_ids
            restarts = len(re.findall(r"; restarting in", "\n".join(stack.lines)))
            figures = {
                "stack ready s": round(ready_s), "load s": round(load_s), "total s": round(time.monotonic() - started),
                "images accepted": len(load.image_ids), "images in db": len(by_id), "completed": len(completed),
                "failed": len(failed), "batches": len(load.batch_ids), "webhooks": len(receiver.deliveries),
                "webhook attempts": sum(receiver.deliveries.values()), "kills": len(kills), "restarts": restarts,
                "503s": load.statuses[HTTPStatus.SERVICE_UNAVAILABLE], "429s": load.statuses[HTTPStatus.TOO_MANY_REQUESTS],
                "retries": load.retries, "connection errors": dict(load.connection_errors),
            }
            print(f"\nwhole-shape fault test figures: {json.dumps(figures)}")
            passed = True
        finally:
            if not passed:
                print(f"\nprogress: {progress}\nthe stack's last lines:\n{stack.output()}")
            await stack.stop()

