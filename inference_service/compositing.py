"""The result composed from the image and its mask: alpha at the output size, crop to the subject, mask output,
the subject over a colour or a background image; and the foreground box the crop and the reply use."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops

from inference_service import imaging
from inference_service.errors import UnprocessableImage, UnsupportedMediaType
from inference_service.imaging import DecodedImage, Mask
from inference_service.options import OutputType, RemovalOptions

# A pixel belongs to the foreground when its alpha is above this (of 255, about 6 %): low enough to keep soft
# edges such as hair inside the box, high enough that the model's faint haze over a background does not
# stretch the box to the whole image.
FOREGROUND_ALPHA_THRESHOLD = 16


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels: left and top of its first pixel, width and height."""

    left: int
    top: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.left + self.width

    @property
    def bottom(self) -> int:
        return self.top + self.height


@dataclass(frozen=True)
class Rendered:
    """The result before encoding and the foreground's box in its pixels (None: no foreground)."""

    image: Image.Image
    foreground: Box | None


def foreground_box(alpha: Image.Image) -> Box | None:
    """The bounding box of the pixels whose alpha is above FOREGROUND_ALPHA_THRESHOLD; None when there are none."""
    above = np.asarray(alpha) > FOREGROUND_ALPHA_THRESHOLD
    rows = np.flatnonzero(above.any(axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(above.any(axis=0))
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(columns[0]), int(columns[-1]) + 1
    return Box(left, top, right - left, bottom - top)


def crop_area(box: Box, options: RemovalOptions, width: int, height: int) -> Box:
    """The box grown by the requested margin on every side, clamped to the width x height image."""
    if options.crop_margin_percent:
        margin_x = round(box.width * options.crop_margin_percent / 100.0)
        margin_y = round(box.height * options.crop_margin_percent / 100.0)
    else:
        margin_x = margin_y = options.crop_margin_px
    left, top = max(0, box.left - margin_x), max(0, box.top - margin_y)
    right, bottom = min(width, box.right + margin_x), min(height, box.bottom + margin_y)
    return Box(left, top, right - left, bottom - top)


def _multiply(alpha: Image.Image, own_alpha: Image.Image | None) -> Image.Image:
    """A pixel the input already made transparent stays transparent (uint8 a x b / 255, in C)."""
    return alpha if own_alpha is None else ImageChops.multiply(alpha, own_alpha)


def _colour_and_alpha(
    image: DecodedImage, mask: Mask, options: RemovalOptions
) -> tuple[Image.Image, Image.Image]:
    """The RGB and the alpha of the result at its output size, cropped to the subject when asked."""
    width, height = image.size
    if not options.crop:
        out_width, out_height = options.output_size.fit(width, height)
        rgb, own_alpha = image.rgb, image.alpha
        if (out_width, out_height) != (width, height):
            rgb = rgb.resize((out_width, out_height), Image.Resampling.LANCZOS)
            own_alpha = own_alpha.resize((out_width, out_height), Image.Resampling.LANCZOS) if own_alpha else None
        return rgb, _multiply(imaging.alpha_from_mask(mask, out_width, out_height), own_alpha)
    # Cropping: the box is found at the image's own size, and output_size applies to the cropped area.
    alpha = _multiply(imaging.alpha_from_mask(mask, width, height), image.alpha)
    box = foreground_box(alpha)
    if box is None:
        raise UnprocessableImage(
            "crop: the image has no foreground (no pixel's alpha is above "
            f"{FOREGROUND_ALPHA_THRESHOLD} of 255), so there is nothing to crop to"
        )
    area = crop_area(box, options, width, height)
    rectangle = (area.left, area.top, area.right, area.bottom)
    rgb, alpha = image.rgb.crop(rectangle), alpha.crop(rectangle)
    out_width, out_height = options.output_size.fit(area.width, area.height)
    if (out_width, out_height) != (area.width, area.height):
        rgb = rgb.resize((out_width, out_height), Image.Resampling.LANCZOS)
        alpha = alpha.resize((out_width, out_height), Image.Resampling.LANCZOS)
    return rgb, alpha


def cover(background: DecodedImage, width: int, height: int) -> Image.Image:
    """The background scaled (aspect kept) to cover width x height and cut to it around its centre, opaque
    (a background's own transparency is flattened onto white)."""
    rgb = background.rgb
    if background.alpha is not None:
        rgb = Image.composite(rgb, Image.new("RGB", rgb.size, (255, 255, 255)), background.alpha)
    scale = max(width / rgb.width, height / rgb.height)
    scaled_width = max(width, math.ceil(rgb.width * scale))
    scaled_height = max(height, math.ceil(rgb.height * scale))
    if (scaled_width, scaled_height) != rgb.size:
        rgb = rgb.resize((scaled_width, scaled_height), Image.Resampling.LANCZOS)
    left, top = (scaled_width - width) // 2, (scaled_height - height) // 2
    return rgb.crop((left, top, left + width, top + height))


def decode_background(data: bytes | bytearray, max_pixels: int) -> DecodedImage:
    """The background image decoded like an input (same types and pixel limit); errors name it."""
    try:
        return imaging.decode(data, max_pixels)
    except (UnprocessableImage, UnsupportedMediaType) as error:
        raise type(error)(f"background image: {error}") from error


def render(
    image: DecodedImage, mask: Mask, options: RemovalOptions, background: DecodedImage | None = None
) -> Rendered:
    """The result the options ask for (cut-out or mask; cropped; over a colour or an image) and its foreground."""
    rgb, alpha = _colour_and_alpha(image, mask, options)
    foreground = foreground_box(alpha)
    if options.output_type is OutputType.MASK:
        return Rendered(alpha, foreground)
    if background is None and options.bg_color is None and options.output_format.has_alpha:
        # In place on the decoded (resized or cropped) pixels, which nothing uses after this: no full-size copy.
        rgb.putalpha(alpha)
        return Rendered(rgb, foreground)
    # uint8 compositing in place on the background: one full-size image, no float copies.
    if background is not None:
        backdrop = cover(background, *rgb.size)
    else:
        backdrop = Image.new("RGB", rgb.size, options.bg_color or (255, 255, 255))
    backdrop.paste(rgb, (0, 0), alpha)
    return Rendered(backdrop, foreground)

