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

What keeps it near a tenth of a CPU-second at 2 MP, proportionately at 12 MP, in a few MB beyond the result,
with Pillow and numpy alone: the box filters run in Pillow's C (a block reduce of the premultiplied image for the
wide means, which vary over tens of pixels and are interpolated back bilinearly; BoxBlur for the narrow pass), the
arithmetic runs only at the soft pixels, and the image is read a band of rows at a time, each band only where its
columns can change (plus the narrow window's margin), so no step copies the whole image and the opaque inside
of a subject and the empty background cost next to nothing. Pass two's background mean is pass one's at the
pixel (a mean of a field already smooth over the wide window, taken over a few pixels, is that field).
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


def _wide_means(rgb: Image.Image, alpha: Image.Image, wide: int, band: int) -> tuple[Floats, int]:
    """Per block of `cell` x `cell` pixels (the second value; a quarter of the wide window): the alpha-weighted
    mean colour (foreground) and the (1 - alpha)-weighted mean colour (background) over the wide window around
    the block's centre, [rows, columns, 6]. The blocks' means come from Pillow (a box reduce in C; blocks cut by
    the edges average the pixels they hold), `band` rows at a time (a multiple of `cell`): no full-size copy."""
    cell = max(2, wide // _CELLS_PER_WINDOW)
    width, height = rgb.size
    plain_bands, premultiplied_bands = [], []
    for top in range(0, height, band):
        box = (0, top, width, min(height, top + band))
        rgba = rgb.crop(box)
        plain_bands.append(np.asarray(rgba.reduce(cell), dtype=np.float32))
        rgba.putalpha(alpha.crop(box))
        premultiplied_bands.append(np.asarray(rgba.convert("RGBa").reduce(cell), dtype=np.float32))
    plain_means, premultiplied_means = np.concatenate(plain_bands), np.concatenate(premultiplied_bands)
    counts = np.outer(np.diff(np.arange(0, height + cell, cell).clip(max=height)),
                      np.diff(np.arange(0, width + cell, cell).clip(max=width))).astype(np.float32)[..., None]
    fg_weight = premultiplied_means[..., 3:] / 255.0
    fg = premultiplied_means[..., :3]  # premultiplied: the mean of alpha x I
    sums = np.concatenate([fg_weight, fg, 1.0 - fg_weight, plain_means - fg], axis=-1) * counts
    windowed = _box_sums(sums, max(3, round(wide / cell) | 1))
    means: Floats = np.concatenate([windowed[..., 1:4] / np.maximum(windowed[..., :1], 1e-6),
                                    windowed[..., 5:8] / np.maximum(windowed[..., 4:5], 1e-6)], axis=-1)
    return means, cell


class _Means:
    """The per-block means interpolated bilinearly between the blocks' centres, at any pixels. Along x once
    for every block row and column of the image ([6, block rows x width], small), so each pixel takes two values
    per channel and one step along y."""

    def __init__(self, means: Floats, cell: int, width: int, height: int) -> None:
        rows, columns = means.shape[:2]

        def axis_weights(size: int, blocks: int) -> tuple[npt.NDArray[np.intp], Floats]:
            position = np.clip((np.arange(size) + 0.5) / cell - 0.5, 0, blocks - 1)
            low = np.minimum(position.astype(np.intp), max(blocks - 2, 0))
            return low, (position - low).astype(np.float32)

        row_low, self._row_weight = axis_weights(height, rows)
        self._row_low = row_low * width
        self._row_high = np.minimum(row_low + 1, rows - 1) * width
        column_low, column_weight = axis_weights(width, columns)
        column_high = np.minimum(column_low + 1, columns - 1)
        channels = np.ascontiguousarray(means.transpose(2, 0, 1))  # [6, rows, columns]
        along: Floats = channels[:, :, column_low]
        step = channels[:, :, column_high]
        step -= along
        step *= column_weight
        along += step
        self._along = along.reshape(6, -1)

    def at(self, y: npt.NDArray[np.intp], x: npt.NDArray[np.intp]) -> Floats:
        """[6, n] at pixels (y, x), channels first (numpy's loops then run along the pixels)."""
        top = np.take(self._along, self._row_low[y] + x, axis=1)
        bottom = np.take(self._along, self._row_high[y] + x, axis=1)
        top += (bottom - top) * self._row_weight[y]
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


def _segments(active: npt.NDArray[np.bool_], gap: int) -> list[tuple[int, int]]:
    """The runs of True in `active` as (start, end), runs fewer than `gap` apart joined."""
    edges = np.flatnonzero(np.diff(active.astype(np.int8), prepend=0, append=0))
    runs: list[tuple[int, int]] = []
    for start, end in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
        if runs and start - runs[-1][1] < gap:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


def _dilate(flags: npt.NDArray[np.bool_], reach: int) -> npt.NDArray[np.bool_]:
    """True within `reach` of a True (1-D)."""
    sums = np.cumsum(np.pad(flags, (reach + 1, reach)).astype(np.int32))
    dilated: npt.NDArray[np.bool_] = (sums[2 * reach + 1:] - sums[:-2 * reach - 1]) > 0
    return dilated


def _estimate(
    rgb_image: Image.Image, alpha_image: Image.Image, rows: npt.NDArray[np.uint8], means: _Means,
    crop: tuple[int, int, int, int], keep: tuple[int, int, int, int], radius: int,
) -> Image.Image | None:
    """Both passes on the pixels of `crop` (left, top, right, bottom), which holds `keep` and `radius` + 2 more
    pixels on each side the image has; `rows` is the alpha of the crop's rows, every column. The kept part, as
    RGBA with its soft and faint pixels estimated (None when it has none)."""
    left, top, right, _bottom = crop
    keep_left, keep_top, keep_right, keep_bottom = (keep[0] - left, keep[1] - top, keep[2] - left, keep[3] - top)
    width = right - left
    rgba = rgb_image.crop(crop)
    rgba.putalpha(alpha_image.crop(crop))
    part = rows[:, left:right]
    flat_alpha = part.reshape(-1)
    soft = np.flatnonzero((flat_alpha >= VISIBLE_FROM) & (flat_alpha < OPAQUE_FROM))
    pixels = np.array(rgba)  # the result, written in place: RGB, and alpha as it is
    pixels32 = pixels.view(np.uint32).reshape(-1)

    # Pass one at the soft pixels (those of the margin too: the narrow window of a kept pixel reaches them).
    soft_y, soft_x = np.divmod(soft, width)
    soft_pixels = _columns(pixels32, soft)
    soft_alpha = soft_pixels[3] / 255.0
    soft_means = means.at(soft_y + top, soft_x + left)
    first = _solve(soft_pixels[:3], soft_alpha, soft_means[:3], soft_means[3:])

    # Pass two: the alpha-weighted mean of pass one's foreground (opaque pixels: I itself) over the narrow window,
    # a box blur of the premultiplied image (its four bands blurred apart, in C).
    weighted = np.array(rgba.convert("RGBa"))  # writable: alpha x I / 255 and alpha
    first *= soft_alpha
    weighted.view(np.uint32).reshape(-1)[soft] = _pack(first, flat_alpha[soft])
    blurred = np.asarray(Image.fromarray(weighted, "RGBA").filter(ImageFilter.BoxBlur(radius)))
    # Also estimated: barely visible pixels with foreground within the narrow window. The soft pixels of the kept
    # rows are a run of `soft` (row-major; every soft pixel of the crop lies in the kept columns).
    kept = np.zeros(part.shape, dtype=bool)
    kept[keep_top:keep_bottom, keep_left:keep_right] = True
    faint = np.flatnonzero(kept & (part < VISIBLE_FROM) & (blurred[..., 3] >= _MIN_NEAR_ALPHA))
    first_kept, end_kept = np.searchsorted(soft, (keep_top * width, keep_bottom * width)).tolist()
    if first_kept == end_kept and faint.size == 0:
        return None
    blurred32 = blurred.view(np.uint32).reshape(-1)
    faint_y, faint_x = np.divmod(faint, width)
    for where, pixel, pixel_means in (
        (soft[first_kept:end_kept], soft_pixels[:, first_kept:end_kept], soft_means[:, first_kept:end_kept]),
        (faint, _columns(pixels32, faint), means.at(faint_y + top, faint_x + left)),
    ):
        near = _columns(blurred32, where)
        fine_mean = near[:3] * (255.0 / np.maximum(near[3], 1.0))
        np.copyto(fine_mean, pixel_means[:3], where=near[3] < _MIN_NEAR_ALPHA)
        second = _solve(pixel[:3], pixel[3] / 255.0, fine_mean, pixel_means[3:])
        pixels32[where] = _pack(second, flat_alpha[where])
    return Image.fromarray(np.ascontiguousarray(pixels[keep_top:keep_bottom, keep_left:keep_right]), "RGBA")


# Pixels per band of rows (rounded to whole blocks of the wide means): the image is read a band at a time, so no
# step holds more than a band's copies and per-pixel temporaries (tens of MB at most), whatever the image's size.
_BAND_PIXELS = 500_000


def decontaminate(rgb_image: Image.Image, alpha_image: Image.Image, *, in_place: bool = False) -> Image.Image:
    """The RGB image with its soft edges' colours freed of the old background, given its alpha (mode L, same
    size): equal to rgb where alpha is OPAQUE_FROM or more and away from the soft edge. A new RGB image, or
    with `in_place` rgb_image itself, changed (for a caller that owns it: no full-size copy).

    The work is done a band of rows at a time, and in each band only on the columns that can change (a pixel
    that is not opaque within the narrow window of one that shows) plus the narrow window's margin: the cost
    follows the length of the soft edge, not the image's area."""
    out = rgb_image if in_place else rgb_image.copy()
    if not any(alpha_image.histogram()[VISIBLE_FROM:OPAQUE_FROM]):  # no soft pixel (counted in C)
        return out
    width, height = rgb_image.size
    wide, narrow = windows(width, height)
    cell = max(2, wide // _CELLS_PER_WINDOW)
    band = cell * max(1, round(_BAND_PIXELS / width / cell))
    blocks, cell = _wide_means(rgb_image, alpha_image, wide, band)
    means = _Means(blocks, cell, width, height)
    radius = narrow // 2
    margin = radius + 2  # Pillow's box blur weighs a pixel past the radius (by under 2**-24)
    # A band's results are pasted once the next band has read its margin rows (in place, they are the input's).
    pending: list[tuple[Image.Image, tuple[int, int]]] = []
    for top in range(0, height, band):
        bottom = min(height, top + band)
        crop_top, crop_bottom = max(0, top - margin), min(height, bottom + margin)
        rows = np.asarray(alpha_image.crop((0, crop_top, width, crop_bottom)))
        # Columns where a pixel can change: some pixel is not opaque, and one shows within the margin.
        active = (rows.min(axis=0) < OPAQUE_FROM) & _dilate(rows.max(axis=0) >= VISIBLE_FROM, margin)
        estimated = []
        for start, end in _segments(active, 2 * margin + 32):
            crop = (max(0, start - margin), crop_top, min(width, end + margin), crop_bottom)
            part = _estimate(rgb_image, alpha_image, rows, means, crop, (start, top, end, bottom), radius)
            if part is not None:
                estimated.append((part, (start, top)))
        for part, position in pending:
            out.paste(part.convert("RGB"), position)
        pending = estimated
    for part, position in pending:
        out.paste(part.convert("RGB"), position)
    return out
