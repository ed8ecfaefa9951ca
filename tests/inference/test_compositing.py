"""Unit tests of compositing.render and its steps on small synthetic images: the alpha at the output size (the
input's own transparency kept), colour and image backgrounds, mask output, the foreground box and the crop."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from contract.options import OutputFormat, OutputSize, OutputType
from inference_service import compositing, imaging
from inference_service.compositing import FOREGROUND_ALPHA_THRESHOLD, Box
from inference_service.errors import UnprocessableImage, UnsupportedMediaType
from inference_service.imaging import DecodedImage, Mask
from inference_service.options import RemovalOptions


def _gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[np.newaxis, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, np.newaxis].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1), "RGB")


def _decoded(image: Image.Image) -> DecodedImage:
    """The image as the pipeline holds it, through the real decoder (PNG keeps its alpha)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return imaging.decode(buffer.getvalue(), max_pixels=10_000_000)


def _mask_with_square(width: int, height: int, box: tuple[int, int, int, int]) -> Mask:
    """A mask at the image's own size, opaque inside box = (left, top, right, bottom), empty elsewhere."""
    mask = np.zeros((height, width), np.uint8)
    left, top, right, bottom = box
    mask[top:bottom, left:right] = 255
    return mask


def test_cutout_keeps_the_inputs_own_transparency() -> None:
    """A PNG cut-out's alpha is the mask times the input's own alpha: pixels the input already made
    transparent stay transparent whatever the mask says; the colour is the input's."""
    rgba = _gradient().convert("RGBA")
    own = np.full((48, 64), 255, np.uint8)
    own[:, :32] = 0
    rgba.putalpha(Image.fromarray(own, "L"))
    rendered = compositing.render(_decoded(rgba), np.full((16, 16), 255, np.uint8), RemovalOptions())
    assert rendered.image.mode == "RGBA" and rendered.image.size == (64, 48)
    alpha = np.asarray(rendered.image.getchannel("A"))
    assert alpha[:, :32].max() == 0
    assert alpha[:, 33:].min() == 255
    assert np.array_equal(np.asarray(rendered.image.convert("RGB"))[:, 33:], np.asarray(_gradient())[:, 33:])
    assert rendered.foreground == Box(32, 0, 32, 48)


