"""Throughput, latency and memory against their targets through the public HTTP API of a running stack
(tools.stack: Triton, the inference service and the gateway on 127.0.0.1), with the model alone measured in the
same run as the ceiling.

Phases, one after the other so that each has the machine to itself (as far as other users allow):
  -. before the stack starts, rembg's own server (bench/rembg.py) on the same weights file, the same images,
     concurrencies and request count as phase 2 (--rembg-requests 0 skips it); after phase 2, the INT8 model
     (where `make int8` built it) through the API at the phases the targets against rembg name, and our
     cut-out of rembg's sample image (the alphas compared): ours beside rembg's, with the ratios and targets;
  0. OpenVINO alone (bench/openvino_alone.py, a process of its own) on the same weights file, the mask output
     only, as many inferences in flight as OpenVINO asks for: the speed the model itself allows. Run before and
     after phase 1, so that a change in the machine's other load shows; Triton's concurrency-4 figure is held
     against their mean (target TARGET_TRITON_SHARE);
  1. the model alone: Triton's own isnet model (the config's settings), called directly over gRPC with the
     model input (1024x1024 uint8) at concurrency 1, 2 and 4; the best images/s is the ceiling, concurrency 1's
     median latency the model's single-request latency;
  2. each image size at each concurrency: upload (POST /v1/remove-background/file, PNG at the original size),
     then download of output_url; images/s, latency, CPU seconds per image over every process of the stack
     (psutil), the summed RSS of those processes sampled every 50 ms (peak), and the inference service's
     own stage timings (its Prometheus histograms);
  3. the gateway alone: authenticated GET /v1/images/{id} (rate limit counted) with the gateway pinned to one
     core and this client to the other, for a bounded time.
Figures and ratios only: never a timed assertion. Other users of the machine are reported as "other load".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
import tritonclient.grpc.aio as triton_grpc
from PIL import Image
from tritonclient.grpc import InferInput

from bench import rembg
from bench.processes import RssSampler, cpu_s, free_port, http_ok, machine_busy_s, stop_tree, tree_pids
from common.bench_images import BenchImage, make_images
from common.triton_infer import infer, is_decoupled
from gateway.domain import accounts
from gateway.store.database import default_database_url, open_database

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT / "tests" / "data" / "coffee.jpg"
MODEL = "isnet"
MODEL_SIDE = 1024
STAGES = ("decode", "preprocess", "inference", "postprocess", "encode")
# The service's speed and memory targets: throughput as a share of the model's ceiling, latency as a multiple
# of the model's own, the stack's summed peak RSS, the gateway's requests per second.
TARGET_SHARE = {("2MP", 4): 0.75, ("12MP", 4): 0.45}
TARGET_LATENCY_X = 2.5  # 12 MP c=1 median latency / the model's single-request latency
TARGET_RSS_MB = 1500.0  # summed peak RSS at 12 MP c=4
TARGET_GATEWAY_RPS = 2000.0
TARGET_TRITON_SHARE = 0.9  # Triton alone at c=4 / OpenVINO alone on the one-output model


# --------------------------------------------------------------------------------------------------- processes


STUB_ROLE = "triton stub"


def _role(pid: int) -> str:
    """The kind of process; a Triton Python stub is named with its model ("triton stub isnet"), each model
    being a stub process of its own."""
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:
        return "?"
    cmdline = " ".join(argv)
    if "triton_python_backend_stub" in cmdline and len(argv) > 1:
        # argv[1] is <repository>/<model>/<version>/model.py
        return f"{STUB_ROLE} {Path(argv[1]).parent.parent.name}"
    for marker, role in (("-m gateway", "gateway"), ("-m inference_service", "inference"),
                         ("triton_python_backend_stub", "triton stub"), ("tritonserver", "triton"),
                         ("-m tools.stack", "stack")):
        if marker in cmdline:
            return role
    return "other"


# -------------------------------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    data_dir: Path
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    triton_grpc_port: int
    triton_http_port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def running_stack(
    data_dir: Path, env: dict[str, str], start_timeout_s: float, models: str = ""
) -> Iterator[Stack]:
    """`python -m tools.stack` on free ports in data_dir; SIGTERM (the stack stops its parts in order) at the end."""
    ports = {name: free_port() for name in ("port", "grpc", "metrics", "gmetrics", "thttp", "tgrpc", "tmetrics")}
    log = (data_dir / "stack-output.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.stack", "--data-dir", str(data_dir), "--port", str(ports["port"]),
         "--grpc-port", str(ports["grpc"]), "--inference-metrics-port", str(ports["metrics"]),
         "--gateway-metrics-port", str(ports["gmetrics"]),
         "--triton-http-port", str(ports["thttp"]), "--triton-grpc-port", str(ports["tgrpc"]),
         "--triton-metrics-port", str(ports["tmetrics"]), "--log-level", "WARNING",
         *(["--models", models] if models else [])],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    stack = Stack(data_dir, process, ports["port"], ports["metrics"], ports["tgrpc"], ports["thttp"])
    try:
        deadline = time.monotonic() + start_timeout_s
        while not (http_ok(f"{stack.base}/healthz") and http_ok(
                f"http://127.0.0.1:{stack.triton_http_port}/v2/models/{MODEL}/ready")):
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (data_dir / "stack-output.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the stack did not start; its output ends with:\n{tail}")
            time.sleep(0.5)
        yield stack
    finally:
        stop_tree(process, 90)
        log.close()


def inference_stage_sums(stack: Stack) -> dict[str, float]:
    """Cumulative seconds per stage (and the count) from the inference service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    sums = dict.fromkeys(STAGES, 0.0)
    count = 0.0
    for line in text.splitlines():
        if line.startswith("removai_inference_stage_seconds_sum{"):
            stage = line.split('stage="', 1)[1].split('"', 1)[0]
            if stage in sums:
                sums[stage] += float(line.rsplit(" ", 1)[1])
        elif line.startswith('removai_inference_stage_seconds_count{stage="decode"'):
            count = float(line.rsplit(" ", 1)[1])
    return {**sums, "count": count}


