"""Throughput of the gRPC service on real Triton against the bare single-process pipeline, on the same images.

The service runs as it is deployed, `python -m inference_service` in a process of its own (its settings: its
defaults and this environment's REMOVAI_INFERENCE_* variables); the bare pipeline is what a single-process
server would write with Pillow, numpy and ONNX Runtime (or OpenVINO) directly, none of the service's code."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import psutil
from PIL import Image, ImageOps

from common.bench_images import BenchImage, make_images
from contract.channel import CHANNEL_OPTIONS
from contract.client import remove_background
from removai.v1 import inference_pb2 as pb
from removai.v1 import inference_pb2_grpc as pb_grpc
from tools.stack.parts import inference_service
from tools.triton_launcher import TritonServer

_LOGGER = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "triton_models"
MODEL_PATH = MODEL_REPOSITORY / "isnet" / "1" / "model.onnx"
DEFAULT_SOURCE = ROOT / "tests" / "data" / "coffee.jpg"
MODEL_SIDE = 1024
TARGET_RATIO = 0.95
# The service's own defaults, read as the service reads them (REMOVAI_INFERENCE_*), without importing it;
# tests/test_bench_defaults.py checks that these copies still equal inference_service.settings' defaults.
SERVICE_MAX_PIXELS = 50_000_000
SERVICE_PNG_COMPRESS_LEVEL = 3
# Other processes' CPU use (in CPUs) above which the figures are flagged as disturbed.
_FOREIGN_LOAD_WARNING = 0.10
STAGES = ("decode", "preprocess", "inference", "postprocess", "encode")
# The "mean"/"std" parameters of triton_models/isnet/config.pbtxt, applied exactly as model.py applies them.
_MEAN = np.asarray([128.0, 128.0, 128.0], dtype=np.float32).reshape(1, 3, 1, 1)
_SCALE = (1.0 / np.asarray([256.0, 256.0, 256.0], dtype=np.float32)).reshape(1, 3, 1, 1)
# Triton's per-model counters (cumulative, microseconds), read before and after each timed service run.
_TRITON_COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)


@dataclass
class Run:
    """What one mode measured on one image size: wall time, per-request latency and stage timings."""

    mode: str
    size: str
    requests: int
    elapsed_s: float
    latencies_ms: list[float]
    # Mean milliseconds per stage, as the bare pipeline measured them or the service reported them.
    stages_ms: dict[str, float]
    cpu_s: float  # CPU seconds spent by this process (and Triton's processes, for the service)
    # CPU seconds that other processes on the machine used meanwhile: the figures are only comparable when ~0.
    foreign_cpu_s: float
    triton: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else math.nan

    def summary(self) -> dict[str, Any]:
        figures = asdict(self)
        figures.update(
            images_per_s=self.images_per_s,
            p50_ms=self.percentile_ms(50),
            p95_ms=self.percentile_ms(95),
            cpu_s_per_image=self.cpu_s / self.requests if self.requests else math.nan,
        )
        return figures


def combined(runs: Sequence[Run], mode: str) -> Run:
    """All sizes of one mode together: images over the summed wall time, latencies pooled."""
    requests = sum(r.requests for r in runs)
    stages = {
        stage: sum(r.stages_ms.get(stage, 0.0) * r.requests for r in runs) / requests
        for stage in runs[0].stages_ms
    } if requests else {}
    triton_keys = runs[0].triton.keys() if runs else ()
    return Run(
        mode=mode,
        size="overall",
        requests=requests,
        elapsed_s=sum(r.elapsed_s for r in runs),
        latencies_ms=[latency for r in runs for latency in r.latencies_ms],
        stages_ms=stages,
        cpu_s=sum(r.cpu_s for r in runs),
        foreign_cpu_s=sum(r.foreign_cpu_s for r in runs),
        triton={k: sum(r.triton[k] * r.requests for r in runs) / requests for k in triton_keys} if requests else {},
    )


def _process_cpu_s(session_id: int | None = None) -> float:
    """CPU seconds of this process, or of every live process in session_id (Triton and its Python stubs)."""
    if session_id is None:
        return time.process_time()
    total = 0.0
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session_id:
                times = process.cpu_times()
                total += times.user + times.system
        except (psutil.Error, OSError):
            continue  # gone meanwhile
    return total


def service_setting(name: str, default: int) -> int:
    """An integer setting of the inference service as it will read it: REMOVAI_INFERENCE_<NAME>, else its default."""
    return int(os.environ.get(f"REMOVAI_INFERENCE_{name.upper()}", default))


def _machine_busy_s() -> float:
    """CPU seconds all processes on the machine have spent: every CPU's time but idle and iowait (guest time is
    already counted in user time)."""
    times = psutil.cpu_times()
    return float(times.user + times.nice + times.system + times.irq + times.softirq + times.steal)


class BarePipeline:
    """What a single-process server would do, written with Pillow, numpy and one in-process ONNX Runtime (or
    OpenVINO) session directly: decode, resize to the model's input, run the network, resize the mask to the
    image, put it in as alpha, Pillow's PNG writer at png_level. None of the service's code."""

    def __init__(self, png_level: int, runtime: str = "onnxruntime") -> None:
        self._run_network: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]
        if runtime == "openvino":
            import openvino as ov

            # As model.py compiles it with the config's default "precision" of auto: bf16 only on CPUs with AMX.
            precision = "bf16" if "amx_bf16" in Path("/proc/cpuinfo").read_text().split() else "f32"
            compiled = ov.Core().compile_model(str(MODEL_PATH), "CPU", {"INFERENCE_PRECISION_HINT": precision})
            output = compiled.outputs[0]
            self._run_network = lambda batch: compiled(batch)[output]
        else:
            # Default session options, as model.py builds them when "intra_op_threads" is 0.
            session: Any = ort.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])
            names = ([session.get_outputs()[0].name], session.get_inputs()[0].name)
            self._run_network = lambda batch: session.run(names[0], {names[1]: batch})[0]
        self._png_level = png_level
        # model.py runs the network once on zeros before Triton reports ready; the same here, so both sessions
        # have had the same runs before timing starts (ONNX Runtime's first two runs are slow: its arena grows).
        self._mask(np.zeros((MODEL_SIDE, MODEL_SIDE, 3), dtype=np.uint8))

    def _mask(self, pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        batch = (pixels[np.newaxis].transpose(0, 3, 1, 2).astype(np.float32) - _MEAN) * _SCALE
        output = self._run_network(batch)
        # As model.py returns it: probability x 255, rounded.
        probability = np.clip(np.asarray(output, dtype=np.float32).reshape(MODEL_SIDE, MODEL_SIDE), 0.0, 1.0)
        mask: npt.NDArray[np.uint8] = np.rint(probability * 255.0).astype(np.uint8)
        return mask

    @staticmethod
    def _decode(data: bytes) -> Image.Image:
        with Image.open(io.BytesIO(data)) as opened:
            upright = ImageOps.exif_transpose(opened)  # a copy, loaded
        return upright if upright.mode == "RGB" else upright.convert("RGB")

    @staticmethod
    def _model_input(image: Image.Image) -> npt.NDArray[np.uint8]:
        return np.asarray(image.resize((MODEL_SIDE, MODEL_SIDE), Image.Resampling.BILINEAR), dtype=np.uint8)

    @staticmethod
    def _cutout(image: Image.Image, mask: npt.NDArray[np.uint8]) -> Image.Image:
        image.putalpha(Image.fromarray(mask, "L").resize(image.size, Image.Resampling.BILINEAR))
        return image

    def _encode(self, image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=self._png_level)
        return buffer.getvalue()

    def run(self, data: bytes) -> tuple[bytes, dict[str, float]]:
        """The PNG cut-out at the original size, and milliseconds per stage."""
        stages: dict[str, float] = {}

        def timed(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
            started = time.perf_counter()
            result = fn(*args)
            stages[stage] = (time.perf_counter() - started) * 1000.0
            return result

        image = timed("decode", self._decode, data)
        pixels = timed("preprocess", self._model_input, image)
        mask = timed("inference", self._mask, pixels)
        result = timed("postprocess", self._cutout, image, mask)
        encoded: bytes = timed("encode", self._encode, result)
        return encoded, stages


def measure_bare(
    images: Sequence[BenchImage], requests: int, png_level: int, runtime: str = "onnxruntime"
) -> list[Run]:
    """Each image `requests` times, one after another, after one warm-up run."""
    pipeline = BarePipeline(png_level, runtime)
    pipeline.run(images[0].jpeg)
    runs = []
    for image in images:
        latencies: list[float] = []
        stage_sums = dict.fromkeys(STAGES, 0.0)
        cpu_before = _process_cpu_s()
        busy_before = _machine_busy_s()
        started = time.perf_counter()
        for _ in range(requests):
            request_started = time.perf_counter()
            encoded, stages = pipeline.run(image.jpeg)
            latencies.append((time.perf_counter() - request_started) * 1000.0)
            for stage, ms in stages.items():
                stage_sums[stage] += ms
            if not encoded.startswith(b"\x89PNG"):
                raise RuntimeError("the bare pipeline did not produce a PNG")
        elapsed = time.perf_counter() - started
        cpu = _process_cpu_s() - cpu_before
        runs.append(
            Run(
                "bare pipeline", image.label, requests, elapsed, latencies,
                {stage: total / requests for stage, total in stage_sums.items()},
                cpu, max(0.0, _machine_busy_s() - busy_before - cpu),
            )
        )
        _LOGGER.info("bare pipeline %s: %.2f images/s", image.label, runs[-1].images_per_s)
    return runs


def read_triton_counters(triton: TritonServer, model: str = "isnet") -> dict[str, float]:
    """The cumulative per-model counters from Triton's Prometheus endpoint on 127.0.0.1."""
    with urllib.request.urlopen(triton.metrics_url, timeout=5) as response:
        text = response.read().decode()
    counters = dict.fromkeys(_TRITON_COUNTERS, 0.0)
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in counters and f'model="{model}"' in rest:
            counters[name] += float(rest.rsplit(" ", 1)[1])
    return counters


