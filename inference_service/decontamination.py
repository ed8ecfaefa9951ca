"""Colour decontamination of soft edges: each semi-transparent pixel's foreground colour estimated so that the old
background's colour leaves the cut-out (a green wall no longer fringes hair that is put over white). Alpha is
never changed; opaque pixels keep their colour exactly.

The method is blur-fusion foreground estimation (Forte & Pitie, "Approximate Fast Foreground Colour Estimation",
ICIP 2021), in its two-pass form: a pixel I = alpha F + (1 - alpha) B is solved for F given local means of the
foreground F_mean and background B_mean, F = F_mean + alpha (I - alpha F_mean - (1 - alpha) B_mean); pass one takes
the means over a wide window of the photo itself, pass two the foreground mean over a narrow window of pass one's
foreground. Chosen over multilevel foreground estimation (Germer et al. 2020), against which the paper reports
comparable errors on Composition-1k: multilevel is an iterative solve at every level of an image pyramid (pymatting
runs it through numba, which the lock does not have), while this is a few box filters, within the service's budget
of 0.15 CPU-seconds per 2 MP image (`python -m inference_service.profile decontaminate` measures it).

What keeps it near 0.1 CPU-seconds at 2 MP, proportionately at 12 MP, with Pillow and numpy alone: the box
filters run in Pillow's C (a block reduce of the premultiplied image for the wide means, which vary over tens of
pixels and are interpolated back bilinearly; BoxBlur for the narrow pass), and the arithmetic runs only at the
soft pixels. Pass two's background mean is pass one's at the pixel (a mean of a field already smooth over the
wide window, taken over a few pixels, is that field).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

Floats = npt.NDArray[np.float32]

# Box window sides in pixels, wide then narrow, at REFERENCE_PIXELS and below (the paper: 90 and 6 at
# Composition-1k's ~1-2 MP); larger images scale them with their linear size, so a window covers the same part
# of the subject. Smaller images keep them: a soft edge (a strand of hair, a blur) is not narrower in pixels
# because the photo is small, and a wide window that does not reach past it averages mixed colours only.
WINDOWS = (90, 6)
REFERENCE_PIXELS = 2_000_000
_CELLS_PER_WINDOW = 4  # the wide means are computed on blocks of a quarter window and interpolated
# Alpha (of 255) from which a pixel is left as it is: at 250 and above the old background contributes under 2 %
# (ISNet puts much of a subject's inside at 250..254). Below 3 a pixel barely shows: it is not a soft pixel, but
# one within the narrow window of the foreground takes the nearby foreground's colour, so a reader that resizes
# without premultiplying, or an editor that grows the mask, finds no old background there.
OPAQUE_FROM = 250
VISIBLE_FROM = 3
# The narrow pass's mean is a ratio of 8-bit box means: trusted where the mean alpha in the window is at least
# this (of 255), else pass one's wide mean stands in.
_MIN_NEAR_ALPHA = 8


def windows(width: int, height: int) -> tuple[int, int]:
    """The wide and narrow box windows (odd sides, in pixels) for a width x height image."""
    scale = max(1.0, math.sqrt(width * height / REFERENCE_PIXELS))
    return round(WINDOWS[0] * scale) | 1, round(WINDOWS[1] * scale) | 1


def _box_sums(values: Floats, side: int) -> Floats:
    """Sums over side x side windows centred on each cell of [rows, columns, C], zeros beyond the edges."""
    half = side // 2
    out = values
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (half + 1, half)
        sums = np.cumsum(np.pad(out, pad), axis=axis, dtype=np.float32)
        length = out.shape[axis]
        upper: list[slice] = [slice(None)] * out.ndim
        lower: list[slice] = [slice(None)] * out.ndim
        upper[axis], lower[axis] = slice(side, side + length), slice(0, length)
        out = sums[tuple(upper)] - sums[tuple(lower)]
    return out


def _wide_means(rgb: Image.Image, premultiplied: Image.Image, wide: int) -> tuple[Floats, int]:
    """Per block of `cell` x `cell` pixels (the second value; a quarter of the wide window): the alpha-weighted
    mean colour (foreground) and the (1 - alpha)-weighted mean colour (background) over the wide window around
    the block's centre, [rows, columns, 6]. The blocks' means come from Pillow (a box reduce in C; blocks cut by
    the edges average the pixels they hold)."""
    cell = max(2, wide // _CELLS_PER_WINDOW)
    width, height = rgb.size
    premultiplied_means = np.asarray(premultiplied.reduce(cell), dtype=np.float32)
    plain_means = np.asarray(rgb.reduce(cell), dtype=np.float32)
    counts = np.outer(np.diff(np.arange(0, height + cell, cell).clip(max=height)),
                      np.diff(np.arange(0, width + cell, cell).clip(max=width))).astype(np.float32)[..., None]
    fg_weight = premultiplied_means[..., 3:] / 255.0
    fg = premultiplied_means[..., :3]  # premultiplied: the mean of alpha x I
    sums = np.concatenate([fg_weight, fg, 1.0 - fg_weight, plain_means - fg], axis=-1) * counts
    windowed = _box_sums(sums, max(3, round(wide / cell) | 1))
    means: Floats = np.concatenate([windowed[..., 1:4] / np.maximum(windowed[..., :1], 1e-6),
                                    windowed[..., 5:8] / np.maximum(windowed[..., 4:5], 1e-6)], axis=-1)
    return means, cell


def _interpolate(means: Floats, cell: int, where: npt.NDArray[np.intp], width: int) -> Floats:
    """The per-block means interpolated bilinearly between the blocks' centres at pixels (flat indices):
    [6, n], channels first (numpy's loops then run along the pixels, not along three channels)."""
    rows, columns = means.shape[:2]
    height = int(where.max(initial=0)) // width + 1

    def axis_weights(size: int, blocks: int) -> tuple[npt.NDArray[np.intp], Floats]:
        position = np.clip((np.arange(size) + 0.5) / cell - 0.5, 0, blocks - 1)
        low = np.minimum(position.astype(np.intp), max(blocks - 2, 0))
        return low, (position - low).astype(np.float32)

    row_low, row_weight = axis_weights(height, rows)
    column_low, column_weight = axis_weights(width, columns)
    y, x = np.divmod(where, width)
    y0, wy, x0, wx = row_low[y], row_weight[y], column_low[x], column_weight[x]
    y1, x1 = np.minimum(y0 + 1, rows - 1), np.minimum(x0 + 1, columns - 1)
    flat = np.ascontiguousarray(means.reshape(-1, 6).T)
    top = np.take(flat, y0 * columns + x0, axis=1)
    top += (np.take(flat, y0 * columns + x1, axis=1) - top) * wx
    bottom = np.take(flat, y1 * columns + x0, axis=1)
    bottom += (np.take(flat, y1 * columns + x1, axis=1) - bottom) * wx
    top += (bottom - top) * wy
    interpolated: Floats = top
    return interpolated


def _solve(image: Floats, alpha: Floats, fg_mean: Floats, bg_mean: Floats) -> Floats:
    """F = F_mean + alpha (I - alpha F_mean - (1 - alpha) B_mean), clipped to 0..255; written as
    F_mean + alpha ((I - B_mean) - alpha (F_mean - B_mean)), in place on two temporaries. Channels first:
    [3, n] colours, [n] alphas."""
    spread = fg_mean - bg_mean
    spread *= alpha
    solved: Floats = image - bg_mean
    solved -= spread
    solved *= alpha
    solved += fg_mean
    np.clip(solved, 0.0, 255.0, out=solved)
    return solved


def _columns(pixels: npt.NDArray[np.uint32], where: npt.NDArray[np.intp]) -> Floats:
    """Four-byte pixels (RGBA as one uint32 each) at flat indices, as float32 [4, n] (channels first)."""
    gathered = np.take(pixels, where).view(np.uint8).reshape(-1, 4)
    return np.ascontiguousarray(gathered.T, dtype=np.float32)


def _pack(colour: Floats, alpha: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint32]:
    """[3, n] colours rounded to 8 bits with [n] alphas, as one uint32 per pixel."""
    packed = np.empty((len(alpha), 4), dtype=np.uint8)
    packed[:, :3] = np.rint(colour).T
    packed[:, 3] = alpha
    return packed.view(np.uint32).reshape(-1)


def decontaminate(rgb_image: Image.Image, alpha_image: Image.Image) -> Image.Image:
    """The RGB image with its soft edges' colours freed of the old background, given its alpha (mode L, same
    size): a new RGB image, equal to rgb where alpha is OPAQUE_FROM or more and away from the soft edge."""
    alpha = np.asarray(alpha_image)
    soft = np.flatnonzero((alpha >= VISIBLE_FROM) & (alpha < OPAQUE_FROM))
    if soft.size == 0:
        return rgb_image.copy()
    width, height = rgb_image.size
    wide, narrow = windows(width, height)
    rgba = rgb_image.copy()
    rgba.putalpha(alpha_image)
    pixels = np.array(rgba)  # the result, written in place: RGB, and alpha as it is
    pixels32 = pixels.view(np.uint32).reshape(-1)
    premultiplied = rgba.convert("RGBa")
    means, cell = _wide_means(rgb_image, premultiplied, wide)

    # Pass one at the soft pixels.
    soft_pixels = _columns(pixels32, soft)
    soft_alpha = soft_pixels[3] / 255.0
    soft_means = _interpolate(means, cell, soft, width)
    first = _solve(soft_pixels[:3], soft_alpha, soft_means[:3], soft_means[3:])

    # Pass two: the alpha-weighted mean of pass one's foreground (opaque pixels: I itself) over the narrow window,
    # a box blur of the premultiplied image (its four bands blurred apart, in C).
    weighted = np.array(premultiplied)  # writable: alpha x I / 255 and alpha
    first *= soft_alpha
    weighted.view(np.uint32).reshape(-1)[soft] = _pack(first, alpha.reshape(-1)[soft])
    blurred = np.asarray(Image.fromarray(weighted, "RGBA").filter(ImageFilter.BoxBlur(narrow // 2)))
    # Also estimated: barely visible pixels with foreground within the narrow window.
    faint = np.flatnonzero((alpha < VISIBLE_FROM) & (blurred[..., 3] >= _MIN_NEAR_ALPHA))
    where = np.concatenate([soft, faint])
    pixel = np.concatenate([soft_pixels, _columns(pixels32, faint)], axis=1)
    pixel_means = np.concatenate([soft_means, _interpolate(means, cell, faint, width)], axis=1)
    near = _columns(blurred.view(np.uint32).reshape(-1), where)
    fine_mean = near[:3] * (255.0 / np.maximum(near[3], 1.0))
    np.copyto(fine_mean, pixel_means[:3], where=near[3] < _MIN_NEAR_ALPHA)
    second = _solve(pixel[:3], pixel[3] / 255.0, fine_mean, pixel_means[3:])
    pixels32[where] = _pack(second, alpha.reshape(-1)[where])
    return Image.fromarray(pixels, "RGBA").convert("RGB")