async def create_accounts(stack: Stack, count: int) -> list[str]:
    """`count` enterprise accounts (300 requests/minute, no monthly quota) in the stack's database: their keys."""
    keys = []
    async with open_database(default_database_url(stack.data_dir)) as sessions:
        for index in range(count):
            _, key = await accounts.create_account(sessions, name=f"bench-{index}", plan="enterprise")
            keys.append(key)
    return keys


# ------------------------------------------------------------------------------------------------------ phases


@dataclass
class Phase:
    size: str
    concurrency: int
    requests: int
    elapsed_s: float
    latencies_ms: list[float]
    cpu_s: float
    cpu_by_role: dict[str, float]
    peak_rss_mb: float
    foreign_cpu: float  # CPUs other processes used meanwhile
    stages_ms: dict[str, float] = field(default_factory=dict)
    png_bytes: int = 0
    peak_rss_by_role_mb: dict[str, float] = field(default_factory=dict)
    model: str = MODEL

    @property
    def images_per_s(self) -> float:
        return self.requests / self.elapsed_s

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms)


async def _infer_loop(
    client: Any, decoupled: bool, tensor: InferInput, remaining: list[int], latencies: list[float]
) -> None:
    """Calls the model until `remaining` (shared by the concurrent loops) runs out; latencies in ms. The call is
    the inference service's own (a stream where the config says decoupled)."""
    while remaining[0] > 0:
        remaining[0] -= 1
        started = time.perf_counter()
        await infer(client, MODEL, tensor, request_id="bench", timeout_s=600.0, decoupled=decoupled)
        latencies.append((time.perf_counter() - started) * 1000.0)


