"""`make quality`: the cut-outs of every model Triton serves measured against ground truth, per option.

The ground truth is common/matting_truth.py's set (3 foregrounds with exact alpha and colour x 5 backgrounds,
3 of them plain saturated colours). Each composite goes through the service's own pipeline
(inference_service.pipeline: decode, the model in a real Triton on triton_models/, render, PNG encode) once per
model and option set; the PNG that comes back is decoded and measured (tools/matting_measures.py). Prints one
table: per model, option set and kind of background, the mean over its composites of SAD, MSE, gradient and
connectivity errors of alpha on the whole image and on the soft edge (true alpha 0.05..0.95), and the edge colour
error. Then, per model, each option set's edge colour error against the first's. Never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image

from common.matting_truth import Composite, truth_set
from inference_service.imaging import Pixels
from inference_service.options import RemovalOptions
from inference_service.pipeline import RemovalPipeline
from inference_service.triton import ModelInput, Segmentation, ServedModel, TritonSegmenter
from tools import matting_measures as measures
from tools.triton_launcher import TritonServer

_LOGGER = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "triton_models"
MAX_PIXELS = 50_000_000
PNG_LEVEL = 1
TIMEOUT_S = 600.0

# The option sets measured, by label: the first is the baseline the others are compared with.
OPTION_SETS: dict[str, RemovalOptions] = {
    "decontam=false": RemovalOptions(decontaminate=False),  # the photo's own colours
    "defaults": RemovalOptions(),  # decontaminate=true
}


@dataclass
class Scores:
    """One cut-out's measures (alpha: whole image, then the soft edge; colour: the soft edge)."""

    sad: float
    mse: float
    gradient: float
    connectivity: float
    edge_sad: float
    edge_mse: float
    edge_gradient: float
    edge_connectivity: float
    edge_colour: float


def score(cutout_png: bytes, truth: Composite) -> Scores:
    """The measures of a PNG cut-out (RGBA) against the composite's truth."""
    with Image.open(io.BytesIO(cutout_png)) as opened:
        rgba = np.asarray(opened.convert("RGBA"), dtype=np.float64)
    alpha, colour = rgba[..., 3] / 255.0, rgba[..., :3]
    edge = truth.soft_edge
    return Scores(
        sad=measures.sad(alpha, truth.alpha),
        mse=measures.mse(alpha, truth.alpha),
        gradient=measures.gradient_error(alpha, truth.alpha),
        connectivity=measures.connectivity_error(alpha, truth.alpha),
        edge_sad=measures.sad(alpha, truth.alpha, edge),
        edge_mse=measures.mse(alpha, truth.alpha, edge),
        edge_gradient=measures.gradient_error(alpha, truth.alpha, edge),
        edge_connectivity=measures.connectivity_error(alpha, truth.alpha, edge),
        edge_colour=measures.edge_colour_error(colour, truth.colour, truth.alpha, edge),
    )


class MaskCache:
    """The segmenter with each mask remembered by model and input pixels: the option sets differ after the
    model, so each composite is inferred once per model (the same call would give the same mask)."""

    def __init__(self, segmenter: TritonSegmenter) -> None:
        self._segmenter = segmenter
        self._masks: dict[tuple[str, str], Segmentation] = {}

    async def model_input(self, model: str, timeout_s: float = TIMEOUT_S) -> ModelInput:
        return await self._segmenter.model_input(model, timeout_s)

    async def served_models(self) -> list[ServedModel]:
        return await self._segmenter.served_models()

    async def segment(self, model: str, image: Pixels, timeout_s: float, request_id: str) -> Segmentation:
        key = (model, hashlib.sha256(image.tobytes()).hexdigest())
        if key not in self._masks:
            self._masks[key] = await self._segmenter.segment(model, image, timeout_s, request_id)
        return self._masks[key]


def _mean(rows: list[Scores]) -> Scores:
    return Scores(**{f.name: float(np.mean([getattr(r, f.name) for r in rows])) for f in fields(Scores)})


_COLUMNS = (
    ("SAD", "sad", 1.0), ("MSEx1e3", "mse", 1e3), ("Grad", "gradient", 1.0), ("Conn", "connectivity", 1.0),
    ("eSAD", "edge_sad", 1.0), ("eMSEx1e3", "edge_mse", 1e3), ("eGrad", "edge_gradient", 1.0),
    ("eConn", "edge_connectivity", 1.0), ("eColour", "edge_colour", 1.0),
)


