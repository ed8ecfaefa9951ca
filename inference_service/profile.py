"""`python -m inference_service.profile png|decontaminate`: the service's own diagnostics, which no client could
make. `png` times the service's PNG encoders (and any other fast writer installed) on one cut-out's pixels:
seconds, bytes against Pillow level 6, and whether Pillow decodes them to identical pixels. `decontaminate` times
the colour decontamination of soft edges (CPU seconds) at 2 and 12 MP against its budget. Prints tables; never
asserts."""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

from common import matting_truth
from common.bench_images import make_images
from inference_service import decontamination, imaging
from inference_service.options import PngEncoder

DEFAULT_SOURCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "coffee.jpg"
SIZE_TARGET = 1.25  # the fast encoder's files: at most 1.25x the bytes of Pillow's compress_level=6
DECONTAMINATION_BUDGET_S = 0.15  # CPU seconds per 2 MP image, and proportionately more for larger ones

Encode = Callable[[Image.Image], bytes]


def cutout_like(source: Path, megapixels: float) -> Image.Image:
    """The image bench.stack sends (the source photo at `megapixels` with seeded noise, through JPEG q90),
    RGBA, with a soft elliptical alpha like a segmentation mask's."""
    jpeg = make_images(source, [megapixels])[0].jpeg
    with Image.open(io.BytesIO(jpeg)) as opened:
        rgb = opened.convert("RGB")
    width, height = rgb.size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    inside = ((xx - width / 2) / (width * 0.35)) ** 2 + ((yy - height / 2) / (height * 0.4)) ** 2 <= 1.0
    alpha = Image.fromarray((inside * 255).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(4))
    rgb.putalpha(alpha)
    return rgb


def _encoder(encoder: PngEncoder, level: int) -> Encode:
    return lambda image: imaging.encode_png(image.copy(), encoder, level)


def png_candidates() -> list[tuple[str, Encode]]:
    """The service's encoders at their levels (isal's are 0..3), then any other fast encoder installed."""
    found = [(f"pillow level {level}", _encoder(PngEncoder.PILLOW, level)) for level in range(1, 7)]
    found += [(f"isal level {level}", _encoder(PngEncoder.ISAL, level)) for level in range(1, 4)]
    try:  # py-fpng-nb, for the record (not a dependency): the fastest writer, but files over the size target
        from fpng import fpng_ext  # type: ignore[import-not-found,unused-ignore]

        found.append(("fpng", lambda image: bytes(fpng_ext.encode_ndarray(np.asarray(image)))))
    except ImportError:
        pass
    return found


def measure_png(image: Image.Image, repeats: int) -> list[tuple[str, float, int, bool]]:
    """(encoder, best seconds of `repeats`, bytes, identical pixels when Pillow decodes it) per encoder."""
    reference: npt.NDArray[np.uint8] = np.asarray(image)
    rows = []
    for name, encode in png_candidates():
        best = math.inf
        data = b""
        for _ in range(repeats):
            started = time.perf_counter()
            data = encode(image)
            best = min(best, time.perf_counter() - started)
        with Image.open(io.BytesIO(data)) as decoded:
            same = decoded.mode == "RGBA" and np.array_equal(np.asarray(decoded), reference)
        try:  # libpng too, where imagecodecs is installed (not a dependency)
            import imagecodecs  # type: ignore[import-not-found,unused-ignore]

            same = same and np.array_equal(imagecodecs.png_decode(data), reference)
        except ImportError:
            pass
        rows.append((name, best, len(data), same))
    return rows