async def model_alone(stack: Stack, concurrencies: Sequence[int], requests: int) -> dict[int, tuple[float, float]]:
    """{concurrency: (images/s, median latency ms)} of the model alone in the stack's Triton."""
    # The model's input as the service makes it (the 2 MP image resized bilinearly to 1024x1024 RGB); made here
    # rather than with the service's own function: the bench reaches the service only as a client does.
    with Image.open(io.BytesIO(make_images(DEFAULT_SOURCE, [2])[0].jpeg)) as opened:
        image = np.asarray(opened.convert("RGB").resize((MODEL_SIDE, MODEL_SIDE), Image.Resampling.BILINEAR))
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{stack.triton_grpc_port}")
    tensor = InferInput("image", [1, *image.shape], "UINT8")
    tensor.set_data_from_numpy(image[np.newaxis])
    results: dict[int, tuple[float, float]] = {}
    try:
        decoupled = is_decoupled((await client.get_model_config(MODEL, as_json=True))["config"])
        await infer(client, MODEL, tensor, request_id="bench", timeout_s=600.0, decoupled=decoupled)  # warm-up
        for concurrency in concurrencies:
            latencies: list[float] = []
            remaining = [requests]
            started = time.perf_counter()
            await asyncio.gather(*(_infer_loop(client, decoupled, tensor, remaining, latencies)
                                   for _ in range(concurrency)))
            results[concurrency] = (requests / (time.perf_counter() - started), statistics.median(latencies))
            print(f"  model alone c={concurrency}: {results[concurrency][0]:.2f} images/s, "
                  f"p50 {results[concurrency][1]:.0f} ms", flush=True)
    finally:
        await client.close()
    return results


INT8_MODEL = "isnet_int8"
INT8_WEIGHTS = ROOT / "triton_models" / INT8_MODEL / "1" / "model.xml"


def openvino_alone(requests: int, weights: Path | None = None) -> dict[str, Any]:
    """bench/openvino_alone.py's figures, run in a process of its own (its memory and threads end with it)."""
    with tempfile.TemporaryDirectory(prefix="removai-bench-openvino-") as workdir:
        figures_path = Path(workdir) / "figures.json"
        subprocess.run([sys.executable, "-m", "bench.openvino_alone", "--requests", str(requests),
                        "--json", str(figures_path), *(["--weights", str(weights)] if weights else [])],
                       cwd=ROOT, check=True)
        figures: dict[str, Any] = json.loads(figures_path.read_text())
        return figures


class ModelNotInstalled(RuntimeError):
    """The API answered that the model is not installed on this server (isnet_int8 before `make int8`)."""


async def _remove_one(
    session: aiohttp.ClientSession, stack: Stack, key: str, image: BenchImage, model: str | None = None
) -> int:
    """Upload, then download output_url; the PNG's size. Raises on anything but success."""
    return len(await _cutout(session, stack, key, image, model))


async def _cutout(
    session: aiohttp.ClientSession, stack: Stack, key: str, image: BenchImage, model: str | None = None
) -> bytes:
    """Upload, then download output_url; the PNG. Raises on anything but success."""
    form = aiohttp.FormData()
    form.add_field("file", image.jpeg, filename="bench.jpg", content_type="image/jpeg")
    form.add_field("output_format", "png")
    form.add_field("output_size", "original")
    if model:
        form.add_field("model", model)
    async with session.post(f"{stack.base}/v1/remove-background/file", data=form,
                            headers={"X-API-Key": key}) as response:
        body = await response.json()
        if response.status == 503 and "not installed" in body["error"]["message"]:
            raise ModelNotInstalled(body["error"]["message"])
        if response.status != 200:
            raise RuntimeError(f"upload answered {response.status}: {body}")
    async with session.get(body["data"]["output_url"]) as response:
        data = await response.read()
        if response.status != 200 or not data.startswith(b"\x89PNG"):
            raise RuntimeError(f"download answered {response.status}")
    return data


