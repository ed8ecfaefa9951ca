"""The matting measures of `make quality` on tiny mattes whose answers are worked out by hand, and the
ground-truth set's composites against their definition."""

from __future__ import annotations

import numpy as np
import pytest

from common import matting_truth

# scipy is a development dependency (make setup installs it); a venv made before it joined the lock says so here.
pytest.importorskip("scipy", reason="scipy is missing: run make setup")
from tools import matting_measures as measures


def test_sad_and_mse_by_hand() -> None:
    """|0.5-0| + |1-0.75| + |0-0.25| + 0 = 1.0 -> SAD 0.001; squares 0.25+0.0625+0.0625+0 over 4 -> 0.09375;
    over the first row only: (0.25 + 0.0625) / 2."""
    truth = np.array([[0.0, 0.75], [0.25, 1.0]])
    alpha = np.array([[0.5, 1.0], [0.0, 1.0]])
    assert measures.sad(alpha, truth) == pytest.approx(0.001)
    assert measures.mse(alpha, truth) == pytest.approx(0.09375)
    first_row = np.array([[True, True], [False, False]])
    assert measures.sad(alpha, truth, first_row) == pytest.approx(0.00075)
    assert measures.mse(alpha, truth, first_row) == pytest.approx(0.15625)
    assert measures.mse(alpha, truth, np.zeros((2, 2), dtype=bool)) == 0.0


def test_gradient_error_by_hand() -> None:
    """A ramp rising 0.1 per pixel against a flat truth: the derivative filter answers exactly 0.1 wherever its
    window (half-width ceil(3 x 1.4) = 5) stays inside the image, i.e. columns 5 and 6 of a 12-wide image;
    12 rows x 2 columns x (0.1 - 0)^2 = 0.24 -> 0.00024. A matte against itself scores 0."""
    ramp = np.tile(np.arange(12) * 0.1, (12, 1))
    flat = np.full((12, 12), 0.3)
    inside = np.zeros((12, 12), dtype=bool)
    inside[:, 5:7] = True
    assert measures.gradient_error(ramp, flat, inside) == pytest.approx(0.00024)
    assert measures.gradient_magnitude(ramp)[:, 5:7] == pytest.approx(np.full((12, 2), 0.1))
    assert measures.gradient_error(ramp, ramp) == 0.0


def test_connectivity_error_by_hand() -> None:
    """One row: truth 1 1 1 0 1, ours 1 1 0.65 0 1. Up to threshold 0.6 the source (largest region where both
    reach it) is pixels 0-2, so pixels 3 and 4 leave at the first level: l = 0. From 0.7 the source is pixels
    0-1: pixel 2 leaves with l = 0.6; pixels 0-1 never leave: l = 1. d = value - l: ours 0 0 0.05 0 1, truth
    0 0 0.4 0 1; phi = 1 - d where d >= 0.15: ours 1 1 1 1 0, truth 1 1 0.6 1 0. Error 0.4 -> 0.0004."""
    truth = np.array([[1.0, 1.0, 1.0, 0.0, 1.0]])
    alpha = np.array([[1.0, 1.0, 0.65, 0.0, 1.0]])
    assert measures.connectivity_error(alpha, truth) == pytest.approx(0.0004)
    assert measures.connectivity_error(truth, truth) == 0.0
    only_first = np.array([[True, False, False, False, False]])
    assert measures.connectivity_error(alpha, truth, only_first) == 0.0


def test_edge_colour_error_by_hand() -> None:
    """Two soft pixels: alpha 0.5 with colours off by (30, 0, 0) -> mean 10 -> 5; alpha 0.25 off by (12, 12, 12)
    -> 12 -> 3; the opaque pixel, off by 90, is not on the edge. Mean of 5 and 3 = 4."""
    true_alpha = np.array([[0.5, 0.25, 1.0]])
    true_colour = np.array([[[100.0, 100.0, 100.0], [0.0, 50.0, 200.0], [10.0, 10.0, 10.0]]])
    ours = np.array([[[130.0, 100.0, 100.0], [12.0, 38.0, 212.0], [100.0, 100.0, 100.0]]])
    soft = (true_alpha >= 0.05) & (true_alpha <= 0.95)
    assert measures.edge_colour_error(ours, true_colour, true_alpha, soft) == pytest.approx(4.0)
    assert measures.edge_colour_error(ours, true_colour, true_alpha, np.zeros((1, 3), dtype=bool)) == 0.0


def test_truth_set_composites_are_alpha_blends() -> None:
    """A composite is alpha x F + (1 - alpha) x B rounded once, its soft edge is non-empty, and the set is the
    same on every run."""
    foreground = matting_truth.cat_fur()
    name, saturated, background = matting_truth.backgrounds()[0]
    made = matting_truth.composite(foreground, name, saturated, background)
    alpha = foreground.alpha[..., None]
    expected = alpha * foreground.colour + (1 - alpha) * background
    assert np.abs(made.image.astype(np.float64) - expected).max() <= 0.5 + 1e-3
    assert made.saturated and made.name == "fur/green"
    assert 0.02 < made.soft_edge.mean() < 0.5
    again = matting_truth.composite(matting_truth.cat_fur(), name, saturated, background)
    assert np.array_equal(again.image, made.image) and np.array_equal(again.alpha, made.alpha)
