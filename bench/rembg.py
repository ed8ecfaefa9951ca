"""rembg (https://github.com/danielgatis/rembg), the open-source server of the same kind, measured in the same
run as our API and the same way, so that bench.stack prints our figures against it.

rembg runs as its users serve it, `rembg s` (FastAPI under uvicorn, ONNX Runtime on the CPU with its default
session options), in an environment of its own, var/tools/rembg/ (bench/rembg-requirements.txt, hash-pinned,
made on first use). It downloads nothing: it serves the very file our Triton serves,
triton_models/isnet/1/model.onnx, as its `dis_custom` session (`model=dis_custom`, `extras={"model_path": ...}`
on each request; rembg accepts a model_path only under its home directory, so REMBG_HOME is that file's
folder). `--no-ui` leaves out the Gradio page its help says costs idle CPU: rembg's API at its leanest.

For each image and concurrency (bench.stack's images, concurrencies and request count): one warm-up request,
then POST /api/remove with the JPEG (the PNG cut-out at the original size is the answer) from `concurrency`
callers sharing the count; images/s, p50 and p95 latency, CPU seconds per image and the summed peak RSS of
the server's process tree (bench.processes, as bench.stack measures ours), and the CPU other processes used.
Its server is stopped before our stack starts: each has the machine to itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import statistics
import subprocess
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

from bench.processes import RssSampler, cpu_s, free_port, http_ok, machine_busy_s, stop_tree, tree_pids
from common.bench_images import BenchImage
from tools.tool_venv import ensure_environment

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = Path(__file__).resolve().parent / "rembg-requirements.txt"
VENV = ROOT / "var" / "tools" / "rembg"
WEIGHTS = ROOT / "triton_models" / "isnet" / "1" / "model.onnx"
SESSION = "dis_custom"  # rembg's session for an ISNet (DIS) file of one's own
# Our API against rembg at concurrency 4 on both sizes: at least 5x its images/s, at most 0.3x its p95 latency.
TARGET_AT = (("2MP", 4), ("12MP", 4))
TARGET_THROUGHPUT_X = 5.0
TARGET_P95_X = 0.3


@dataclass
class Measured:
    """One image size at one concurrency, of either server."""

    server: str  # "rembg", or our model's name
    size: str
    concurrency: int
    requests: int
    elapsed_s: float
    latencies_ms: list[float]
    cpu_s: float
    peak_rss_mb: float
    foreign_cpu: float  # CPUs other processes used meanwhile

    @property
    def images_per_s(self) -> float:
        return self.requests / self.elapsed_s

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p95_ms(self) -> float:
        return p95(self.latencies_ms)

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "images_per_s": self.images_per_s, "p50_ms": self.p50_ms, "p95_ms": self.p95_ms}


def p95(values: Sequence[float]) -> float:
    """The 95th percentile, interpolated between the sorted values (numpy's default); the value itself for one."""
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


# ------------------------------------------------------------------------------------------------- the server


def server_command(venv: Path, port: int) -> list[str]:
    """`rembg s` on 127.0.0.1:port, without the Gradio page, logging warnings only."""
    return [str(venv / "bin" / "rembg"), "s", "--host", "127.0.0.1", "--port", str(port), "--no-ui",
            "--log_level", "warning"]


def server_env(base: Mapping[str, str], weights: Path) -> dict[str, str]:
    """base with REMBG_HOME at the weights' folder (rembg refuses a model_path outside it; U2NET_HOME, which
    would win, removed) and BROWSER=true: its startup opens a browser on its own page, which here runs
    /bin/true."""
    env = {name: value for name, value in base.items() if name != "U2NET_HOME"}
    return {**env, "REMBG_HOME": str(weights.parent), "BROWSER": "true"}


def remove_url(base: str, weights: Path) -> str:
    """POST /api/remove with `extras` (a query parameter even for POST): the weights file as model_path."""
    return f"{base}/api/remove?" + urllib.parse.urlencode({"extras": json.dumps({"model_path": str(weights)})})


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    weights: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def running_rembg(venv: Path, weights: Path, log_path: Path, start_timeout_s: float) -> Iterator[Server]:
    """rembg's server on a free port, ready (its /api page answers); SIGTERM, then its leftovers killed."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(server_command(venv, port), cwd=ROOT, env=server_env(os.environ, weights),
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        server = Server(process, port, weights)
        try:
            deadline = time.monotonic() + start_timeout_s
            while not http_ok(f"{server.base}/api"):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"rembg's server did not start; its output ends with:\n{tail}")
                time.sleep(0.5)
            yield server
        finally:
            stop_tree(process, 30)


async def _remove_one(session: aiohttp.ClientSession, server: Server, image: BenchImage) -> bytes:
    """The PNG cut-out rembg answers. Raises on anything but success."""
    form = aiohttp.FormData()
    form.add_field("file", image.jpeg, filename="bench.jpg", content_type="image/jpeg")
    form.add_field("model", SESSION)
    async with session.post(remove_url(server.base, server.weights), data=form) as response:
        data = await response.read()
        if response.status != 200 or not data.startswith(b"\x89PNG"):
            raise RuntimeError(f"rembg answered {response.status}: {data[:300]!r}")
    return data


async def _phase(server: Server, image: BenchImage, concurrency: int, requests: int) -> tuple[Measured, bytes]:
    """One image at one concurrency, as bench.stack's http_phase measures ours; and one of the PNGs."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        png = await _remove_one(session, server, image)  # warm-up, not counted
        pids = tree_pids(server.process.pid)
        cpu_before = {pid: cpu_s(pid) for pid in pids}
        busy_before = machine_busy_s()
        self_before = time.process_time()
        latencies: list[float] = []
        remaining = [requests]

        async def caller() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                started = time.perf_counter()
                await _remove_one(session, server, image)
                latencies.append((time.perf_counter() - started) * 1000.0)

        with RssSampler(server.process.pid) as rss:
            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
    cpu = sum(cpu_s(pid) - cpu_before.get(pid, 0.0) for pid in tree_pids(server.process.pid))
    own = time.process_time() - self_before
    foreign = max(0.0, machine_busy_s() - busy_before - cpu - own) / elapsed
    return Measured("rembg", image.label, concurrency, requests, elapsed, latencies, cpu, rss.peak_kb / 1024.0,
                    foreign), png


@dataclass
class RembgFigures:
    versions: dict[str, str]  # rembg's and ONNX Runtime's
    runs: list[Measured]
    sample: tuple[str, bytes]  # the first image's label and rembg's PNG of it, for the mask comparison


def _versions(python: Path) -> dict[str, str]:
    code = ("import json; from importlib.metadata import version as v; "
            "print(json.dumps({p: v(p) for p in ('rembg', 'onnxruntime')}))")
    result: dict[str, str] = json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True,
                                                       text=True).stdout)
    return result