async def model_speeds(stack: Stack, key: str, image: BenchImage, requests: int) -> None:
    """Each model GET /v1/models lists, through the API one request at a time: images/s and ms/image."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        async with session.get(f"{stack.base}/v1/models") as response:
            models = (await response.json())["data"]["models"]
        print(f"models, c=1 on {image.label} ({requests} requests each, after one warm-up):", flush=True)
        for model in models:
            try:
                await _remove_one(session, stack, key, image, model["name"])
            except ModelNotInstalled:
                print(f"  {model['name']}: not installed on this stack (isnet_int8: `make int8` builds it)", flush=True)
                continue
            started = time.perf_counter()
            for _ in range(requests):
                await _remove_one(session, stack, key, image, model["name"])
            elapsed = time.perf_counter() - started
            default = " (default)" if model["default"] else ""
            print(f"  {model['name']}{default}: {requests / elapsed:.2f} images/s, "
                  f"{1000 * elapsed / requests:.0f} ms/image", flush=True)


async def http_phase(
    stack: Stack, key: str, image: BenchImage, concurrency: int, requests: int, model: str | None = None
) -> Phase:
    """One image at one concurrency through the API; `model` None: the default model (no `model` field)."""
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await _remove_one(session, stack, key, image, model)  # warm-up, not counted
        pids = tree_pids(stack.process.pid)
        cpu_before = {pid: cpu_s(pid) for pid in pids}
        busy_before = machine_busy_s()
        self_before = time.process_time()
        stages_before = inference_stage_sums(stack)
        latencies: list[float] = []
        sizes: list[int] = []
        remaining = [requests]

        async def caller() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                started = time.perf_counter()
                sizes.append(await _remove_one(session, stack, key, image, model))
                latencies.append((time.perf_counter() - started) * 1000.0)

        with RssSampler(stack.process.pid, role=_role) as rss:
            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
    by_role: dict[str, float] = {}
    for pid in tree_pids(stack.process.pid):
        by_role[_role(pid)] = by_role.get(_role(pid), 0.0) + cpu_s(pid) - cpu_before.get(pid, 0.0)
    cpu = sum(by_role.values())
    own = time.process_time() - self_before
    stages_after = inference_stage_sums(stack)
    count = stages_after["count"] - stages_before["count"] or math.nan
    stages = {s: (stages_after[s] - stages_before[s]) / count * 1000.0 for s in STAGES}
    return Phase(image.label, concurrency, requests, elapsed, latencies, cpu, by_role, rss.peak_kb / 1024.0,
                 max(0.0, machine_busy_s() - busy_before - cpu - own) / elapsed, stages,
                 int(statistics.mean(sizes)), {r: kb / 1024.0 for r, kb in rss.peak_by_role_kb.items()}, model or MODEL)


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of pid onto cpus (sched_setaffinity on a pid moves only its main thread)."""
    for thread in psutil.Process(pid).threads():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(thread.id, cpus)


async def gateway_alone(stack: Stack, keys: list[str], image: BenchImage, seconds: float,
                        concurrency: int) -> tuple[float, int, int]:
    """(requests/s answered 200, requests, non-200) of GET /v1/images/{id}, gateway on CPU 0, client on CPU 1.
    Each key gets at most 290 requests (its plan allows 300 a minute), so the run stays inside the limit."""
    async with aiohttp.ClientSession() as session:
        targets = []
        for key in keys:
            form = aiohttp.FormData()
            form.add_field("file", image.jpeg, filename="small.jpg", content_type="image/jpeg")
            async with session.post(f"{stack.base}/v1/remove-background/file", data=form,
                                    headers={"X-API-Key": key}) as response:
                targets.append((key, (await response.json())["data"]["id"]))
    gateway = [pid for pid in tree_pids(stack.process.pid) if _role(pid) == "gateway"]
    everything = set(range(os.cpu_count() or 1))
    for pid in gateway:
        _pin(pid, {0})
    os.sched_setaffinity(0, {1 % len(everything)})
    budget = {key: 290 for key, _ in targets}
    ok = failed = 0
    try:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            deadline = time.perf_counter() + seconds

            async def caller(offset: int) -> None:
                nonlocal ok, failed
                turn = offset
                while time.perf_counter() < deadline:
                    key, image_id = targets[turn % len(targets)]
                    turn += 1
                    if budget[key] <= 0:
                        if all(v <= 0 for v in budget.values()):
                            return
                        continue
                    budget[key] -= 1
                    async with session.get(f"{stack.base}/v1/images/{image_id}",
                                           headers={"X-API-Key": key}) as response:
                        await response.read()
                        if response.status == 200:
                            ok += 1
                        else:
                            failed += 1

            started = time.perf_counter()
            await asyncio.gather(*(caller(i) for i in range(concurrency)))
            elapsed = time.perf_counter() - started
    finally:
        os.sched_setaffinity(0, everything)
        for pid in gateway:
            _pin(pid, everything)
    return ok / elapsed, ok + failed, failed


# ----------------------------------------------------------------------------------------------------- report


