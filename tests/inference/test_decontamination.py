"""Colour decontamination of soft edges (inference_service/decontamination.py) on images made here: the old
background's colour leaves semi-transparent pixels, opaque pixels and alpha are untouched, odd shapes work."""

from __future__ import annotations

import tracemalloc

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageDraw, ImageFilter

from inference_service import decontamination

RED, GREEN = np.array([200.0, 30.0, 40.0]), np.array([20.0, 190.0, 50.0])


def _red_over_green(width: int = 160, height: int = 90) -> tuple[Image.Image, Image.Image, npt.NDArray[np.uint8]]:
    """A red subject on the left, a 30-pixel soft edge (alpha falling 1 -> 0), green wall on the right:
    I = alpha x red + (1 - alpha) x green, and the 8-bit alpha."""
    x = np.arange(width, dtype=np.float64)
    alpha = np.clip((100.0 - x) / 30.0, 0.0, 1.0)[np.newaxis, :].repeat(height, axis=0)
    image = alpha[..., None] * RED + (1 - alpha[..., None]) * GREEN
    alpha8 = np.rint(alpha * 255).astype(np.uint8)
    return Image.fromarray(np.rint(image).astype(np.uint8), "RGB"), Image.fromarray(alpha8, "L"), alpha8


def test_soft_edge_loses_the_old_background() -> None:
    """On the soft edge the colours move to the subject's red: the alpha-weighted error against red falls to
    under a fifth, and the green channel where alpha is about one half comes down by more than 60 levels."""
    rgb, alpha, alpha8 = _red_over_green()
    cleaned = np.asarray(decontamination.decontaminate(rgb, alpha), dtype=np.float64)
    before = np.asarray(rgb, dtype=np.float64)
    soft = (alpha8 >= decontamination.VISIBLE_FROM) & (alpha8 < decontamination.OPAQUE_FROM)
    weight = alpha8[soft] / 255.0
    error_before = float(np.mean(weight * np.abs(before[soft] - RED).mean(axis=-1)))
    error_after = float(np.mean(weight * np.abs(cleaned[soft] - RED).mean(axis=-1)))
    assert error_before > 20 and error_after < 0.2 * error_before, (error_before, error_after)
    half = np.abs(alpha8.astype(int) - 128) < 20
    assert cleaned[..., 1][half].mean() < before[..., 1][half].mean() - 60


def test_opaque_pixels_and_alpha_are_untouched() -> None:
    """Pixels at OPAQUE_FROM or above keep the photo's colour exactly; the inputs are not changed in place."""
    rgb, alpha, alpha8 = _red_over_green()
    original = np.asarray(rgb).copy()
    cleaned = np.asarray(decontamination.decontaminate(rgb, alpha))
    opaque = alpha8 >= decontamination.OPAQUE_FROM
    assert opaque.any() and np.array_equal(cleaned[opaque], original[opaque])
    assert np.array_equal(np.asarray(rgb), original) and np.array_equal(np.asarray(alpha), alpha8)


def test_no_soft_pixel_is_a_copy() -> None:
    """An alpha of only 0 and 255 leaves every colour as it was."""
    rgb, _, alpha8 = _red_over_green()
    hard = Image.fromarray(np.where(alpha8 >= 128, 255, 0).astype(np.uint8), "L")
    assert np.array_equal(np.asarray(decontamination.decontaminate(rgb, hard)), np.asarray(rgb))


@pytest.mark.parametrize(("width", "height", "value"), [(1, 1, 128), (3, 2, 60), (2, 257, 200), (97, 1, 10)])
def test_small_and_thin_images(width: int, height: int, value: int) -> None:
    """Tiny, one-row and one-column images with every pixel soft work and keep their size and mode."""
    rng = np.random.default_rng(width * 1000 + height)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    alpha = Image.new("L", (width, height), value)
    cleaned = decontamination.decontaminate(rgb, alpha)
    assert cleaned.mode == "RGB" and cleaned.size == (width, height)


def test_windows_scale_with_the_image() -> None:
    """The windows are the paper's 90 and 6 (odd) at 2 MP and grow with the linear size."""
    assert decontamination.windows(1732, 1155) == (91, 7)
    wide, narrow = decontamination.windows(4000, 3000)
    assert 200 <= wide <= 230 and 13 <= narrow <= 15 and wide % 2 == narrow % 2 == 1


def _blobs(width: int, height: int, seed: int) -> tuple[Image.Image, Image.Image]:
    """Random colours under an alpha of blurred ellipses, some opaque, some half or faintly transparent, with
    scattered odd pixels: soft edges, opaque insides, hard edges and lone soft pixels all over."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for fill in (255, 255, 128, 40, 255):
        x, y = int(rng.integers(-40, width)), int(rng.integers(-40, height))
        draw.ellipse((x, y, x + int(rng.integers(20, 200)), y + int(rng.integers(20, 200))), fill=fill)
    blurred = np.asarray(mask.filter(ImageFilter.GaussianBlur(3)))
    odd = rng.random((height, width)) < 0.005
    alpha = np.where(odd, rng.integers(0, 256, (height, width)), blurred).astype(np.uint8)
    return rgb, Image.fromarray(alpha, "L")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bands_and_in_place_give_the_same_pixels(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The image is worked a band of rows and a run of columns at a time: bands of a few rows give exactly the
    pixels of one band, and in place (the given image changed and returned) exactly those of a copy."""
    rgb, alpha = _blobs(310, 270, seed)
    whole = np.asarray(decontamination.decontaminate(rgb, alpha))
    assert not np.array_equal(whole, np.asarray(rgb))
    monkeypatch.setattr(decontamination, "_BAND_PIXELS", 2_000)
    assert np.array_equal(np.asarray(decontamination.decontaminate(rgb, alpha)), whole)
    target = rgb.copy()
    assert decontamination.decontaminate(target, alpha, in_place=True) is target
    assert np.array_equal(np.asarray(target), whole)


def test_no_full_size_copy() -> None:
    """At 6 MP with a soft-edged subject, numpy's peak allocation stays under one RGB copy of the image (the
    work goes a band at a time; the result is a copy Pillow holds, or the image itself in place)."""
    width, height = 3000, 2000
    rgb = Image.new("RGB", (width, height), (20, 190, 50))
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse((300, 200, 2700, 1800), fill=255)
    alpha = mask.filter(ImageFilter.GaussianBlur(6))
    tracemalloc.start()
    try:
        decontamination.decontaminate(rgb, alpha, in_place=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < width * height * 3, peak
