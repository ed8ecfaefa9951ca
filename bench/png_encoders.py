"""PNG encoders for the RGBA cut-out, measured on the same pixels: seconds, bytes against Pillow level 6, and
whether Pillow decodes them to identical pixels. Prints a table; never a timed assertion."""

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

from bench.stack import make_images
from inference_service import imaging
from inference_service.options import PngEncoder

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT / "tests" / "data" / "coffee.jpg"
SIZE_TARGET = 1.25  # issue 10: at most 1.25x the bytes of Pillow's compress_level=6


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


def _encoder(encoder: PngEncoder, level: int) -> Callable[[Image.Image], bytes]:
    return lambda image: imaging.encode_png(image.copy(), encoder, level)


def _candidates() -> list[tuple[str, Callable[[Image.Image], bytes]]]:
    """The service's encoders at their levels (isal's are 0..3), then any other fast encoder installed."""
    found = [(f"pillow level {level}", _encoder(PngEncoder.PILLOW, level)) for level in range(1, 7)]
    found += [(f"isal level {level}", _encoder(PngEncoder.ISAL, level)) for level in range(1, 4)]
    try:  # py-fpng-nb, for the record (not a dependency): the fastest writer, but files over the size target
        from fpng import fpng_ext  # type: ignore[import-not-found,unused-ignore]

        found.append(("fpng", lambda image: bytes(fpng_ext.encode_ndarray(np.asarray(image)))))
    except ImportError:
        pass
    return found


def measure(image: Image.Image, repeats: int) -> list[tuple[str, float, int, bool]]:
    """(encoder, best seconds of `repeats`, bytes, identical pixels when Pillow decodes it) per encoder."""
    reference: npt.NDArray[np.uint8] = np.asarray(image)
    rows = []
    for name, encode in _candidates():
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.png_encoders", description=__doc__)
    parser.add_argument("--sizes", default="2,12", help="megapixels, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="runs per encoder; the fastest counts")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    args = parser.parse_args(argv)
    for mp in (float(s) for s in args.sizes.split(",")):
        image = cutout_like(args.source, mp)
        rows = measure(image, args.repeats)
        level6 = next(size for name, _, size, _ in rows if name == "pillow level 6")
        print(f"\n{mp:g} MP RGBA ({image.width}x{image.height}); size target <= {SIZE_TARGET}x Pillow level 6")
        print(f"{'encoder':<22}{'ms':>8}{'MB':>8}{'x level 6':>11}  identical  within target")
        for name, seconds, size, same in rows:
            ratio = size / level6
            print(f"{name:<22}{seconds * 1000:8.0f}{size / 1e6:8.2f}{ratio:11.3f}  {'yes' if same else 'NO':<9}  "
                  f"{'yes' if ratio <= SIZE_TARGET and same else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