def _mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(ceiling: dict[int, tuple[float, float]], phases: list[Phase], gateway: tuple[float, int, int] | None,
           machine: str, openvino: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    best = max(rate for rate, _ in ceiling.values())
    single_ms = ceiling[min(ceiling)][1]
    print(f"\n{machine}")
    int8 = [f for f in openvino or [] if f.get("model") == "isnet_int8"]
    openvino = [f for f in openvino or [] if f.get("model") != "isnet_int8"]
    openvino_rate = statistics.mean(f["images_per_s"] for f in openvino) if openvino else None
    if openvino and openvino_rate:
        first = openvino[0]
        print(f"OpenVINO alone (mask output only, {first['precision']}, {first['hint']}, {first['streams']} streams, "
              f"{first['in_flight']} in flight): {openvino_rate:.2f} images/s (mean of "
              + ", ".join(f"{f['images_per_s']:.2f}" for f in openvino) + f"), peak RSS {first['peak_rss_mb']:.0f} MB")
        if 4 in ceiling:
            share = ceiling[4][0] / openvino_rate
            print(f"Triton alone c=4 / OpenVINO alone: {ceiling[4][0]:.2f} / {openvino_rate:.2f} = {share:.2f}, "
                  f"target >= {TARGET_TRITON_SHARE:.2f}: {_mark(share >= TARGET_TRITON_SHARE)}")
        for figures in int8:
            print(f"isnet_int8, OpenVINO alone the same way: {figures['images_per_s']:.2f} images/s "
                  f"({figures['images_per_s'] / openvino[-1]['images_per_s']:.2f}x isnet's run just before it), "
                  f"peak RSS {figures['peak_rss_mb']:.0f} MB (through the API: the models lines above)")
    print(f"Model alone (Triton, config.pbtxt's settings): ceiling {best:.2f} images/s (best of "
          + ", ".join(f"c={c} {r:.2f}" for c, (r, _) in sorted(ceiling.items()))
          + f"); single-request latency p50 {single_ms:.0f} ms")
    print(f"\n{'phase':<12}{'images/s':>9}{'share':>7}{'target':>9}{'p50 ms':>8}{'x model':>8}"
          f"{'CPU s/img':>10}{'peak RSS MB':>12}{'PNG MB':>8}{'other load':>11}")
    for p in phases:
        share = p.images_per_s / best
        target = TARGET_SHARE.get((p.size, p.concurrency))
        target_text = f">={target:.2f}" if target else ""
        if target:
            target_text += " ok" if share >= target else " NO"
        print(f"{p.size + ' c=' + str(p.concurrency):<12}{p.images_per_s:9.2f}{share:7.2f}{target_text:>9}"
              f"{p.p50_ms:8.0f}{p.p50_ms / single_ms:8.1f}{p.cpu_s / p.requests:10.2f}{p.peak_rss_mb:12.0f}"
              f"{p.png_bytes / 1e6:8.2f}{p.foreign_cpu:10.0%}")
    print("\nCPU seconds per image by process:")
    for p in phases:
        print(f"  {p.size} c={p.concurrency}: " + ", ".join(
            f"{role} {seconds / p.requests:.2f}" for role, seconds in sorted(p.cpu_by_role.items()) if seconds > 0.005))
    print("\nRSS by process at the summed peak, MB:")
    for p in phases:
        print(f"  {p.size} c={p.concurrency}: " + ", ".join(
            f"{role} {mb:.0f}" for role, mb in sorted(p.peak_rss_by_role_mb.items()) if mb >= 1))
    print("\nInference service stages, mean ms per image (its own timings; inference = round trip to Triton):")
    print(f"  {'phase':<12}" + "".join(f"{s:>12}" for s in STAGES))
    for p in phases:
        print(f"  {p.size + ' c=' + str(p.concurrency):<12}" + "".join(f"{p.stages_ms[s]:12.0f}" for s in STAGES))
    print("\nTargets:")
    for (size, concurrency), target in TARGET_SHARE.items():
        found = [p for p in phases if (p.size, p.concurrency) == (size, concurrency)]
        if found:
            share = found[0].images_per_s / best
            print(f"  {size} c={concurrency}: {share:.2f} of the ceiling, target >= {target:.2f}: {_mark(share >= target)}")
    latency = [p for p in phases if (p.size, p.concurrency) == ("12MP", 1)]
    if latency:
        ratio = latency[0].p50_ms / single_ms
        print(f"  12MP c=1 median latency: {ratio:.1f}x the model's, target <= {TARGET_LATENCY_X}x: "
              f"{_mark(ratio <= TARGET_LATENCY_X)}")
    rss = [p for p in phases if (p.size, p.concurrency) == ("12MP", 4)]
    if rss:
        # The target predates the second model: it is the stack serving the default model only. With other
        # models loaded, their stubs (idle in this phase) are left out of that figure and shown beside it.
        others = {role.removeprefix(STUB_ROLE).strip(): mb for role, mb in rss[0].peak_rss_by_role_mb.items()
                  if role.startswith(STUB_ROLE) and role != f"{STUB_ROLE} {MODEL}"}
        default_only = rss[0].peak_rss_mb - sum(others.values())
        print(f"  12MP c=4 summed peak RSS, every model loaded: {rss[0].peak_rss_mb:.0f} MB" + (
            " (" + ", ".join(f"{name}'s stub {mb:.0f} MB" for name, mb in sorted(others.items())) + ")"
            if others else " (only the default model is loaded)"))
        print(f"  12MP c=4 summed peak RSS, the default model ({MODEL}) only: {default_only:.0f} MB, target <= "
              f"{TARGET_RSS_MB:.0f} MB: {_mark(default_only <= TARGET_RSS_MB)}")
    if gateway:
        print(f"  gateway alone, GET /v1/images/{{id}} on one core: {gateway[0]:.0f} requests/s ({gateway[1]} "
              f"requests, {gateway[2]} not 200), target >= {TARGET_GATEWAY_RPS:.0f}: "
              f"{_mark(gateway[0] >= TARGET_GATEWAY_RPS)}")
    return {
        "machine": machine,
        "ceiling_images_per_s": best,
        "openvino_alone": openvino,
        "openvino_alone_int8": int8,
        "model_alone": {str(c): {"images_per_s": r, "p50_ms": ms} for c, (r, ms) in ceiling.items()},
        "phases": [{**p.__dict__, "images_per_s": p.images_per_s, "p50_ms": p.p50_ms,
                    "share_of_ceiling": p.images_per_s / best} for p in phases],
        "gateway_alone": {"requests_per_s": gateway[0], "requests": gateway[1], "not_200": gateway[2]}
        if gateway else None,
    }


def _machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs ({model}), "
            f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end")


def _measured(phase: Phase) -> rembg.Measured:
    """An HTTP phase's figures as bench.rembg compares them: the summed peak RSS without the stubs of models the
    phase did not use (idle, loaded by an earlier phase), as rembg's server holds only the one model."""
    idle = sum(mb for role, mb in phase.peak_rss_by_role_mb.items()
               if role.startswith(STUB_ROLE) and role != f"{STUB_ROLE} {phase.model}")
    return rembg.Measured(phase.model, phase.size, phase.concurrency, phase.requests, phase.elapsed_s,
                          phase.latencies_ms, phase.cpu_s, phase.peak_rss_mb - idle, phase.foreign_cpu)


async def _beside_rembg(
    stack: Stack, key: str, images: Sequence[BenchImage], concurrencies: Sequence[int], requests: int,
    sample_label: str,
) -> tuple[list[Phase] | None, bytes]:
    """What the comparison with rembg needs besides the HTTP phases: the INT8 model through the API at the
    targets' phases (None where it is not built), and our cut-out of rembg's sample image."""
    int8: list[Phase] | None = None
    if INT8_WEIGHTS.exists():
        int8 = []
        for image in images:
            for concurrency in concurrencies:
                if (image.label, concurrency) in rembg.TARGET_AT:
                    phase = await http_phase(stack, key, image, concurrency, requests, INT8_MODEL)
                    int8.append(phase)
                    print(f"  {INT8_MODEL} {image.label} c={concurrency}: {phase.images_per_s:.2f} images/s",
                          flush=True)
    sample = next(image for image in images if image.label == sample_label)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        return int8, await _cutout(session, stack, key, sample)


async def _run(
    args: argparse.Namespace, stack: Stack, images: list[BenchImage], theirs: rembg.RembgFigures | None
) -> dict[str, Any]:
    keys = await create_accounts(stack, 1 + args.gateway_accounts)
    openvino = []
    if args.openvino_requests > 0:
        print("OpenVINO alone:", flush=True)
        openvino.append(await asyncio.to_thread(openvino_alone, args.openvino_requests))
    print("model alone:", flush=True)
    ceiling = await model_alone(stack, args.model_concurrency, args.model_requests)
    if args.openvino_requests > 0:
        openvino.append(await asyncio.to_thread(openvino_alone, args.openvino_requests))
        if INT8_WEIGHTS.exists():
            # The INT8 model (`make int8`) the same way, right after isnet's second run.
            openvino.append({**await asyncio.to_thread(openvino_alone, args.openvino_requests, INT8_WEIGHTS),
                             "model": "isnet_int8"})
    phases = []
    for image in images:
        for concurrency in args.concurrency:
            phase = await http_phase(stack, keys[0], image, concurrency, args.requests)
            phases.append(phase)
            print(f"  {image.label} c={concurrency}: {phase.images_per_s:.2f} images/s", flush=True)
    beside = (await _beside_rembg(stack, keys[0], images, args.concurrency, args.requests, theirs.sample[0])
              if theirs else None)
    await model_speeds(stack, keys[0], images[0], min(args.requests, 4))
    gateway = None
    if args.gateway_seconds > 0 and (os.cpu_count() or 1) >= 2:
        small = make_images(args.source, [0.1])[0]
        gateway = await gateway_alone(stack, keys[1:], small, args.gateway_seconds, args.gateway_concurrency)
    figures = report(ceiling, phases, gateway, _machine(), openvino)
    if theirs and beside:
        int8, our_sample = beside
        figures["rembg"] = rembg.report(theirs, [_measured(p) for p in phases],
                                        [_measured(p) for p in int8] if int8 is not None else None,
                                        rembg.alpha_difference(our_sample, theirs.sample[1]))
    return figures


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=12, help="requests per phase (default 12)")
    parser.add_argument("--sizes", default="2,12", help="megapixels, comma-separated (default 2,12)")
    parser.add_argument("--concurrency", default="1,4", help="HTTP concurrencies (default 1,4)")
    parser.add_argument("--model-concurrency", default="1,2,4", help="concurrencies of the model-alone phase")
    parser.add_argument("--model-requests", type=int, default=12, help="requests per model-alone concurrency")
    parser.add_argument("--openvino-requests", type=int, default=12,
                        help="inferences of each OpenVINO-alone run (before and after the model-alone phase); 0 skips")
    parser.add_argument("--gateway-seconds", type=float, default=5.0, help="gateway-alone phase; 0 skips it")
    parser.add_argument("--gateway-concurrency", type=int, default=16)
    parser.add_argument("--gateway-accounts", type=int, default=8,
                        help="accounts the gateway phase spreads over (each allows 300 requests a minute)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="photo the images are made from")
    parser.add_argument("--models", default="",
                        help="the models the stack's Triton loads at start (default: tools.stack's, the default model)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for the stack, e.g. REMOVAI_INFERENCE_PNG_ENCODER=pillow (repeatable)")
    parser.add_argument("--rembg-requests", type=int, default=None,
                        help="requests per phase of rembg's server, measured first (bench/rembg.py; default: "
                             "--requests); 0 skips the comparison with rembg")
    parser.add_argument("--start-timeout-s", type=float, default=300.0)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    args.sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.model_concurrency = [int(c) for c in args.model_concurrency.split(",") if c.strip()]
    if args.rembg_requests is None:
        args.rembg_requests = args.requests
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    images = make_images(args.source, args.sizes)
    print("images: " + ", ".join(f"{i.label} {i.width}x{i.height} ({len(i.jpeg) // 1024} KiB)" for i in images),
          flush=True)
    with tempfile.TemporaryDirectory(prefix="removai-bench-stack-") as workdir:
        # rembg first, its server stopped before the stack starts: each has the machine to itself.
        theirs = (rembg.measure(images, args.concurrency, args.rembg_requests, Path(workdir), args.start_timeout_s)
                  if args.rembg_requests > 0 else None)
        with running_stack(Path(workdir), env, args.start_timeout_s, args.models) as stack:
            figures = asyncio.run(_run(args, stack, images, theirs))
    figures["env"] = env
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
