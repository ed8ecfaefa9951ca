"""`python -m tools.edge_crops`: before/after crops of a soft edge over a new background, for docs/quality.md.

Each source goes through the service's pipeline (a real Triton serving ISNet) twice, with decontaminate=false
and with the default (true); each cut-out is composited over a new plain background, and the same region of the
two is cut out, enlarged 3x (nearest neighbour, so pixels stay visible) and written side by side as one small
PNG: before on the left, after on the right. Sources: the ground-truth set's fur over studio green
(common/matting_truth.py) and the real photo tests/data/chelsea.jpg (a cat's fur on its own background).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from common.matting_truth import DATA, truth_set
from inference_service.options import RemovalOptions
from inference_service.pipeline import RemovalPipeline
from inference_service.triton import TritonSegmenter
from tools.triton_launcher import TritonServer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"
ZOOM = 3


@dataclass(frozen=True)
class Crop:
    """A source image, the region to show (left, top, right, bottom) and the new background colour."""

    name: str
    image: bytes
    region: tuple[int, int, int, int]
    background: tuple[int, int, int]


def crops() -> list[Crop]:
    fur = next(c for c in truth_set() if c.name == "fur/green")
    return [
        Crop("fur-green-on-white", fur.png(), (100, 180, 220, 280), (255, 255, 255)),
        Crop("chelsea-on-blue", (DATA / "chelsea.jpg").read_bytes(), (330, 110, 450, 210), (40, 70, 160)),
    ]


def side_by_side(cutouts: Sequence[bytes], crop: Crop) -> Image.Image:
    """Each RGBA cut-out over the crop's background, its region enlarged ZOOM x, left to right with a gap."""
    panels = []
    for data in cutouts:
        with Image.open(io.BytesIO(data)) as opened:
            rgba = opened.convert("RGBA")
        backdrop = Image.new("RGB", rgba.size, crop.background)
        backdrop.paste(rgba, (0, 0), rgba)
        part = backdrop.crop(crop.region)
        panels.append(part.resize((part.width * ZOOM, part.height * ZOOM), Image.Resampling.NEAREST))
    gap = 6
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    sheet = Image.new("RGB", (width, panels[0].height), (128, 128, 128))
    left = 0
    for panel in panels:
        sheet.paste(panel, (left, 0))
        left += panel.width + gap
    return sheet


async def render(triton_url: str, model: str) -> list[tuple[Crop, list[bytes]]]:
    segmenter = TritonSegmenter(triton_url)
    made = []
    try:
        with ThreadPoolExecutor(max_workers=2) as executor:
            pipeline = RemovalPipeline(segmenter, executor, default_model=model, max_pixels=50_000_000, png_level=1)
            for crop in crops():
                cutouts = []
                for options in (RemovalOptions(decontaminate=False), RemovalOptions()):
                    result = await pipeline.run(crop.image, options, timeout_s=600.0, request_id=f"crops-{crop.name}")
                    cutouts.append(result.data)
                made.append((crop, cutouts))
    finally:
        await segmenter.close()
    return made


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.edge_crops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="isnet")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="removai-crops-") as workdir:
        triton = TritonServer((ROOT / "triton_models").resolve(), Path(workdir), models=(args.model,))
        try:
            triton.start()
            made = asyncio.run(render(triton.grpc_url, args.model))
        finally:
            triton.stop()
    for crop, cutouts in made:
        path = args.out / f"edge-{crop.name}.png"
        side_by_side(cutouts, crop).save(path, optimize=True)
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: before | after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
