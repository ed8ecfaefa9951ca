"""Hostile load against a gateway started as a subprocess; prints its peak RSS above idle.

The load: endless chunked multipart uploads (one endless field, or endless fields), gzip bodies that inflate far
past 25 MB (30 MB in one file; 20 x 25 MB of zeros sent as about 0.5 MB), a batch of 20 x 25 MB files from each of 3 Pro accounts at once, 1,000 requests with bad keys that
declare a 25 MB body and never send it, and meanwhile one normal upload that must succeed. The target: the
gateway's peak RSS stays under 300 MB above its idle RSS. tests/gateway/test_hostile.py runs the same load with
smaller counts and asserts only a gross bound.

Then the replay phase, on a gateway of its own: one ~40 MB PNG cut-out (a 3600 x 3600 noisy photo fetched by
URL, output_size=original, Accept: image/png, an Idempotency-Key), then 30 repeats of that request at once, each
client reading its answer at 2 MiB/s. The target: the gateway's peak RSS at most 100 MB above its RSS just before
the replays (a replay streams the stored object; it never holds it whole).

Then the slow-heads phase, on a gateway of its own: 1,000 connections that send a request line and then one
header byte every 5 s (slowloris). Printed: how many the gateway closed, when (its header_timeout_s, 30 s, is the
bound), its open file descriptors idle, at peak and after, and whether a normal request made while all are open
is answered (it needs no inference service: `--phase slow-heads` alone starts none).

    python -m bench.hostile                      # starts Triton and the inference service itself
    python -m bench.hostile --inference-url 127.0.0.1:50051
    python -m bench.hostile --phase replays      # the replay phase alone
    python -m bench.hostile --phase slow-heads   # the slow-heads phase alone
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import logging
import math
import os
import resource
import sys
import tempfile
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
from aiohttp import web
from PIL import Image

from gateway.domain import accounts
from gateway.store.database import default_database_url, open_database
from gateway.store.tables import PlanName
from tools.stack.parts import inference_service
from tools.triton_launcher import TritonServer, free_port

_LOGGER = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
NORMAL_IMAGE = ROOT / "tests" / "data" / "chelsea.jpg"
MB = 1_000_000
MIB = 1024 * 1024
TARGET_ABOVE_IDLE_BYTES = 300 * MIB
_BOUNDARY = "hostileboundary"
_BLOCK = bytes(MIB)
# An endless body stops by itself after this much, answer or not, so no client of the load is really endless.
_MAX_SENT_BYTES = 256 * MIB


@dataclass(frozen=True)
class LoadShape:
    """How much of each kind of hostile request to send; the defaults are the full counts the
    300 MB target is set for."""

    endless_uploads: int = 50
    # Half to /file (one file of batch_file_bytes + 5 MB), half to /batch (batch_files x batch_file_bytes).
    gzip_bodies: int = 4
    batch_accounts: int = 3
    batch_files: int = 20
    batch_file_bytes: int = 25 * MB
    bad_keys: int = 1000
    bad_key_concurrency: int = 50
    # The gateway's default max_concurrent_uploads_per_account: endless uploads are spread over enough accounts
    # that each is admitted and must be refused by the body limits, not by the per-account cap.
    uploads_per_account: int = 4
    timeout_s: float = 120.0


@dataclass
class Outcome:
    """One request's answer: its status (None when the connection closed without one), headers and body."""

    kind: str
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    timed_out: bool = False

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class LoadReport:
    outcomes: list[Outcome]
    normal: Outcome
    idle_rss_bytes: int
    peak_rss_bytes: int
    hwm_bytes: int

    @property
    def peak_above_idle_bytes(self) -> int:
        return max(self.peak_rss_bytes, self.hwm_bytes) - self.idle_rss_bytes

    def of(self, kind: str) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.kind == kind]


def rss_bytes(pid: int) -> int:
    """The process's resident set size now."""
    return int(psutil.Process(pid).memory_info().rss)


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size (VmHWM): read from /proc/<pid>/status, since psutil does not report
    another process's peak on Linux."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise LookupError("VmHWM")


@dataclass
class GatewayProcess:
    """A gateway run as `python -m gateway` on 127.0.0.1, with accounts made in its database beforehand."""

    process: asyncio.subprocess.Process
    port: int
    keys: dict[str, list[str]]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _make_accounts(data_dir: Path, plans: dict[str, tuple[PlanName, int]]) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    async with open_database(default_database_url(data_dir)) as sessions:
        for group, (plan, count) in plans.items():
            for index in range(count):
                _, key = await accounts.create_account(sessions, name=f"{group}-{index}", plan=plan)
                keys.setdefault(group, []).append(key)
    return keys


