"""The gateway alone: authenticated GET /v1/images/{id} (rate limit counted) per second on one core.

Seeds a SQLite data directory with enterprise accounts, each with one completed image (no Triton, no inference
service: this endpoint never calls them), then starts `python -m gateway` pinned to CPU 0 (every thread it
will start inherits the affinity) and drives it from this process pinned to CPU 1. Spread over accounts so no
key passes its plan's 300 requests a minute. With `--baseline-root DIR` (a checkout of an older commit, e.g.
`git archive <commit> gateway common contract | tar -x -C DIR`) it alternates rounds of that gateway and this
one on the same data and prints the ratio, so a loaded machine hurts both alike. `--profile FILE` runs this
tree's gateway under cProfile and writes its stats (pstats) there. Figures only, never a timed assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from gateway.domain import accounts, images
from gateway.store.database import default_database_url, open_database

ROOT = Path(__file__).resolve().parent.parent
TARGET_RPS = 2000.0
PER_KEY = 290  # under the enterprise plan's 300 a minute


async def seed(data_dir: Path, count: int) -> list[tuple[str, str]]:
    """(API key, image id) of `count` enterprise accounts with one completed image each."""
    targets = []
    async with open_database(default_database_url(data_dir)) as sessions:
        for index in range(count):
            account, key = await accounts.create_account(sessions, name=f"bench {index}", plan="enterprise")
            image = await images.create_image(
                sessions, account.id, images.ImageSource(original_filename="bench.jpg"),
                output_format="png", output_size="original",
            )
            await images.mark_image_completed(
                sessions, image.id, storage_key=f"outputs/{image.id}.png", content_type="image/png",
                width=640, height=480, size_bytes=12345,
            )
            targets.append((key, image.id))
    return targets


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of the process `pid`, all its threads."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@contextlib.contextmanager
def gateway(root: Path, data_dir: Path, profile: Path | None = None) -> Iterator[tuple[str, int]]:
    """A gateway from the checkout at `root` on CPU 0 serving `data_dir`; yields its base URL and pid."""
    port = _free_port()
    env = {
        **os.environ, "PYTHONPATH": str(root), "REMOVAI_GATEWAY_DATA_DIR": str(data_dir),
        "REMOVAI_GATEWAY_PORT": str(port), "REMOVAI_GATEWAY_URL_SIGNING_SECRET": secrets.token_hex(32),
        # A port of its own choosing; a baseline checkout without the setting ignores the variable.
        "REMOVAI_GATEWAY_METRICS_PORT": "0",
    }
    # taskset rather than preexec_fn: the affinity is set before Python starts, so every thread inherits it.
    command = ["taskset", "-c", "0", sys.executable]
    if profile is not None:
        command += ["-m", "cProfile", "-o", str(profile)]
    command += ["-m", "gateway"]
    process = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway at {root} did not start")
            time.sleep(0.1)
        yield base, process.pid
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _connection(
    host: str, port: int, requests: list[bytes], deadline: float, counts: dict[str, int], depth: int = 1
) -> None:
    """One keep-alive connection sending the prepared requests one after the other until `deadline`.

    A raw HTTP/1.1 client (asyncio streams, prepared request bytes, only the status line, Content-Length and
    X-RateLimit-Remaining read): aiohttp's client spends more CPU per request than the gateway now does, so
    with it the client's core, not the gateway's, would set the figure.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for start in range(0, len(requests), depth):
            if time.perf_counter() >= deadline:
                return
            # Pipelined: `depth` requests go out before the answers are read (HTTP/1.1 answers them in order),
            # so the gateway still has work queued while this client waits for its core on a shared machine.
            batch = requests[start:start + depth]
            writer.write(b"".join(batch))
            for _ in batch:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                limited = False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"x-ratelimit-remaining":
                        limited = True
                body = await reader.readexactly(length)
                if head.startswith(b"HTTP/1.1 200 ") and limited and b'"success":' in body:
                    counts["ok"] += 1
                else:
                    counts["failed"] += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def drive(
    base: str, pid: int, targets: list[tuple[str, str]], seconds: float, concurrency: int, depth: int
) -> tuple[float, float, int]:
    """(requests/s answered 200, the same per CPU second of the gateway, answers not 200): every request must be
    a 200 with the rate-limit headers. Per CPU second is the figure that holds on a shared machine: it is the
    rate one core would serve if the gateway had it to itself (and the client kept up)."""
    host, _, port = base.removeprefix("http://").partition(":")
    prepared = [
        f"GET /v1/images/{image_id} HTTP/1.1\r\nHost: {host}:{port}\r\nX-API-Key: {key}\r\n\r\n".encode()
        for key, image_id in targets
    ]
    # Each key gets at most PER_KEY requests in all (the plan's limit is per minute); spread over connections.
    plan = [prepared[i % len(prepared)] for i in range(PER_KEY * len(prepared))]
    per_connection = [plan[offset::concurrency] for offset in range(concurrency)]
    counts = {"ok": 0, "failed": 0}
    # Warm-up, not counted: one request per connection.
    await asyncio.gather(*(
        _connection(host, int(port), [requests[0]], math.inf, {"ok": 0, "failed": 0})
        for requests in per_connection
    ))
    per_connection = [requests[1:] for requests in per_connection]
    started, cpu_before, client_before = time.perf_counter(), cpu_seconds(pid), cpu_seconds(os.getpid())
    deadline = started + seconds
    await asyncio.gather(*(
        _connection(host, int(port), requests, deadline, counts, depth) for requests in per_connection
    ))
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
    print(f"  gateway CPU busy {cpu / elapsed:.0%}, this client's {cpu_seconds(os.getpid()) - client_before:.2f} CPU s "
          f"in {elapsed:.2f} s", flush=True)
    return counts["ok"] / elapsed, counts["ok"] / max(cpu, 1 / TICKS), counts["failed"]


