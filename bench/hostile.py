"""Hostile load (issue 7) against a gateway started as a subprocess; prints its peak RSS above idle, from /proc.

The load: endless chunked multipart uploads (one endless field, or endless fields), gzip bodies that inflate far
past 25 MB (30 MB in one file; 20 x 25 MB of zeros sent as about 0.5 MB), a batch of 20 x 25 MB files from each of 3 Pro accounts at once, 1,000 requests with bad keys that
declare a 25 MB body and never send it, and meanwhile one normal upload that must succeed. The target: the
gateway's peak RSS stays under 300 MB above its idle RSS. tests/gateway/test_hostile.py runs the same load with
smaller counts and asserts only a gross bound.

    python -m bench.hostile                      # starts Triton and the inference service itself
    python -m bench.hostile --inference-url 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import tempfile
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gateway.domain import accounts
from gateway.store.database import default_database_url, open_database
from gateway.store.tables import PlanName
from tools.stack import inference_service
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
    """How much of each kind of hostile request to send; the defaults are issue 7's full counts."""

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


def read_status_kib(pid: int, field_name: str) -> int:
    """A 'VmRSS'/'VmHWM' line of /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field_name)


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
    data_dir: Path, inference_url: str, plans: dict[str, tuple[PlanName, int]], *extra_flags: str
) -> AsyncIterator[GatewayProcess]:
    """Starts the gateway subprocess once its accounts exist, waits for /healthz, and stops it (by its pid)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    keys = await _make_accounts(data_dir, plans)
    port = free_port()
    log = (data_dir / "gateway.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
        "--data-dir", str(data_dir),
        "--inference-url", inference_url, "--log-level", "WARNING", *extra_flags,
        cwd=ROOT, stdout=log, stderr=asyncio.subprocess.STDOUT,
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
    """8 KB text fields, one after another, without end (until _MAX_SENT_BYTES; issue 7 measured 40,000 of
    them: +311 MB)."""
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


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("closed without an answer")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip()] = value.strip()
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
            peak[0] = max(peak[0], read_status_kib(pid, "VmRSS"))
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
    idle = read_status_kib(gateway.pid, "VmRSS")
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
    hwm = read_status_kib(gateway.pid, "VmHWM")
    return LoadReport(outcomes, normal, idle, peak[0], hwm)


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


async def _main(args: argparse.Namespace) -> int:
    shape = LoadShape(
        endless_uploads=args.endless, gzip_bodies=args.gzip, batch_accounts=args.batch_accounts,
        batch_files=args.batch_files, batch_file_bytes=args.batch_file_mb * MB, bad_keys=args.bad_keys,
    )
    with tempfile.TemporaryDirectory(prefix="removai-hostile-") as workdir:
        async with AsyncExitStack() as stack:
            inference_url = await _inference_url(stack, args.inference_url, Path(workdir))
            async with start_gateway(Path(workdir) / "gateway", inference_url, account_plans(shape)) as gateway:
                report = await run_load(gateway, shape)
    figures = summary(report)
    print(json.dumps(figures, indent=2))
    print(
        f"gateway peak RSS above idle: {figures['peak_above_idle_mib']} MiB "
        f"(target < {figures['target_above_idle_mib']} MiB: {'met' if figures['within_target'] else 'MISSED'}); "
        f"normal upload during the attack: {report.normal.status}"
    )
    return 0 if figures["within_target"] and report.normal.status == 200 else 1


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--inference-url", help="a running inference service; default: start Triton and one here")
    parser.add_argument("--endless", type=int, default=50, help="endless chunked multipart uploads (default 50)")
    parser.add_argument("--gzip", type=int, default=4, help="gzip bodies inflating far past 25 MB (default 4)")
    parser.add_argument("--batch-accounts", type=int, default=3, help="Pro accounts sending a batch (default 3)")
    parser.add_argument("--batch-files", type=int, default=20, help="files per batch (default 20)")
    parser.add_argument("--batch-file-mb", type=int, default=25, help="size of each batch file, MB (default 25)")
    parser.add_argument("--bad-keys", type=int, default=1000, help="requests with bad keys (default 1000)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(_main(_parse_args(argv)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