def measure(images: Sequence[BenchImage], concurrencies: Sequence[int], requests: int, workdir: Path,
            start_timeout_s: float = 300.0) -> RembgFigures:
    """Every image at every concurrency through rembg's server, started once for all of them."""
    python = ensure_environment(VENV, REQUIREMENTS, "rembg")
    versions = _versions(python)
    print(f"rembg {versions['rembg']} (ONNX Runtime {versions['onnxruntime']}, CPU), its own server, the same "
          f"weights ({WEIGHTS.relative_to(ROOT)}) as session {SESSION}:", flush=True)
    runs = []
    sample = ("", b"")
    with running_rembg(VENV, WEIGHTS, workdir / "rembg-output.log", start_timeout_s) as server:
        for image in images:
            for concurrency in concurrencies:
                run, png = asyncio.run(_phase(server, image, concurrency, requests))
                runs.append(run)
                if not sample[1]:
                    sample = (image.label, png)
                print(f"  rembg {image.label} c={concurrency}: {run.images_per_s:.2f} images/s, "
                      f"p95 {run.p95_ms:.0f} ms", flush=True)
    return RembgFigures(versions, runs, sample)


# ----------------------------------------------------------------------------------------------------- report


def alpha_difference(ours_png: bytes, theirs_png: bytes) -> tuple[float, float]:
    """(mean |difference| of the two cut-outs' alpha on 0..255, share of pixels differing by more than 64)."""
    with Image.open(io.BytesIO(ours_png)) as ours, Image.open(io.BytesIO(theirs_png)) as theirs:
        if ours.size != theirs.size:
            raise ValueError(f"the cut-outs differ in size: ours {ours.size}, rembg's {theirs.size}")
        a = np.asarray(ours.convert("RGBA").getchannel("A"), dtype=np.int16)
        b = np.asarray(theirs.convert("RGBA").getchannel("A"), dtype=np.int16)
    difference = np.abs(a - b)
    return float(difference.mean()), float((difference > 64).mean())