async def run(args: argparse.Namespace) -> int:
    os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory(prefix="removai-gwbench-") as tmp:
        rounds = max(1, args.rounds)
        needed = int(args.seconds * args.max_rps / PER_KEY) + 1
        # A fresh data directory per gateway run: each run opens new rate-limit windows in memory.
        variants = [("after", ROOT)] + ([("before", args.baseline_root)] if args.baseline_root else [])
        figures: dict[str, list[float]] = {name: [] for name, _ in variants}
        per_cpu: dict[str, list[float]] = {name: [] for name, _ in variants}
        data_dir = Path(tmp) / "data"
        targets = await seed(data_dir, needed)
        for round_ in range(rounds):
            for name, root in (variants if round_ % 2 == 0 else variants[::-1]):
                profile = args.profile if (args.profile and name == "after") else None
                with gateway(root, data_dir, profile) as (base, pid):
                    rps, rps_cpu, failed = await drive(
                        base, pid, targets, args.seconds, args.concurrency, args.pipeline
                    )
                figures[name].append(rps)
                per_cpu[name].append(rps_cpu)
                print(f"round {round_ + 1} {name:6s} {rps:8.0f} requests/s, {rps_cpu:8.0f} per gateway CPU second "
                      f"({failed} not 200)", flush=True)
                if failed:
                    print("  answers other than 200 with X-RateLimit-*: the figure is not valid", flush=True)
    after, after_cpu = statistics.median(figures["after"]), statistics.median(per_cpu["after"])
    print(f"gateway alone, GET /v1/images/{{id}} on one core: {after:.0f} requests/s, {after_cpu:.0f} per gateway "
          f"CPU second (medians of {rounds}), target >= {TARGET_RPS:.0f}: "
          f"{'met' if after_cpu >= TARGET_RPS else 'NOT met'} (per CPU second)")
    if args.baseline_root:
        before, before_cpu = statistics.median(figures["before"]), statistics.median(per_cpu["before"])
        print(f"before ({args.baseline_root}): {before:.0f} requests/s, {before_cpu:.0f} per gateway CPU second; "
              f"after/before: {after / before:.2f}x requests/s, {after_cpu / before_cpu:.2f}x per CPU second")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each measured round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--pipeline", type=int, default=4, help="requests sent ahead on each connection")
    parser.add_argument("--max-rps", type=float, default=4000.0,
                        help="the most requests/s expected: sizes how many accounts are seeded")
    parser.add_argument("--baseline-root", type=Path, help="a checkout of the code to compare against")
    parser.add_argument("--profile", type=Path, help="cProfile stats of this tree's gateway, written here")
    if (os.cpu_count() or 1) < 2:
        print("needs two CPUs: the gateway on one, this client on the other", file=sys.stderr)
        return 2
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