def triton_per_request(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Milliseconds per request that Triton spent in each phase, and requests per model execution."""
    delta = {name: after[name] - before[name] for name in before}
    served = delta["nv_inference_request_success"] or math.nan
    executions = delta["nv_inference_exec_count"] or math.nan
    return {
        "request_ms": delta["nv_inference_request_duration_us"] / served / 1000.0,
        "queue_ms": delta["nv_inference_queue_duration_us"] / served / 1000.0,
        "compute_input_ms": delta["nv_inference_compute_input_duration_us"] / served / 1000.0,
        "compute_infer_ms": delta["nv_inference_compute_infer_duration_us"] / served / 1000.0,
        "compute_output_ms": delta["nv_inference_compute_output_duration_us"] / served / 1000.0,
        "batch_size": served / executions,
    }


def _service_cpu_s(triton: TritonServer, service_pid: int) -> float:
    """CPU seconds of this process (the gRPC client), the inference service's session and Triton's."""
    return _process_cpu_s() + _process_cpu_s(service_pid) + _process_cpu_s(triton.pid)


async def _service_run(
    stub: pb_grpc.BackgroundRemovalAsyncStub,
    triton: TritonServer,
    service_pid: int,
    image: BenchImage,
    requests: int,
    concurrency: int,
    timeout_s: float,
) -> Run:
    """`requests` calls drawn from one queue by `concurrency` tasks, each sending its next call when done."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)
    latencies: list[float] = []
    stage_sums = dict.fromkeys(STAGES, 0.0)
    options = pb.RemovalOptions(output_format=pb.OUTPUT_FORMAT_PNG, output_size=pb.OUTPUT_SIZE_ORIGINAL)

    async def caller() -> None:
        while True:
            try:
                index = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            result = await remove_background(
                stub, image.jpeg, options, timeout_s=timeout_s, request_id=f"bench-{image.label}-{index}"
            )
            latencies.append((time.perf_counter() - started) * 1000.0)
            if (result.metadata.width, result.metadata.height) != (image.width, image.height) or not (
                result.data.startswith(b"\x89PNG")
            ):
                raise RuntimeError(f"unexpected result for {image.label}: {result.metadata}")
            timings = result.metadata.timings
            for stage in STAGES:
                stage_sums[stage] += float(getattr(timings, f"{stage}_ms"))

    counters_before = read_triton_counters(triton)
    cpu_before = _service_cpu_s(triton, service_pid)
    busy_before = _machine_busy_s()
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = _service_cpu_s(triton, service_pid) - cpu_before
    return Run(
        f"service c={concurrency}", image.label, requests, elapsed, latencies,
        {stage: total / requests for stage, total in stage_sums.items()}, cpu,
        max(0.0, _machine_busy_s() - busy_before - cpu),
        triton_per_request(counters_before, read_triton_counters(triton)),
    )


async def measure_service(
    triton: TritonServer,
    images: Sequence[BenchImage],
    requests: int,
    concurrencies: Sequence[int],
    timeout_s: float,
    log_path: Path,
) -> dict[int, list[Run]]:
    """`python -m inference_service` on a free port, called over gRPC on 127.0.0.1, after one warm-up call."""
    async with inference_service(triton.grpc_url, log_path) as service:
        assert service.pid is not None  # started
        async with grpc.aio.insecure_channel(service.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.BackgroundRemovalStub(channel)
            await remove_background(stub, images[0].jpeg, pb.RemovalOptions(), timeout_s=timeout_s)
            runs: dict[int, list[Run]] = {}
            for concurrency in concurrencies:
                runs[concurrency] = []
                for image in images:
                    run = await _service_run(stub, triton, service.pid, image, requests, concurrency, timeout_s)
                    runs[concurrency].append(run)
                    _LOGGER.info("service c=%d %s: %.2f images/s", concurrency, image.label, run.images_per_s)
            return runs


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = [_row(header, widths), "  ".join("-" * w for w in widths)]
    lines.extend(_row(row, widths) for row in rows)
    return "\n".join(lines)


def report(bare: list[Run], service: dict[int, list[Run]], images: Sequence[BenchImage]) -> dict[str, Any]:
    """Prints the throughput, ratio and stage tables; returns the same figures for --json."""
    labels = [image.label for image in images] + ["overall"]
    by_mode: dict[str, list[Run]] = {"bare pipeline": bare + [combined(bare, "bare pipeline")]}
    for concurrency, runs in service.items():
        mode = f"service c={concurrency}"
        by_mode[mode] = runs + [combined(runs, mode)]

    rows = []
    for label in labels:
        for runs in by_mode.values():
            run = next(r for r in runs if r.size == label)
            rows.append([
                label, run.mode, str(run.requests), f"{run.images_per_s:.3f}", f"{run.percentile_ms(50):.0f}",
                f"{run.percentile_ms(95):.0f}", f"{run.cpu_s / run.requests:.2f}",
                f"{100.0 * run.foreign_cpu_s / run.elapsed_s:.0f}%",
            ])
    print("\nThroughput (images/s) and client-side latency")
    print(_table(["size", "mode", "n", "images/s", "p50 ms", "p95 ms", "CPU s/image", "other load"], rows))
    busiest = max((r for runs in by_mode.values() for r in runs), key=lambda r: r.foreign_cpu_s / r.elapsed_s)
    if busiest.foreign_cpu_s / busiest.elapsed_s > _FOREIGN_LOAD_WARNING:
        print(f"WARNING: other processes used {busiest.foreign_cpu_s / busiest.elapsed_s:.0%} of a CPU during "
              f"{busiest.mode} {busiest.size}; the modes did not share the machine equally, rerun when it is idle")

    ratios: dict[str, dict[str, float]] = {}
    ratio_rows = []
    bare_by_size = {r.size: r for r in by_mode["bare pipeline"]}
    for label in labels:
        ratios[label] = {}
        cells = [label, "service/bare"]
        for concurrency in service:
            run = next(r for r in by_mode[f"service c={concurrency}"] if r.size == label)
            ratio = run.images_per_s / bare_by_size[label].images_per_s
            ratios[label][f"c={concurrency}"] = ratio
            mark = "" if ratio >= TARGET_RATIO else " (below)"
            cells.append(f"{ratio:.3f}x{mark}")
        ratio_rows.append(cells)
    print(f"\nService throughput / bare-pipeline throughput (target >= {TARGET_RATIO:.2f}x)")
    print(_table(["size", "ratio", *(f"c={c}" for c in service)], ratio_rows))

    stage_rows = []
    for label in labels:
        for runs in by_mode.values():
            run = next(r for r in runs if r.size == label)
            stage_rows.append([label, run.mode, *(f"{run.stages_ms[s]:.0f}" for s in STAGES),
                               f"{sum(run.stages_ms.values()):.0f}", f"{float(np.mean(run.latencies_ms)):.0f}"])
    print("\nMean ms per stage (service: as the service reports them; inference = round trip to Triton)")
    print(_table(["size", "mode", *STAGES, "sum", "client"], stage_rows))

    triton_rows = []
    for label in labels:
        for mode, runs in by_mode.items():
            if mode == "bare pipeline":
                continue
            t = next(r for r in runs if r.size == label).triton
            triton_rows.append([label, mode, f"{t['batch_size']:.2f}", f"{t['queue_ms']:.0f}",
                                f"{t['compute_input_ms']:.0f}", f"{t['compute_infer_ms']:.0f}",
                                f"{t['compute_output_ms']:.0f}", f"{t['request_ms']:.0f}"])
    print("\nInside Triton, mean ms per request (compute_infer = model.py: normalise + ONNX Runtime + clip)")
    print(_table(["size", "mode", "batch", "queue", "input", "infer", "output", "request"], triton_rows))
    print(f"\nbare-pipeline ONNX Runtime (with normalise): {by_mode['bare pipeline'][-1].stages_ms['inference']:.0f} ms")
    return {
        "runs": {mode: [r.summary() for r in runs] for mode, runs in by_mode.items()},
        "ratios": ratios,
        "target_ratio": TARGET_RATIO,
        "cpu_count": os.cpu_count(),
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--requests", type=int, default=8, help="requests per image size per mode (default 8)")
    parser.add_argument("--sizes", default="0.5,2,12", help="image sizes in megapixels, comma-separated")
    parser.add_argument("--concurrency", default="1,4", help="service concurrencies, comma-separated")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="photo the test images are made from")
    parser.add_argument(
        "--model-repository", type=Path, default=MODEL_REPOSITORY,
        help="Triton model repository, to compare a config.pbtxt variant (the bare pipeline always uses "
        "triton_models/isnet/1/model.onnx)",
    )
    parser.add_argument("--timeout-s", type=float, default=300.0, help="deadline of each service call")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--png-level", type=int, choices=range(10), metavar="0..9",
        default=service_setting("png_compress_level", SERVICE_PNG_COMPRESS_LEVEL),
        help="Pillow's compress_level in the bare pipeline (default: the service's png_compress_level, "
        "REMOVAI_INFERENCE_PNG_COMPRESS_LEVEL or %(default)s); the service encodes with its own png_encoder",
    )
    parser.add_argument(
        "--bare-runtime", choices=("onnxruntime", "openvino"), default="onnxruntime",
        help="runtime of the bare pipeline: onnxruntime (the baseline, default) or openvino (like for like "
        "with the model's default config: bf16 on CPUs with AMX, else f32)",
    )
    args = parser.parse_args(argv)
    args.sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.requests < 1 or not args.sizes or not args.concurrency or min(args.concurrency) < 1:
        parser.error("--requests, --sizes and --concurrency need positive values")
    if max(args.sizes) * 1_000_000 > service_setting("max_pixels", SERVICE_MAX_PIXELS):
        parser.error("a size is above the service's max_pixels")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _LOGGER.setLevel(logging.INFO)
    if not MODEL_PATH.exists():
        _LOGGER.error("%s is missing: run `make weights`", MODEL_PATH)
        return 1
    # Without noise, as this bench always sent them, so its figures stay comparable with earlier runs.
    images = make_images(args.source, args.sizes, noise_sigma=0.0)
    print(f"{os.cpu_count()} CPUs; {args.requests} requests per size per mode; images: "
          + ", ".join(f"{i.label} {i.width}x{i.height} ({len(i.jpeg) // 1024} KiB)" for i in images))
    encoder = os.environ.get("REMOVAI_INFERENCE_PNG_ENCODER", "its default")
    print(f"PNG: bare pipeline Pillow compress_level {args.png_level}; service png_encoder {encoder}")

    # The two paths share the machine, so they run one after the other: the bare pipeline first, with its
    # ONNX Runtime session gone before Triton starts, then the service.
    bare = measure_bare(images, args.requests, args.png_level, args.bare_runtime)
    with tempfile.TemporaryDirectory(prefix="removai-bench-") as workdir:
        triton = TritonServer(args.model_repository.resolve(), Path(workdir))
        try:
            triton.start()
            service = asyncio.run(measure_service(
                triton, images, args.requests, args.concurrency, args.timeout_s, Path(workdir) / "inference.log"
            ))
        finally:
            triton.stop()

    figures = report(bare, service, images)
    figures["images"] = [{"size": i.label, "width": i.width, "height": i.height, "bytes": len(i.jpeg)} for i in images]
    figures["requests"] = args.requests
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, allow_nan=True))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
