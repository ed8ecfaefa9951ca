"""Benchmark inputs: a photo resized to given sizes with seeded sensor-like noise, as JPEG bytes that are the
same on every run. Here because both sides measure with them (bench/ as a client, the inference service's own
`python -m inference_service.profile`) and neither may import the other."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class BenchImage:
    label: str
    jpeg: bytes
    width: int
    height: int


def make_images(source: Path, megapixels: Sequence[float], noise_sigma: float = 2.0) -> list[BenchImage]:
    """The source photo resized to each size, with seeded sensor-like noise (`noise_sigma`; 0 for none), JPEG
    q90: the same bytes every run."""
    with Image.open(source) as opened:
        rgb = opened.convert("RGB")
    aspect = rgb.width / rgb.height
    images = []
    for mp in megapixels:
        width = round(math.sqrt(mp * 1_000_000 * aspect))
        height = round(width / aspect)
        resized = rgb.resize((width, height), Image.Resampling.BICUBIC)
        if noise_sigma:
            pixels = np.asarray(resized, dtype=np.int16)
            noise = np.random.default_rng(int(mp * 1000)).normal(0.0, noise_sigma, pixels.shape).astype(np.int16)
            resized = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "RGB")
        buffer = io.BytesIO()
        resized.save(buffer, "JPEG", quality=90)
        images.append(BenchImage(f"{mp:g}MP", buffer.getvalue(), width, height))
    return images