def table(results: dict[tuple[str, str], dict[str, Scores]], truths: list[Composite]) -> str:
    """The printed table: a row per model, option set and background kind; ratios of edge colour error."""
    kinds = {"saturated": [t.name for t in truths if t.saturated], "photo": [t.name for t in truths if not t.saturated]}
    header = f"{'model':<14}{'options':<16}{'backgrounds':<12}" + "".join(f"{name:>10}" for name, _, _ in _COLUMNS)
    lines = [header]
    for (model, option_set), by_name in results.items():
        for kind, names in (*kinds.items(), ("all", [t.name for t in truths])):
            mean = _mean([by_name[n] for n in names])
            cells = "".join(f"{getattr(mean, attr) * scale:10.3f}" for _, attr, scale in _COLUMNS)
            lines.append(f"{model:<14}{option_set:<16}{kind:<12}{cells}")
    baseline = next(iter(OPTION_SETS))
    for model in dict.fromkeys(model for model, _ in results):
        for option_set in OPTION_SETS:
            if option_set == baseline or (model, option_set) not in results:
                continue
            for kind, names in kinds.items():
                ours = np.mean([results[model, option_set][n].edge_colour for n in names])
                base = np.mean([results[model, baseline][n].edge_colour for n in names])
                lines.append(f"{model}: edge colour error with {option_set} / {baseline}, {kind} backgrounds: "
                             f"{ours / base:.2f}x ({ours:.2f} against {base:.2f} levels)")
    return "\n".join(lines)


async def measure(triton_url: str, models: Sequence[str], truths: list[Composite]) -> dict[tuple[str, str], dict[str, Scores]]:
    """(model, option set) -> composite name -> its scores, every served model unless `models` names some."""
    segmenter = TritonSegmenter(triton_url)
    cache = MaskCache(segmenter)
    results: dict[tuple[str, str], dict[str, Scores]] = {}
    try:
        served = sorted(m.name for m in await segmenter.served_models())
        chosen = [m for m in served if not models or m in models]
        if not chosen:
            raise SystemExit(f"no model to measure: Triton serves {served}, asked for {list(models)}")
        with ThreadPoolExecutor(max_workers=2) as executor:
            pipeline = RemovalPipeline(cache, executor, default_model=chosen[0], max_pixels=MAX_PIXELS,
                                       png_level=PNG_LEVEL)
            loop = asyncio.get_running_loop()
            for model in chosen:
                started = time.monotonic()
                for option_set, options in OPTION_SETS.items():
                    scores = results.setdefault((model, option_set), {})
                    for truth in truths:
                        cutout = await pipeline.run(
                            truth.png(), replace(options, model=model), timeout_s=TIMEOUT_S,
                            request_id=f"quality-{truth.name}",
                        )
                        scores[truth.name] = await loop.run_in_executor(executor, score, cutout.data, truth)
                _LOGGER.info("%s measured in %.0f s", model, time.monotonic() - started)
    finally:
        await segmenter.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="", help="comma-separated model names (default: every model served)")
    parser.add_argument("--model-repository", type=Path, default=MODEL_REPOSITORY)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _LOGGER.setLevel(logging.INFO)
    # By default every model whose weights are there (isnet_int8's exist only once `make int8` has run).
    models = [m.strip() for m in args.models.split(",") if m.strip()] or sorted(
        config.parent.name for config in args.model_repository.glob("*/config.pbtxt")
        if any(path.suffix in (".onnx", ".xml") for path in (config.parent / "1").glob("model.*"))
    )
    truths = truth_set()
    _LOGGER.info("ground truth: %d composites of %dx%d", len(truths), truths[0].image.shape[1], truths[0].image.shape[0])
    with tempfile.TemporaryDirectory(prefix="removai-quality-") as workdir:
        triton = TritonServer(args.model_repository.resolve(), Path(workdir), models=tuple(models))
        try:
            triton.start()
            results = asyncio.run(measure(triton.grpc_url, models, truths))
        finally:
            triton.stop()
    print(table(results, truths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
