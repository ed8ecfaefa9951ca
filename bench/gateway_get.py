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

import aiohttp

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


@contextlib.contextmanager
def gateway(root: Path, data_dir: Path, profile: Path | None = None) -> Iterator[str]:
    """A gateway from the checkout at `root` on CPU 0 serving `data_dir`; yields its base URL."""
    port = _free_port()
    env = {
        **os.environ, "PYTHONPATH": str(root), "REMOVAI_GATEWAY_DATA_DIR": str(data_dir),
        "REMOVAI_GATEWAY_PORT": str(port), "REMOVAI_GATEWAY_URL_SIGNING_SECRET": secrets.token_hex(32),
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
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def drive(base: str, targets: list[tuple[str, str]], seconds: float, concurrency: int) -> tuple[float, int]:
    """(requests/s answered 200, answers not 200): every request must be a 200 with the rate-limit headers."""
    budget = dict.fromkeys((key for key, _ in targets), PER_KEY)
    ok = failed = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm-up: one request per key opens its rate-limit window and any connection pool.
        for key, image_id in targets[:concurrency]:
            async with session.get(f"{base}/v1/images/{image_id}", headers={"X-API-Key": key}) as response:
                await response.read()
            budget[key] -= 1
        deadline = time.perf_counter() + seconds

        async def caller(offset: int) -> None:
            nonlocal ok, failed
            turn = offset
            while time.perf_counter() < deadline:
                key, image_id = targets[turn % len(targets)]
                turn += 1
                if budget[key] <= 0:
                    if all(value <= 0 for value in budget.values()):
                        return
                    continue
                budget[key] -= 1
                async with session.get(f"{base}/v1/images/{image_id}", headers={"X-API-Key": key}) as response:
                    await response.read()
                    if response.status == 200 and "X-RateLimit-Remaining" in response.headers:
                        ok += 1
                    else:
                        failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return ok / elapsed, failed


async def run(args: argparse.Namespace) -> int:
    os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory(prefix="removai-gwbench-") as tmp:
        rounds = max(1, args.rounds)
        needed = int(args.seconds * args.max_rps / PER_KEY) + 1
        # A fresh data directory per gateway run: each run opens new rate-limit windows in memory.
        variants = [("after", ROOT)] + ([("before", args.baseline_root)] if args.baseline_root else [])
        figures: dict[str, list[float]] = {name: [] for name, _ in variants}
        data_dir = Path(tmp) / "data"
        targets = await seed(data_dir, needed)
        for round_ in range(rounds):
            for name, root in (variants if round_ % 2 == 0 else variants[::-1]):
                profile = args.profile if (args.profile and name == "after") else None
                with gateway(root, data_dir, profile) as base:
                    rps, failed = await drive(base, targets, args.seconds, args.concurrency)
                figures[name].append(rps)
                print(f"round {round_ + 1} {name:6s} {rps:8.0f} requests/s ({failed} not 200)", flush=True)
                if failed:
                    print("  answers other than 200 with X-RateLimit-*: the figure is not valid", flush=True)
    after = statistics.median(figures["after"])
    print(f"gateway alone, GET /v1/images/{{id}} on one core: {after:.0f} requests/s (median of {rounds}), "
          f"target >= {TARGET_RPS:.0f}: {'met' if after >= TARGET_RPS else 'NOT met'}")
    if args.baseline_root:
        before = statistics.median(figures["before"])
        print(f"before ({args.baseline_root}): {before:.0f} requests/s; after/before: {after / before:.2f}x")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each measured round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
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
