"""The model with nothing around it: OpenVINO alone runs the weights file the Triton model serves, on the
network's first output only (the mask the service reads), with as many inferences in flight as the compiled
model asks for. The ceiling Triton's own figure is held against (bench/stack.py runs this in a process of its
own, so that its memory and threads are gone before the stack is measured).

`python -m bench.openvino_alone` prints one line of figures and, with --json, writes them.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from common.bench_images import make_images

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = ROOT / "triton_models" / "isnet" / "1" / "model.onnx"
DEFAULT_SOURCE = ROOT / "tests" / "data" / "coffee.jpg"
MODEL_SIDE = 1024
# The "mean"/"std" parameters of triton_models/isnet/config.pbtxt.
MEAN = np.float32(128.0)
SCALE = np.float32(1.0 / 256.0)


def _precision() -> str:
    """As model.py's precision "auto": bf16 only on CPUs with AMX."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "f32"
    return "bf16" if "amx_bf16" in flags.split() else "f32"


def _model_input(source: Path) -> npt.NDArray[np.float32]:
    """The 2 MP bench image resized to the model's input and normalised, float32 [1, 3, 1024, 1024]."""
    with Image.open(io.BytesIO(make_images(source, [2])[0].jpeg)) as opened:
        image = np.asarray(opened.convert("RGB").resize((MODEL_SIDE, MODEL_SIDE), Image.Resampling.BILINEAR))
    return ((image.transpose(2, 0, 1)[np.newaxis].astype(np.float32) - MEAN) * SCALE).copy()


def measure(weights: Path, requests: int, hint: str, every_output: bool, in_flight: int | None,
            source: Path = DEFAULT_SOURCE) -> dict[str, Any]:
    """Images/s over `requests` inferences after one warm-up round, and this process's peak RSS."""
    import openvino as ov

    core = ov.Core()
    network = core.read_model(str(weights))
    if not every_output:
        network = ov.Model([network.output(0)], network.get_parameters(), "mask-only")
    precision = _precision()
    compiled = core.compile_model(network, "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint})
    slots = in_flight or int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, slots)
    batch = _model_input(source)
    for _ in range(slots):
        queue.start_async({0: batch})
    queue.wait_all()
    started = time.perf_counter()
    for _ in range(requests):
        queue.start_async({0: batch})
    queue.wait_all()
    elapsed = time.perf_counter() - started
    return {
        "weights": str(weights), "outputs": len(compiled.outputs), "precision": precision, "hint": hint,
        "streams": int(compiled.get_property("NUM_STREAMS")), "in_flight": slots, "requests": requests,
        "images_per_s": requests / elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.openvino_alone", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="an .onnx file or OpenVINO .xml")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--hint", choices=("THROUGHPUT", "LATENCY"), default="THROUGHPUT")
    parser.add_argument("--in-flight", type=int, help="inferences at once (default: OpenVINO's optimal number)")
    parser.add_argument("--every-output", action="store_true",
                        help="run the file as it is, all of its outputs (ISNet's has 12; the service reads one)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = measure(args.weights, args.requests, args.hint, args.every_output, args.in_flight)
    print(f"OpenVINO alone, {figures['weights']}: {figures['outputs']} output(s), {figures['precision']}, "
          f"{figures['hint']} ({figures['streams']} streams, {figures['in_flight']} in flight): "
          f"{figures['images_per_s']:.2f} images/s, peak RSS {figures['peak_rss_mb']:.0f} MB", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
