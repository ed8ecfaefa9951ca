"""The standard matting error measures of an alpha matte against the truth (Rhemann et al., "A Perceptually
Motivated Online Benchmark for Image Matting", CVPR 2009: SAD, MSE, gradient and connectivity errors), each over a
region of pixels, and the edge colour error of a cut-out's colours on the soft edge.

Units follow the literature's tables: SAD, gradient and connectivity are sums over the region divided by 1000;
MSE is a mean. Alpha is in [0, 1] and colours in 0..255 (8-bit levels).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import ndimage

Floats = npt.NDArray[np.float64] | npt.NDArray[np.float32]
Region = npt.NDArray[np.bool_]

GRADIENT_SIGMA = 1.4  # the literature's Gaussian derivative filter
CONNECTIVITY_STEP = 0.1
CONNECTIVITY_MIN_DIFFERENCE = 0.15  # a pixel counts as disconnected only this far above the connected level


def _region(alpha: Floats, region: Region | None) -> Region:
    return np.ones(alpha.shape, dtype=bool) if region is None else region


def sad(alpha: Floats, truth: Floats, region: Region | None = None) -> float:
    """Sum of absolute differences over the region, / 1000."""
    where = _region(alpha, region)
    return float(np.abs(alpha[where] - truth[where]).sum()) / 1000.0


def mse(alpha: Floats, truth: Floats, region: Region | None = None) -> float:
    """Mean squared difference over the region (0 for an empty region)."""
    where = _region(alpha, region)
    if not where.any():
        return 0.0
    return float(np.mean((alpha[where] - truth[where]) ** 2))


def _gaussian_kernels(sigma: float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """A smoothing kernel summing to 1 and a derivative kernel whose answer to the ramp f(x) = x is exactly 1,
    so a gradient magnitude is alpha's change per pixel (the benchmark's code scales its kernel to unit L2
    norm instead: its figures are a constant factor from these). Half-width ceil(3 sigma)."""
    half = math.ceil(3 * sigma)
    x = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-(x**2) / (2 * sigma**2))
    smooth = gauss / gauss.sum()
    derivative = x * gauss / np.sum(x * x * gauss)
    return smooth, derivative


def gradient_magnitude(alpha: Floats, sigma: float = GRADIENT_SIGMA) -> npt.NDArray[np.float64]:
    """|grad alpha| by Gaussian derivative filters (edges repeated beyond the image)."""
    smooth, derivative = _gaussian_kernels(sigma)
    values = np.asarray(alpha, dtype=np.float64)
    dx = ndimage.correlate1d(ndimage.correlate1d(values, derivative, axis=1, mode="nearest"), smooth, axis=0,
                             mode="nearest")
    dy = ndimage.correlate1d(ndimage.correlate1d(values, derivative, axis=0, mode="nearest"), smooth, axis=1,
                             mode="nearest")
    magnitude: npt.NDArray[np.float64] = np.hypot(dx, dy)
    return magnitude


def gradient_error(alpha: Floats, truth: Floats, region: Region | None = None, sigma: float = GRADIENT_SIGMA) -> float:
    """Sum over the region of (|grad alpha| - |grad truth|)^2, / 1000."""
    where = _region(alpha, region)
    difference = gradient_magnitude(alpha, sigma) - gradient_magnitude(truth, sigma)
    return float(np.sum(difference[where] ** 2)) / 1000.0


def _largest_component(mask: Region) -> Region:
    """The largest 4-connected component of mask (the first one found on a tie); all False if mask is."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())[1:]
    largest: Region = labels == (int(np.argmax(sizes)) + 1)
    return largest


def connectivity_error(
    alpha: Floats, truth: Floats, region: Region | None = None, step: float = CONNECTIVITY_STEP
) -> float:
    """The connectivity error: for each pixel, the highest threshold l at which it is still 4-connected to the
    source (the largest region where both mattes reach the threshold); a matte's degree of connectivity is
    phi = 1 - d where d = alpha - l is at least CONNECTIVITY_MIN_DIFFERENCE, else 1. Sum over the region of
    |phi(alpha) - phi(truth)|, / 1000."""
    where = _region(alpha, region)
    levels = round(1.0 / step)
    thresholds = np.arange(levels + 1) / levels  # exact decimals: 6/10 is the double nearest 0.6
    connected_level = np.full(alpha.shape, -1.0)
    for index in range(1, levels + 1):
        source = _largest_component((alpha >= thresholds[index]) & (truth >= thresholds[index]))
        leaving = (connected_level == -1.0) & ~source
        connected_level[leaving] = thresholds[index - 1]
    connected_level[connected_level == -1.0] = 1.0

    def phi(values: Floats) -> npt.NDArray[np.float64]:
        d = np.asarray(values, dtype=np.float64) - connected_level
        degree: npt.NDArray[np.float64] = 1.0 - d * (d >= CONNECTIVITY_MIN_DIFFERENCE)
        return degree

    return float(np.abs(phi(alpha) - phi(truth))[where].sum()) / 1000.0


def edge_colour_error(
    colour: Floats, true_colour: Floats, true_alpha: Floats, region: Region
) -> float:
    """Mean over the region (the soft edge) of true alpha x |colour - true colour|, where |.| is the mean of
    the absolute differences of R, G and B in 8-bit levels: the colour error where it shows. 0 for an empty
    region."""
    if not region.any():
        return 0.0
    difference = np.abs(np.asarray(colour, dtype=np.float64) - true_colour).mean(axis=-1)
    return float(np.mean(true_alpha[region] * difference[region]))