def test_alpha_is_the_mask_resized_to_the_output_size() -> None:
    """The model's mask (any size) becomes the alpha at the output size; output_size shrinks the result,
    keeping its aspect ratio, and the foreground box is in the result's pixels."""
    mask = _mask_with_square(16, 16, (0, 0, 8, 16))  # the left half
    rendered = compositing.render(
        _decoded(_gradient(1600, 800)), mask, RemovalOptions(output_size=OutputSize.SMALL)
    )
    width, height = OutputSize.SMALL.fit(1600, 800)
    assert rendered.image.size == (width, height) and width < 1600
    alpha = np.asarray(rendered.image.getchannel("A"))
    # Bilinear: the edge is soft over about one mask pixel (width / 16) on each side of the middle.
    assert alpha[:, : width // 2 - width // 16].min() == 255
    assert alpha[:, width // 2 + width // 16 :].max() == 0
    assert rendered.foreground is not None
    assert (rendered.foreground.left, rendered.foreground.top, rendered.foreground.height) == (0, 0, height)


def test_a_format_without_alpha_or_a_colour_gets_a_solid_background() -> None:
    """JPG has no alpha: the cut-out is composed over white unless bg_color says otherwise; a colour is used
    with a format that has alpha too; the subject's own pixels are kept where the mask is opaque."""
    decoded = _decoded(_gradient())
    mask = _mask_with_square(64, 48, (40, 0, 64, 48))
    white = compositing.render(decoded, mask, RemovalOptions(output_format=OutputFormat.JPG)).image
    red = compositing.render(decoded, mask, RemovalOptions(bg_color=(255, 0, 0))).image
    assert white.mode == "RGB" and white.getpixel((5, 5)) == (255, 255, 255)
    assert red.mode == "RGB" and red.getpixel((5, 5)) == (255, 0, 0)
    assert red.getpixel((50, 20)) == _gradient().getpixel((50, 20))


def test_mask_output_is_the_alpha_alone() -> None:
    """output_type=mask answers the single-channel alpha matte, whatever the format or colour asked."""
    mask = _mask_with_square(64, 48, (10, 5, 30, 25))
    rendered = compositing.render(
        _decoded(_gradient()), mask, RemovalOptions(output_type=OutputType.MASK, bg_color=(0, 0, 255))
    )
    assert rendered.image.mode == "L" and rendered.image.size == (64, 48)
    assert np.array_equal(np.asarray(rendered.image), mask)
    assert rendered.foreground == Box(10, 5, 20, 20)


def test_a_background_image_covers_the_result_around_its_centre() -> None:
    """A background image is scaled (aspect kept) to cover the result and cut around its centre; its own
    transparency is flattened onto white; the subject is pasted over it."""
    left_red_right_blue = Image.new("RGB", (200, 50), (255, 0, 0))
    left_red_right_blue.paste((0, 0, 255), (100, 0, 200, 50))
    background = _decoded(left_red_right_blue)
    covered = compositing.cover(background, 20, 20)
    assert covered.size == (20, 20)
    assert covered.getpixel((2, 10)) == (255, 0, 0) and covered.getpixel((17, 10)) == (0, 0, 255)

    see_through = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert compositing.cover(_decoded(see_through), 10, 10).getpixel((5, 5)) == (255, 255, 255)

    mask = _mask_with_square(64, 48, (0, 0, 32, 48))
    result = compositing.render(_decoded(_gradient()), mask, RemovalOptions(), background).image
    assert result.mode == "RGB" and result.size == (64, 48)
    assert result.getpixel((10, 10)) == _gradient().getpixel((10, 10))
    assert result.getpixel((60, 10)) == compositing.cover(background, 64, 48).getpixel((60, 10))


def test_the_foreground_box_counts_pixels_above_the_threshold() -> None:
    """A pixel is foreground when its alpha is above FOREGROUND_ALPHA_THRESHOLD (not at it); no such pixel,
    no box."""
    alpha = np.zeros((10, 20), np.uint8)
    alpha[2, 3] = FOREGROUND_ALPHA_THRESHOLD
    assert compositing.foreground_box(Image.fromarray(alpha, "L")) is None
    alpha[4:6, 7:12] = FOREGROUND_ALPHA_THRESHOLD + 1
    assert compositing.foreground_box(Image.fromarray(alpha, "L")) == Box(7, 4, 5, 2)


def test_crop_keeps_the_subject_and_its_margin_within_the_image() -> None:
    """crop cuts the result to the foreground box grown by the margin (pixels, or a percentage of the box's
    sides), clamped to the image; the box of the cropped result is then in its own pixels."""
    box = Box(20, 10, 10, 20)
    assert compositing.crop_area(box, RemovalOptions(crop=True, crop_margin_px=5), 64, 48) == Box(15, 5, 20, 30)
    assert compositing.crop_area(box, RemovalOptions(crop=True, crop_margin_percent=50.0), 64, 48) == Box(
        15, 0, 20, 40
    )
    assert compositing.crop_area(box, RemovalOptions(crop=True, crop_margin_px=100), 64, 48) == Box(0, 0, 64, 48)

    mask = _mask_with_square(64, 48, (20, 10, 30, 30))
    rendered = compositing.render(_decoded(_gradient()), mask, RemovalOptions(crop=True, crop_margin_px=2))
    assert rendered.image.size == (14, 24)
    assert rendered.foreground == Box(2, 2, 10, 20)
    assert rendered.image.convert("RGB").getpixel((7, 12)) == _gradient().getpixel((25, 20))


def test_crop_without_a_foreground_is_unprocessable() -> None:
    """Nothing above the threshold: there is nothing to crop to, and the error says so."""
    with pytest.raises(UnprocessableImage, match="crop: the image has no foreground"):
        compositing.render(_decoded(_gradient()), np.zeros((16, 16), np.uint8), RemovalOptions(crop=True))


def test_a_background_image_that_does_not_decode_is_named_in_the_error() -> None:
    """The background is decoded like an input; its errors say they are about the background image."""
    with pytest.raises(UnsupportedMediaType, match="^background image: "):
        compositing.decode_background(b"GIF89a not accepted", max_pixels=1000)
    with pytest.raises(UnprocessableImage, match="^background image: "):
        compositing.decode_background(b"\x89PNG\r\n\x1a\n truncated", max_pixels=1000)