@asynccontextmanager
async def start_gateway(
    data_dir: Path, inference_url: str, plans: dict[str, tuple[PlanName, int]], *extra_flags: str,
    env: dict[str, str] | None = None, log_level: str = "WARNING",
) -> AsyncIterator[GatewayProcess]:
    """Starts the gateway subprocess once its accounts exist, waits for /healthz, and stops it (by its pid). Its
    log goes to data_dir/gateway.log; `env` replaces the environment it inherits."""
    data_dir.mkdir(parents=True, exist_ok=True)
    keys = await _make_accounts(data_dir, plans)
    port = free_port()
    log = (data_dir / "gateway.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
        "--data-dir", str(data_dir),
        "--inference-url", inference_url, "--log-level", log_level, *extra_flags,
        cwd=ROOT, stdout=log, stderr=asyncio.subprocess.STDOUT, env=env,
    )
    try:
        running = GatewayProcess(process, port, keys)
        await _wait_healthy(running, timeout_s=120.0)
        yield running
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def _wait_healthy(gateway: GatewayProcess, timeout_s: float) -> None:
    """Polls /healthz (the fallback the process offers: it has no readiness signal of its own)."""
    async with asyncio.timeout(timeout_s), aiohttp.ClientSession() as session:
        while True:
            if gateway.process.returncode is not None:
                raise RuntimeError(f"the gateway exited with {gateway.process.returncode}")
            try:
                async with session.get(f"{gateway.base_url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)


# --- Bodies ---


def _part_head(name: str, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    content_type = "Content-Type: application/octet-stream\r\n" if filename else ""
    return f"--{_BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{content_type}\r\n".encode()


_CLOSE = f"--{_BOUNDARY}--\r\n".encode()


def endless_field() -> Iterator[bytes]:
    """One text field that never ends (until _MAX_SENT_BYTES)."""
    yield _part_head("output_format")
    for _ in range(_MAX_SENT_BYTES // 65536):
        yield b"a" * 65536


def endless_fields() -> Iterator[bytes]:
    """8 KB text fields, one after another, without end (until _MAX_SENT_BYTES; 40,000 of them once
    cost a gateway that kept them +311 MB)."""
    value = b"p" * 8192
    for _ in range(_MAX_SENT_BYTES // len(value)):
        yield _part_head("output_format") + value + b"\r\n"


def files_body(count: int, size: int) -> tuple[int, Iterable[bytes]]:
    """A multipart body of `count` files of `size` zero bytes, made as it is sent: (its length, its pieces)."""
    heads = [_part_head("files", f"f{index}.jpg") for index in range(count)]

    def pieces() -> Iterator[bytes]:
        for head in heads:
            yield head
            left = size
            while left:
                block = _BLOCK[: min(left, len(_BLOCK))]
                left -= len(block)
                yield block
            yield b"\r\n"
        yield _CLOSE

    return sum(len(head) + size + 2 for head in heads) + len(_CLOSE), pieces()


def gzip_body(field_name: str, files: int, file_bytes: int) -> bytes:
    """A gzip-compressed multipart body of `files` files of `file_bytes` zeros each (20 x 25 MB: about 0.5 MB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    out: list[bytes] = []
    for index in range(files):
        out.append(compressor.compress(_part_head(field_name, f"bomb{index}.jpg")))
        left = file_bytes
        while left:
            block = _BLOCK[: min(left, len(_BLOCK))]
            left -= len(block)
            out.append(compressor.compress(block))
        out.append(compressor.compress(b"\r\n"))
    out.append(compressor.compress(_CLOSE))
    out.append(compressor.flush())
    return b"".join(out)


def _chunked(pieces: Iterable[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"


def request_head(path: str, port: int, key: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"X-API-Key: {key}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- One exchange on a raw socket ---


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """An answer's status and headers."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("closed without an answer")
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip()] = value.strip()
    return int(status_line.split()[1]), headers


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status, headers = await _read_head(reader)
    length = int(headers.get("Content-Length", "0"))
    return status, headers, await reader.readexactly(length)


async def exchange(
    kind: str, port: int, head: bytes, body: Iterable[bytes], *, timeout_s: float
) -> Outcome:
    """Sends the head, then the body piece by piece while reading the answer; stops sending once the answer
    has come, as a real client streaming an upload would."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return Outcome(kind, None)
    answer = asyncio.ensure_future(_read_answer(reader))

    async def send() -> None:
        writer.write(head)
        for piece in body:
            if answer.done():
                return
            writer.write(piece)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    try:
        async with asyncio.timeout(timeout_s):
            status, headers, content = await answer
        return Outcome(kind, status, headers, content)
    except TimeoutError:
        return Outcome(kind, None, timed_out=True)
    except (ConnectionError, asyncio.IncompleteReadError, OSError):
        return Outcome(kind, None)
    finally:
        answer.cancel()
        sender.cancel()
        await asyncio.gather(answer, sender, return_exceptions=True)
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


# --- The load ---


def account_plans(shape: LoadShape) -> dict[str, tuple[PlanName, int]]:
    """The accounts the load needs, by group."""
    return {
        "endless": ("enterprise", max(1, math.ceil(shape.endless_uploads / shape.uploads_per_account))),
        "gzip": ("enterprise", max(1, math.ceil(shape.gzip_bodies / shape.uploads_per_account))),
        "batch": ("pro", shape.batch_accounts),
        "normal": ("basic", 1),
    }


async def _normal_upload(gateway: GatewayProcess, started: asyncio.Event, timeout_s: float) -> Outcome:
    """A legitimate upload, sent once the attack is under way."""
    await started.wait()
    form = aiohttp.FormData()
    form.add_field("output_format", "png")
    form.add_field("file", NORMAL_IMAGE.read_bytes(), filename="chelsea.jpg", content_type="image/jpeg")
    client_timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=client_timeout) as session, session.post(
        f"{gateway.base_url}/v1/remove-background/file", data=form, headers={"X-API-Key": gateway.keys["normal"][0]}
    ) as response:
        return Outcome("normal", response.status, dict(response.headers), await response.read())


async def _sample_rss(pid: int, stop: asyncio.Event, peak: list[int]) -> None:
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], rss_bytes(pid))
        except (OSError, LookupError):
            return
        try:
            await asyncio.wait_for(stop.wait(), 0.02)
        except TimeoutError:
            pass


async def run_load(gateway: GatewayProcess, shape: LoadShape) -> LoadReport:
    """Sends the whole load at once and the normal upload during it; returns every outcome and the RSS figures."""
    port = gateway.port
    keys = gateway.keys
    idle = rss_bytes(gateway.pid)
    peak = [idle]
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(_sample_rss(gateway.pid, stop, peak))
    started = asyncio.Event()
    multipart = f"multipart/form-data; boundary={_BOUNDARY}"
    timeout_s = shape.timeout_s

    def endless(index: int) -> Any:
        key = keys["endless"][index // shape.uploads_per_account]
        batch = index % 2 == 1
        path = "/v1/remove-background/batch" if batch else "/v1/remove-background/file"
        body = endless_fields() if index % 4 >= 2 else endless_field()
        head = request_head(path, port, key, {"Content-Type": multipart, "Transfer-Encoding": "chunked"})
        return exchange("endless", port, head, _chunked(body), timeout_s=timeout_s)

    bomb_file = gzip_body("file", 1, shape.batch_file_bytes + 5 * MB)
    bomb_batch = gzip_body("files", shape.batch_files, shape.batch_file_bytes)

    def gzip_bomb(index: int) -> Any:
        key = keys["gzip"][index // shape.uploads_per_account]
        batch = index % 2 == 1
        body = bomb_batch if batch else bomb_file
        path = "/v1/remove-background/batch" if batch else "/v1/remove-background/file"
        headers = {"Content-Type": multipart, "Content-Encoding": "gzip", "Content-Length": str(len(body))}
        return exchange("gzip", port, request_head(path, port, key, headers), [body], timeout_s=timeout_s)

    def batch(index: int) -> Any:
        length, body = files_body(shape.batch_files, shape.batch_file_bytes)
        headers = {"Content-Type": multipart, "Content-Length": str(length)}
        head = request_head("/v1/remove-background/batch", port, keys["batch"][index], headers)
        return exchange("batch", port, head, body, timeout_s=timeout_s)

    bad_key_slots = asyncio.Semaphore(shape.bad_key_concurrency)

    async def bad_key(index: int) -> Outcome:
        # Declares a 25 MB body and sends none of it: only an answer given before reading the body can arrive.
        headers = {"Content-Type": multipart, "Content-Length": str(25 * MB)}
        async with bad_key_slots:
            head = request_head("/v1/remove-background/file", port, f"rmv_bad_{index}", headers)
            return await exchange("bad_key", port, head, [], timeout_s=timeout_s)

    async def attack() -> list[Outcome]:
        hostile = [
            *(endless(index) for index in range(shape.endless_uploads)),
            *(gzip_bomb(index) for index in range(shape.gzip_bodies)),
            *(batch(index) for index in range(shape.batch_accounts)),
        ]
        tasks = [asyncio.ensure_future(request) for request in hostile]
        started.set()
        tasks += [asyncio.ensure_future(bad_key(index)) for index in range(shape.bad_keys)]
        return list(await asyncio.gather(*tasks))

    try:
        outcomes, normal = await asyncio.gather(attack(), _normal_upload(gateway, started, timeout_s))
    finally:
        stop.set()
        await sampler
    hwm = peak_rss_bytes(gateway.pid)
    return LoadReport(outcomes, normal, idle, peak[0], hwm)


# --- Slow request heads (slowloris) ---


_CLOSE_SLACK_S = 5.0


@dataclass(frozen=True)
class SlowHeadShape:
    """Connections that send a request line, then one header byte at a time, never finishing the head."""

    connections: int = 1000
    # Slow enough to keep a connection for minutes where only a keep-alive timer bounds a head.
    byte_every_s: float = 5.0
    # The gateway's setting for this phase (its default is 30 s).
    header_timeout_s: float = 30.0
    connect_concurrency: int = 100

    @property
    def header_bytes(self) -> int:
        """Bytes each client trickles: enough to outlast the gateway's deadline by 30 s, then it only waits."""
        return math.ceil((self.header_timeout_s + 30.0) / self.byte_every_s)

    @property
    def wait_s(self) -> float:
        """How long a client waits for the gateway to close its connection before giving up on it."""
        return self.header_timeout_s + 60.0


@dataclass
class SlowHeadReport:
    endings: list[tuple[str, float]]  # per connection: closed / answered / open / refused, seconds after opening
    normal: Outcome
    normal_ms: float
    idle_fds: int
    peak_fds: int
    after_fds: int
    fd_limit: str

    def count(self, ending: str) -> int:
        return sum(1 for name, _ in self.endings if name == ending)


def open_fds(pid: int) -> int:
    """File descriptors the process holds."""
    return int(psutil.Process(pid).num_fds())


def fd_limit(pid: int) -> str:
    """The process's soft and hard RLIMIT_NOFILE."""
    soft, hard = psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)
    return "/".join("unlimited" if value == resource.RLIM_INFINITY else str(value) for value in (soft, hard))


def _allow_client_sockets(count: int) -> None:
    """Raises this process's own soft fd limit (not the gateway's, started before) to hold `count` sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard),
                                                    hard))


async def _slow_head(port: int, shape: SlowHeadShape, slots: asyncio.Semaphore, opened: list[int],
                     all_open: asyncio.Event) -> tuple[str, float]:
    """One slowloris connection: how it ended (closed by the gateway without an answer, answered, still open
    when the client gave up, or refused at connect) and when, in seconds after it opened."""
    loop = asyncio.get_running_loop()
    async with slots:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return "refused", 0.0
    started = loop.time()
    opened[0] += 1
    if opened[0] == shape.connections:
        all_open.set()

    async def trickle() -> None:
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            for _ in range(shape.header_bytes):
                await asyncio.sleep(shape.byte_every_s)
                writer.write(b"s")
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    sender = asyncio.ensure_future(trickle())
    try:
        try:
            received = await asyncio.wait_for(reader.read(), shape.wait_s)
        except TimeoutError:
            return "open", loop.time() - started
        except (ConnectionError, OSError):
            received = b""
        return ("answered" if received else "closed"), loop.time() - started
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()


async def _sample_fds(pid: int, stop: asyncio.Event, peak: list[int]) -> None:
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], open_fds(pid))
        except OSError:
            return
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except TimeoutError:
            pass


async def run_slow_heads(gateway: GatewayProcess, shape: SlowHeadShape, key: str) -> SlowHeadReport:
    """Opens shape.connections slow-head connections at once; once all are open, makes one normal request
    (GET /v1/account with `key`); waits until the gateway has ended every connection; samples its fds."""
    _allow_client_sockets(shape.connections)
    idle = open_fds(gateway.pid)
    peak = [idle]
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(_sample_fds(gateway.pid, stop, peak))
    slots = asyncio.Semaphore(shape.connect_concurrency)
    opened, all_open = [0], asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        held = [asyncio.ensure_future(_slow_head(gateway.port, shape, slots, opened, all_open))
                for _ in range(shape.connections)]
        try:
            await asyncio.wait_for(all_open.wait(), shape.header_timeout_s)
        except TimeoutError:
            _LOGGER.warning("only %d of %d connections opened; the normal request goes anyway", opened[0],
                            shape.connections)
        started = loop.time()
        timeout = aiohttp.ClientTimeout(total=shape.wait_s)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
            f"{gateway.base_url}/v1/account", headers={"X-API-Key": key}
        ) as response:
            normal = Outcome("normal", response.status, dict(response.headers), await response.read())
        normal_ms = (loop.time() - started) * 1000.0
        endings = list(await asyncio.gather(*held))
        await asyncio.sleep(1.0)  # the gateway's side of the last closes
        after = open_fds(gateway.pid)
    finally:
        stop.set()
        await sampler
    return SlowHeadReport(endings, normal, normal_ms, idle, peak[0], after, fd_limit(gateway.pid))


def slow_head_summary(report: SlowHeadReport, shape: SlowHeadShape) -> dict[str, Any]:
    """How the connections ended, when the gateway closed them, its fds and the normal request's answer."""
    closes = sorted(seconds for ending, seconds in report.endings if ending == "closed")
    return {
        "connections": shape.connections,
        "byte_every_s": shape.byte_every_s,
        "header_timeout_s": shape.header_timeout_s,
        "closed_by_gateway": report.count("closed"),
        "answered": report.count("answered"),
        "open_when_client_gave_up": report.count("open"),
        "refused_at_connect": report.count("refused"),
        "first_close_s": round(closes[0], 1) if closes else None,
        "last_close_s": round(closes[-1], 1) if closes else None,
        "gateway_fds_idle": report.idle_fds,
        "gateway_fds_peak": report.peak_fds,
        "gateway_fds_after": report.after_fds,
        "gateway_fd_limit_soft_hard": report.fd_limit,
        "normal_request": report.normal.status,
        "normal_request_ms": round(report.normal_ms, 1),
        # Bounded: every connection closed by the gateway at its deadline (a few seconds' slack for a loaded
        # machine), the fds they held given back, and the normal request answered meanwhile.
        "within_target": report.count("closed") == shape.connections
        and closes[-1] <= shape.header_timeout_s + _CLOSE_SLACK_S and report.normal.status == 200
        and report.after_fds <= report.idle_fds + 8,
    }


async def slow_head_phase(inference_url: str, workdir: Path, shape: SlowHeadShape) -> dict[str, Any]:
    """Its own gateway, its head deadline set to shape.header_timeout_s; prints and returns the figures."""
    async with start_gateway(
        workdir / "gateway-slow-heads", inference_url, {"normal": ("basic", 1)},
        "--header-timeout-s", str(shape.header_timeout_s),
    ) as gateway:
        figures = slow_head_summary(await run_slow_heads(gateway, shape, gateway.keys["normal"][0]), shape)
    print(json.dumps(figures, indent=2))
    print(
        f"{shape.connections} slow-head connections (a byte every {shape.byte_every_s:g} s): "
        f"{figures['closed_by_gateway']} closed by the gateway {figures['first_close_s']}-{figures['last_close_s']} s "
        f"after opening (deadline {shape.header_timeout_s:g} s), {figures['answered']} answered, "
        f"{figures['open_when_client_gave_up']} still open; gateway fds {figures['gateway_fds_idle']} idle, "
        f"{figures['gateway_fds_peak']} at peak, {figures['gateway_fds_after']} after "
        f"(limit {figures['gateway_fd_limit_soft_hard']}); normal request meanwhile: {figures['normal_request']} "
        f"in {figures['normal_request_ms']} ms ({'met' if figures['within_target'] else 'MISSED'})"
    )
    return figures

def summary(report: LoadReport) -> dict[str, Any]:
    """Counts of answers per kind, and the RSS figures in MiB."""
    kinds: dict[str, dict[str, int]] = {}
    for outcome in report.outcomes:
        label = "timeout" if outcome.timed_out else str(outcome.status or "closed")
        counts = kinds.setdefault(outcome.kind, {})
        counts[label] = counts.get(label, 0) + 1
    return {
        "answers": kinds,
        "normal_upload": report.normal.status,
        "idle_rss_mib": round(report.idle_rss_bytes / MIB, 1),
        "sampled_peak_rss_mib": round(report.peak_rss_bytes / MIB, 1),
        "vm_hwm_mib": round(report.hwm_bytes / MIB, 1),
        "peak_above_idle_mib": round(report.peak_above_idle_bytes / MIB, 1),
        "target_above_idle_mib": TARGET_ABOVE_IDLE_BYTES // MIB,
        "within_target": report.peak_above_idle_bytes < TARGET_ABOVE_IDLE_BYTES,
    }


# --- Replays of one big cut-out ---

REPLAY_TARGET_ABOVE_BEFORE_BYTES = 100 * MIB
_REPLAY_KEY = "hostile-replay"


@dataclass(frozen=True)
class ReplayShape:
    """Slow-reading Idempotency-Key replays of one big PNG cut-out, all streaming at once."""

    replays: int = 30
    # A noisy photo this many pixels a side: its RGBA PNG at output_size=original is about 40 MB (noise does not
    # compress), from a JPEG of about 7 MB.
    side_px: int = 3600
    # Each replay's client reads this fast (a phone on a slow link), so all of them are in flight together.
    read_bytes_per_s: int = 2 * MIB
    timeout_s: float = 600.0


@dataclass
class ReplayOutcome:
    status: int | None
    received: int = 0
    same_bytes: bool = False


@dataclass
class ReplayReport:
    outcomes: list[ReplayOutcome]
    cutout_bytes: int
    idle_rss_bytes: int
    before_rss_bytes: int
    peak_rss_bytes: int
    # Whether the peak includes VmHWM (reset just before the replays), or is the sampled VmRSS alone.
    hwm_reset: bool
    seconds: float

    @property
    def peak_above_before_bytes(self) -> int:
        return self.peak_rss_bytes - self.before_rss_bytes


def noisy_photo(side_px: int) -> bytes:
    """A JPEG of colour gradients under strong noise, side_px square."""
    rng = np.random.default_rng(20)
    y, x = np.mgrid[0:side_px, 0:side_px]
    gradient = np.stack([x * 255 // side_px, y * 255 // side_px, (x + y) * 255 // (2 * side_px)], axis=-1)
    pixels = np.clip(gradient + rng.normal(0, 40, gradient.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


@asynccontextmanager
async def serve_photo(photo: bytes) -> AsyncIterator[str]:
    """An image host on 127.0.0.1 serving `photo`; yields its URL."""

    async def serve(_request: web.Request) -> web.Response:
        return web.Response(body=photo, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/photo.jpg", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/photo.jpg"
    finally:
        await runner.cleanup()


def reset_peak_rss(pid: int) -> bool:
    """Resets the process's VmHWM to its current RSS (/proc/<pid>/clear_refs, Linux >= 4.0); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def _slow_replay(port: int, head: bytes, body: bytes, digest: str, shape: ReplayShape) -> ReplayOutcome:
    """One replay on a raw socket, its answer read at shape.read_bytes_per_s; the bytes are hashed, not kept."""
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return ReplayOutcome(None)
    try:
        async with asyncio.timeout(shape.timeout_s):
            writer.write(head + body)
            status, headers = await _read_head(reader)
            length = int(headers.get("Content-Length", "0"))
            if status != 200:
                await reader.readexactly(length)
                return ReplayOutcome(status)
            hasher = hashlib.sha256()
            received = 0
            started = loop.time()
            while received < length:
                chunk = await reader.read(min(64 * 1024, length - received))
                if not chunk:
                    break
                hasher.update(chunk)
                received += len(chunk)
                ahead_s = received / shape.read_bytes_per_s - (loop.time() - started)
                if ahead_s > 0:
                    await asyncio.sleep(ahead_s)
            return ReplayOutcome(status, received, received == length and hasher.hexdigest() == digest)
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, OSError):
        return ReplayOutcome(None)
    finally:
        writer.close()


async def run_replays(gateway: GatewayProcess, photo_url: str, shape: ReplayShape) -> ReplayReport:
    """Makes the big cut-out once (Accept: image/png, an Idempotency-Key), then sends shape.replays repeats of that
    request at once, each read slowly; RSS is measured from just before the replays."""
    key = gateway.keys["replay"][0]
    payload = json.dumps({"url": photo_url, "output_size": "original", "output_format": "png"}).encode()
    headers = {
        "Content-Type": "application/json", "Content-Length": str(len(payload)), "Accept": "image/png",
        "Idempotency-Key": _REPLAY_KEY,
    }
    idle = rss_bytes(gateway.pid)
    timeout = aiohttp.ClientTimeout(total=shape.timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
        f"{gateway.base_url}/v1/remove-background/url", data=payload,
        headers={"X-API-Key": key, **headers},
    ) as response:
        cutout = await response.read()
        if response.status != 200:
            raise RuntimeError(f"the first request answered {response.status}: {cutout[:300]!r}")
    digest = hashlib.sha256(cutout).hexdigest()
    cutout_bytes = len(cutout)
    del cutout
    await asyncio.sleep(1.0)  # let the first request's buffers go before the baseline
    before = rss_bytes(gateway.pid)
    hwm_reset = reset_peak_rss(gateway.pid)
    peak = [before]
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(_sample_rss(gateway.pid, stop, peak))
    head = request_head("/v1/remove-background/url", gateway.port, key, headers)
    started = asyncio.get_running_loop().time()
    try:
        outcomes = list(await asyncio.gather(*(
            _slow_replay(gateway.port, head, payload, digest, shape) for _ in range(shape.replays)
        )))
    finally:
        stop.set()
        await sampler
    seconds = asyncio.get_running_loop().time() - started
    if hwm_reset:
        peak[0] = max(peak[0], peak_rss_bytes(gateway.pid))
    return ReplayReport(outcomes, cutout_bytes, idle, before, peak[0], hwm_reset, seconds)


def replay_summary(report: ReplayReport) -> dict[str, Any]:
    """Answers by status, whether every 200 carried the whole cut-out, and the RSS figures in MiB."""
    answers: dict[str, int] = {}
    for outcome in report.outcomes:
        label = str(outcome.status or "closed")
        answers[label] = answers.get(label, 0) + 1
    served = [outcome for outcome in report.outcomes if outcome.status == 200]
    return {
        "replays": len(report.outcomes),
        "answers": answers,
        "whole_and_identical": sum(outcome.same_bytes for outcome in served),
        "cutout_mb": round(report.cutout_bytes / MB, 1),
        "seconds": round(report.seconds, 1),
        "idle_rss_mib": round(report.idle_rss_bytes / MIB, 1),
        "before_replays_rss_mib": round(report.before_rss_bytes / MIB, 1),
        "peak_rss_mib": round(report.peak_rss_bytes / MIB, 1),
        "peak_includes_vm_hwm": report.hwm_reset,
        "peak_above_before_mib": round(report.peak_above_before_bytes / MIB, 1),
        "target_above_before_mib": REPLAY_TARGET_ABOVE_BEFORE_BYTES // MIB,
        "within_target": report.peak_above_before_bytes <= REPLAY_TARGET_ABOVE_BEFORE_BYTES,
    }


async def replay_phase(inference_url: str, workdir: Path, shape: ReplayShape) -> dict[str, Any]:
    """Its own gateway (loopback fetches allowed for the image host; the per-account replay cap raised to
    shape.replays, so every replay streams at once and the figure measures the streaming, not the cap)."""
    photo = await asyncio.to_thread(noisy_photo, shape.side_px)
    async with serve_photo(photo) as photo_url, start_gateway(
        workdir / "gateway-replays", inference_url, {"replay": ("enterprise", 1)},
        "--fetch-allow-networks", "127.0.0.0/8", "--max-replays-per-account", str(shape.replays),
    ) as gateway:
        figures = replay_summary(await run_replays(gateway, photo_url, shape))
    print(json.dumps(figures, indent=2))
    print(
        f"gateway RSS during {figures['replays']} slow replays of a {figures['cutout_mb']} MB cut-out: "
        f"{figures['before_replays_rss_mib']} MiB before, {figures['peak_rss_mib']} MiB at peak "
        f"(+{figures['peak_above_before_mib']} MiB; target <= {figures['target_above_before_mib']} MiB: "
        f"{'met' if figures['within_target'] else 'MISSED'}); {figures['whole_and_identical']} of "
        f"{figures['answers'].get('200', 0)} served replays whole and identical"
    )
    return figures


async def _inference_url(stack: AsyncExitStack, given: str | None, workdir: Path) -> str:
    """The given inference service, or Triton plus `python -m inference_service` started here as subprocesses
    (the bench reaches the service only over gRPC, as the gateway does)."""
    if given:
        return given
    triton = TritonServer(ROOT / "triton_models", workdir / "triton")
    triton.start()
    stack.callback(triton.stop)
    service = await stack.enter_async_context(inference_service(triton.grpc_url, workdir / "inference.log"))
    return service.address


async def _uploads_phase(inference_url: str, workdir: Path, args: argparse.Namespace) -> bool:
    shape = LoadShape(
        endless_uploads=args.endless, gzip_bodies=args.gzip, batch_accounts=args.batch_accounts,
        batch_files=args.batch_files, batch_file_bytes=args.batch_file_mb * MB, bad_keys=args.bad_keys,
    )
    async with start_gateway(workdir / "gateway", inference_url, account_plans(shape)) as gateway:
        report = await run_load(gateway, shape)
    figures = summary(report)
    print(json.dumps(figures, indent=2))
    print(
        f"gateway peak RSS above idle: {figures['peak_above_idle_mib']} MiB "
        f"(target < {figures['target_above_idle_mib']} MiB: {'met' if figures['within_target'] else 'MISSED'}); "
        f"normal upload during the attack: {report.normal.status}"
    )
    return bool(figures["within_target"]) and report.normal.status == 200


async def _main(args: argparse.Namespace) -> int:
    met = True
    with tempfile.TemporaryDirectory(prefix="removai-hostile-") as workdir:
        async with AsyncExitStack() as stack:
            if args.phase == "slow-heads":  # answered before inference: none needs to run
                inference_url = args.inference_url or "127.0.0.1:9"
            else:
                inference_url = await _inference_url(stack, args.inference_url, Path(workdir))
            if args.phase in ("all", "uploads"):
                met &= await _uploads_phase(inference_url, Path(workdir), args)
            if args.phase in ("all", "replays"):
                replays = ReplayShape(replays=args.replays, read_bytes_per_s=args.replay_read_kib_s * 1024)
                figures = await replay_phase(inference_url, Path(workdir), replays)
                met &= bool(figures["within_target"]) and figures["whole_and_identical"] == replays.replays
            if args.phase in ("all", "slow-heads"):
                slow = SlowHeadShape(
                    connections=args.slow_heads, byte_every_s=args.slow_head_byte_every_s,
                    header_timeout_s=args.header_timeout_s,
                )
                met &= bool((await slow_head_phase(inference_url, Path(workdir), slow))["within_target"])
    return 0 if met else 1


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--inference-url", help="a running inference service; default: start Triton and one here")
    parser.add_argument("--endless", type=int, default=50, help="endless chunked multipart uploads (default 50)")
    parser.add_argument("--gzip", type=int, default=4, help="gzip bodies inflating far past 25 MB (default 4)")
    parser.add_argument("--batch-accounts", type=int, default=3, help="Pro accounts sending a batch (default 3)")
    parser.add_argument("--batch-files", type=int, default=20, help="files per batch (default 20)")
    parser.add_argument("--batch-file-mb", type=int, default=25, help="size of each batch file, MB (default 25)")
    parser.add_argument("--bad-keys", type=int, default=1000, help="requests with bad keys (default 1000)")
    parser.add_argument(
        "--phase", choices=("all", "uploads", "replays", "slow-heads"), default="all",
        help="uploads: the hostile uploads above; replays: slow replays of one big cut-out; slow-heads: "
        "connections trickling their request heads (default: all)",
    )
    parser.add_argument("--replays", type=int, default=30, help="slow replays of the big cut-out (default 30)")
    parser.add_argument(
        "--replay-read-kib-s", type=int, default=2048, help="how fast each replay is read, KiB/s (default 2048)"
    )
    parser.add_argument("--slow-heads", type=int, default=1000, help="slow-head connections (default 1000)")
    parser.add_argument(
        "--slow-head-byte-every-s", type=float, default=5.0, help="each one sends a head byte this often (default 5)"
    )
    parser.add_argument(
        "--header-timeout-s", type=float, default=30.0,
        help="the slow-heads gateway's head deadline (default 30, the gateway's own default)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(_main(_parse_args(argv)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
