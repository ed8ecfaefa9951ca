"""The result composed from the image and its mask: alpha at the output size, crop to the subject, mask output,
the subject over a colour or a background image; and the foreground box the crop and the reply use."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from inference_service import decontamination, imaging
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
    """The box grown by the requested margin on each side, clamped to the width x height image."""
    if options.crop_margins is not None:
        margins = options.crop_margins
        above, right_of = round(margins.top.resolve(box.height)), round(margins.right.resolve(box.width))
        below, left_of = round(margins.bottom.resolve(box.height)), round(margins.left.resolve(box.width))
    elif options.crop_margin_percent:
        left_of = right_of = round(box.width * options.crop_margin_percent / 100.0)
        above = below = round(box.height * options.crop_margin_percent / 100.0)
    else:
        left_of = right_of = above = below = options.crop_margin_px
    left, top = max(0, box.left - left_of), max(0, box.top - above)
    right, bottom = min(width, box.right + right_of), min(height, box.bottom + below)
    return Box(left, top, right - left, bottom - top)


def keep_region(alpha: Image.Image, options: RemovalOptions) -> Image.Image:
    """The alpha with every pixel outside options.roi made transparent (roi in the alpha's own pixels)."""
    if options.roi is None:
        return alpha
    left, top, right, bottom = options.roi.box(*alpha.size)
    kept = Image.new("L", alpha.size, 0)
    kept.paste(alpha.crop((left, top, right, bottom)), (left, top))
    return kept


def place_subject(
    rgb: Image.Image, alpha: Image.Image, options: RemovalOptions
) -> tuple[Image.Image, Image.Image]:
    """The subject's box scaled to options.scale_percent of the canvas and moved to options.position (centred
    when only scale is given); the canvas keeps its size. Without foreground nothing moves."""
    box = foreground_box(alpha)
    if box is None:
        return rgb, alpha
    width, height = alpha.size
    rectangle = (box.left, box.top, box.right, box.bottom)
    subject_rgb, subject_alpha = rgb.crop(rectangle), alpha.crop(rectangle)
    new_width, new_height = box.width, box.height
    if options.scale_percent:
        factor = options.scale_percent / 100.0 * min(width / box.width, height / box.height)
        new_width = min(width, max(1, round(box.width * factor)))
        new_height = min(height, max(1, round(box.height * factor)))
        if (new_width, new_height) != (box.width, box.height):
            subject_rgb = subject_rgb.resize((new_width, new_height), Image.Resampling.LANCZOS)
            subject_alpha = subject_alpha.resize((new_width, new_height), Image.Resampling.LANCZOS)
    horizontal, vertical = options.position if options.position is not None else (50.0, 50.0)
    left = round((width - new_width) * horizontal / 100.0)
    top = round((height - new_height) * vertical / 100.0)
    placed_alpha = Image.new("L", (width, height), 0)
    placed_alpha.paste(subject_alpha, (left, top))
    placed_rgb = rgb.copy()  # outside the subject the colours are the image's own, under alpha 0
    placed_rgb.paste(subject_rgb, (left, top))
    return placed_rgb, placed_alpha


# The shadow, as fractions of the subject's box height: how far down it falls and how soft its edge is.
SHADOW_OFFSET = 0.03
SHADOW_BLUR = 0.02
SHADOW_OPACITY = 0.5


def add_shadow(rgb: Image.Image, alpha: Image.Image, foreground: Box | None) -> tuple[Image.Image, Image.Image]:
    """A soft shadow computed from the matte itself (no light model): the alpha shifted down by SHADOW_OFFSET of
    the subject's height, blurred by SHADOW_BLUR of it, at SHADOW_OPACITY black, composited under the subject."""
    if foreground is None:
        return rgb, alpha
    offset = max(1, round(foreground.height * SHADOW_OFFSET))
    radius = max(1.0, foreground.height * SHADOW_BLUR)
    shifted = Image.new("L", alpha.size, 0)
    shifted.paste(alpha, (0, offset))
    shadow_alpha = shifted.filter(ImageFilter.GaussianBlur(radius)).point(lambda value: round(value * SHADOW_OPACITY))
    shadow = Image.new("RGBA", alpha.size, (0, 0, 0, 0))
    shadow.putalpha(shadow_alpha)
    subject = rgb.convert("RGBA")
    subject.putalpha(alpha)
    combined = Image.alpha_composite(shadow, subject)
    return combined.convert("RGB"), combined.getchannel("A")


def _multiply(alpha: Image.Image, own_alpha: Image.Image | None) -> Image.Image:
    """A pixel the input already made transparent stays transparent (uint8 a x b / 255, in C)."""
    return alpha if own_alpha is None else ImageChops.multiply(alpha, own_alpha)


def _decontaminates(options: RemovalOptions) -> bool:
    """Whether soft edges' colours are freed of the old background (options.decontaminate): on cut-outs,
    transparent or composited; a mask has no colour."""
    return options.decontaminate and options.output_type is OutputType.CUTOUT


def _colour_and_alpha(
    image: DecodedImage, mask: Mask, options: RemovalOptions
) -> tuple[Image.Image, Image.Image]:
    """The RGB and the alpha of the result at its output size, cropped to the subject when asked."""
    width, height = image.size
    decontaminate = _decontaminates(options)
    if options.roi is not None or options.places_subject:
        return _composed(image, mask, options)
    if not options.crop:
        out_width, out_height = options.fit(width, height)
        rgb, own_alpha = image.rgb, image.alpha
        if (out_width, out_height) != (width, height):
            rgb = rgb.resize((out_width, out_height), Image.Resampling.LANCZOS)
            own_alpha = own_alpha.resize((out_width, out_height), Image.Resampling.LANCZOS) if own_alpha else None
        alpha = _multiply(imaging.alpha_from_mask(mask, out_width, out_height), own_alpha)
        return (decontamination.decontaminate(rgb, alpha, in_place=True) if decontaminate else rgb), alpha
    # Cropping: the box is found at the image's own size, and output_size applies to the cropped area.
    alpha = _multiply(imaging.alpha_from_mask(mask, width, height), image.alpha)
    # Decontaminated before the crop, at the image's own size: a crop is then exactly that part of the uncropped
    # cut-out, its colours estimated with the whole picture around them.
    rgb = decontamination.decontaminate(image.rgb, alpha, in_place=True) if decontaminate else image.rgb
    rgb, alpha = _cropped(rgb, alpha, options)
    return _fitted(rgb, alpha, options)


def _cropped(rgb: Image.Image, alpha: Image.Image, options: RemovalOptions) -> tuple[Image.Image, Image.Image]:
    """Cropped to the subject's box plus margins; UnprocessableImage when there is no foreground to crop to."""
    box = foreground_box(alpha)
    if box is None:
        raise UnprocessableImage(
            "crop: the image has no foreground (no pixel's alpha is above "
            f"{FOREGROUND_ALPHA_THRESHOLD} of 255), so there is nothing to crop to"
        )
    area = crop_area(box, options, *alpha.size)
    rectangle = (area.left, area.top, area.right, area.bottom)
    return rgb.crop(rectangle), alpha.crop(rectangle)


def _fitted(rgb: Image.Image, alpha: Image.Image, options: RemovalOptions) -> tuple[Image.Image, Image.Image]:
    out_width, out_height = options.fit(*alpha.size)
    if (out_width, out_height) != alpha.size:
        rgb = rgb.resize((out_width, out_height), Image.Resampling.LANCZOS)
        alpha = alpha.resize((out_width, out_height), Image.Resampling.LANCZOS)
    return rgb, alpha


def _composed(image: DecodedImage, mask: Mask, options: RemovalOptions) -> tuple[Image.Image, Image.Image]:
    """The slower path for roi, scale and position, at the image's own size until the end: alpha, the region
    kept, the crop, the subject placed on its canvas, then the output size."""
    alpha = _multiply(imaging.alpha_from_mask(mask, *image.size), image.alpha)
    alpha = keep_region(alpha, options)
    rgb = decontamination.decontaminate(image.rgb, alpha, in_place=True) if _decontaminates(options) else image.rgb
    if options.crop:
        rgb, alpha = _cropped(rgb, alpha, options)
    if options.places_subject:
        rgb, alpha = place_subject(rgb, alpha, options)
    return _fitted(rgb, alpha, options)


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
    """The result the options ask for (cut-out or mask; cropped; over a colour or an image) and its foreground.
    It takes `image`'s pixels over: decontamination and a transparent result change image.rgb in place (no
    full-size copy; the pipeline decodes each request's image for this one call)."""
    rgb, alpha = _colour_and_alpha(image, mask, options)
    foreground = foreground_box(alpha)
    if options.output_type is OutputType.MASK:
        return Rendered(alpha, foreground)
    if options.add_shadow:
        rgb, alpha = add_shadow(rgb, alpha, foreground)
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