def _mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def verdicts(ours: Measured, theirs: Measured) -> tuple[float, float, float, str]:
    """(our images/s / rembg's, our p95 / rembg's, our CPU s/image / rembg's, the line saying the first two
    against their targets). The CPU ratio has no target: it is the one other load moves least, and on a machine
    both fill it bounds the throughput ratio (images/s = cores / CPU s per image)."""
    throughput_x = ours.images_per_s / theirs.images_per_s
    p95_x = ours.p95_ms / theirs.p95_ms
    cpu_x = (ours.cpu_s / ours.requests) / (theirs.cpu_s / theirs.requests)
    line = (f"{ours.size} c={ours.concurrency}, {ours.server}: images/s {throughput_x:.2f}x rembg's, target >= "
            f"{TARGET_THROUGHPUT_X:g}x: {_mark(throughput_x >= TARGET_THROUGHPUT_X)}; p95 {p95_x:.2f}x rembg's, "
            f"target <= {TARGET_P95_X:g}x: {_mark(p95_x <= TARGET_P95_X)} (CPU s/image {cpu_x:.2f}x rembg's)")
    return throughput_x, p95_x, cpu_x, line


def _row(run: Measured) -> str:
    return (f"  {run.server:<11}{run.size + ' c=' + str(run.concurrency):<10}{run.images_per_s:9.2f}"
            f"{run.p50_ms:9.0f}{run.p95_ms:9.0f}{run.cpu_s / run.requests:10.2f}{run.peak_rss_mb:12.0f}"
            f"{run.foreign_cpu:11.0%}")


def report(theirs: RembgFigures, ours: Sequence[Measured], int8: Sequence[Measured] | None,
           mask: tuple[float, float] | None) -> dict[str, Any]:
    """Prints rembg's figures beside ours (and the INT8 model's, or why there are none) with the ratios against
    their targets; returns them for --json. `int8` None: the INT8 model is not built."""
    print(f"\nAgainst rembg {theirs.versions['rembg']} (its own server, ONNX Runtime {theirs.versions['onnxruntime']} "
          f"on the CPU, session {SESSION} on our isnet file; measured before the stack started):")
    if mask:
        print(f"  same model, same work: the alpha of its cut-out of {theirs.sample[0]} against ours: mean |difference| "
              f"{mask[0]:.2f} of 255, {mask[1]:.2%} of pixels differ by more than 64")
    print(f"  {'server':<11}{'phase':<10}{'images/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'CPU s/img':>10}"
          f"{'peak RSS MB':>12}{'other load':>11}")
    by_phase = {(run.size, run.concurrency): run for run in theirs.runs}
    for run in theirs.runs:
        print(_row(run))
        for mine in [*ours, *(int8 or [])]:
            if (mine.size, mine.concurrency) == (run.size, run.concurrency):
                print(_row(mine))
    print("  Targets against rembg:")
    ratios = []
    for mine in [*ours, *(int8 or [])]:
        reference = by_phase.get((mine.size, mine.concurrency))
        if reference and (mine.size, mine.concurrency) in TARGET_AT:
            throughput_x, p95_x, cpu_x, line = verdicts(mine, reference)
            print(f"    {line}")
            ratios.append({"server": mine.server, "size": mine.size, "concurrency": mine.concurrency,
                           "throughput_x": throughput_x, "p95_x": p95_x, "cpu_s_per_image_x": cpu_x,
                           "throughput_met": throughput_x >= TARGET_THROUGHPUT_X, "p95_met": p95_x <= TARGET_P95_X})
    if not ratios:
        print("    none measured: the targets are at " + ", ".join(f"{s} c={c}" for s, c in TARGET_AT))
    if int8 is None:
        print("    isnet_int8 is not built (no triton_models/isnet_int8/1/model.xml): `make int8` makes it")
    return {
        "versions": theirs.versions,
        "session": SESSION,
        "runs": [run.as_json() for run in theirs.runs],
        "ours": [run.as_json() for run in ours],
        "int8": [run.as_json() for run in int8] if int8 is not None else None,
        "alpha_mean_abs_difference": mask[0] if mask else None,
        "alpha_share_differing_over_64": mask[1] if mask else None,
        "ratios": ratios,
    }