def png_table(megapixels: float, source: Path, repeats: int) -> str:
    """The table for one size: each encoder's milliseconds, megabytes, size against level 6 and verdicts."""
    image = cutout_like(source, megapixels)
    rows = measure_png(image, repeats)
    level6 = next(size for name, _, size, _ in rows if name == "pillow level 6")
    lines = [
        f"{megapixels:g} MP RGBA ({image.width}x{image.height}); size target <= {SIZE_TARGET}x Pillow level 6",
        f"{'encoder':<22}{'ms':>8}{'MB':>8}{'x level 6':>11}  identical  within target",
    ]
    for name, seconds, size, same in rows:
        ratio = size / level6
        lines.append(f"{name:<22}{seconds * 1000:8.0f}{size / 1e6:8.2f}{ratio:11.3f}  {'yes' if same else 'NO':<9}  "
                     f"{'yes' if ratio <= SIZE_TARGET and same else 'no'}")
    return "\n".join(lines)


def soft_cutout(foreground: str, megapixels: float) -> tuple[Image.Image, Image.Image]:
    """(RGB, alpha) of a ground-truth composite over saturated green (common/matting_truth.py) scaled to
    `megapixels`, with the alpha a perfect model would give through the pipeline: the truth at the model's
    1024 x 1024, 8-bit, resized bilinearly to the image (imaging.alpha_from_mask)."""
    made = next(c for c in matting_truth.truth_set() if c.foreground == foreground and c.background == "green")
    aspect = made.image.shape[1] / made.image.shape[0]
    width = round(math.sqrt(megapixels * 1_000_000 * aspect))
    height = round(width / aspect)
    rgb = Image.fromarray(made.image, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    truth = Image.fromarray(made.alpha.astype(np.float32), "F").resize((1024, 1024), Image.Resampling.BILINEAR)
    mask = np.clip(np.rint(np.asarray(truth) * 255.0), 0, 255).astype(np.uint8)
    return rgb, imaging.alpha_from_mask(mask, width, height)


def decontaminate_table(sizes: Sequence[float], repeats: int) -> str:
    """CPU seconds (best of `repeats`) of decontamination.decontaminate per composite and size, with the budget
    scaled to the size and the share of pixels it changes."""
    lines = [f"budget: {DECONTAMINATION_BUDGET_S} CPU-s per 2 MP, proportionate to pixels",
             f"{'composite':<14}{'MP':>6}{'soft %':>8}{'CPU ms':>9}{'budget ms':>11}{'x budget':>10}"]
    for foreground in ("fur", "hair", "motion+veil"):
        for megapixels in sizes:
            rgb, alpha = soft_cutout(foreground, megapixels)
            values = np.asarray(alpha)
            soft = float(np.mean((values >= decontamination.VISIBLE_FROM) & (values < decontamination.OPAQUE_FROM)))
            best = math.inf
            for _ in range(repeats):
                started = time.process_time()
                decontamination.decontaminate(rgb, alpha)
                best = min(best, time.process_time() - started)
            budget = DECONTAMINATION_BUDGET_S * rgb.width * rgb.height / 2_000_000
            lines.append(f"{foreground:<14}{rgb.width * rgb.height / 1e6:6.1f}{soft * 100:8.1f}{best * 1000:9.0f}"
                         f"{budget * 1000:11.0f}{best / budget:10.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference_service.profile", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    png = commands.add_parser("png", help="time the PNG encoders on a cut-out's pixels")
    png.add_argument("--sizes", default="2,12", help="megapixels, comma-separated (default: %(default)s)")
    png.add_argument("--repeats", type=int, default=3, help="runs per encoder; the fastest counts (default: 3)")
    png.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the photo the image is made from")
    decontaminate = commands.add_parser("decontaminate", help="time colour decontamination at 2 and 12 MP")
    decontaminate.add_argument("--sizes", default="2,12", help="megapixels, comma-separated (default: %(default)s)")
    decontaminate.add_argument("--repeats", type=int, default=3, help="runs per size; the fastest counts (default: 3)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.command == "decontaminate":
        sizes = [float(size) for size in args.sizes.split(",") if size.strip()]
        print(decontaminate_table(sizes, args.repeats))
        return 0
    for megapixels in (float(size) for size in args.sizes.split(",") if size.strip()):
        print(f"\n{png_table(megapixels, args.source, args.repeats)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
