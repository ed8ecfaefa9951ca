"""Colour decontamination through the public HTTP API (real gateway -> real inference service -> real Triton),
on a composite whose true alpha and foreground colour are known (common/matting_truth.py): the default removes
the old background's colour from soft edges, decontaminate=false keeps the photo's colours, alpha is the same."""

from __future__ import annotations

import io

import aiohttp
import numpy as np
import numpy.typing as npt
from PIL import Image

from common import matting_truth
from tests.gateway.harness import Gateway
from tests.gateway.test_api import download


def _edge_colour_error(cutout: npt.NDArray[np.uint8], truth: matting_truth.Composite) -> float:
    """Mean over the true soft edge of true alpha x |RGB - true foreground RGB| (mean of R, G, B), as make
    quality measures it."""
    edge = truth.soft_edge
    difference = np.abs(cutout[..., :3].astype(np.float64) - truth.colour).mean(axis=-1)
    return float(np.mean(truth.alpha[edge] * difference[edge]))


async def _cutout(gw: Gateway, key: str, png: bytes, **fields: str) -> tuple[dict[str, object], npt.NDArray[np.uint8]]:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("file", png, filename="fur-on-green.png", content_type="image/png")
    response = await gw.client.post("/v1/remove-background/file", data=form, headers={"X-API-Key": key})
    body = await response.json()
    assert response.status == 200, body
    status, content_type, data = await download(body["data"]["output_url"])
    assert (status, content_type) == (200, "image/png")
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == "RGBA"
        return body["data"], np.asarray(opened)


async def test_default_removes_the_old_background_from_soft_edges(gw: Gateway) -> None:
    """Fur over saturated green: by default the cut-out's edge colour error (against the true foreground) is
    well under the photo's own colours', which decontaminate=false returns untouched; the alpha is identical and
    pixels the model makes opaque keep the photo's colours. Only false is echoed (true is the default)."""
    truth = next(c for c in matting_truth.truth_set() if c.name == "fur/green")
    _, key = await gw.account("pro")
    cleaned_record, cleaned = await _cutout(gw, key, truth.png())
    plain_record, plain = await _cutout(gw, key, truth.png(), decontaminate="false")
    assert "decontaminate" not in cleaned_record and plain_record["decontaminate"] is False

    assert np.array_equal(cleaned[..., 3], plain[..., 3])
    assert np.array_equal(plain[..., :3], truth.image)
    opaque = plain[..., 3] >= 250
    assert opaque.mean() > 0.2 and np.array_equal(cleaned[..., :3][opaque], truth.image[opaque])

    before, after = _edge_colour_error(plain, truth), _edge_colour_error(cleaned, truth)
    assert before > 5.0, before  # the green shows in the photo's own edge colours
    assert after < 0.75 * before, (after, before)
    # Where the soft edge shows green most (true alpha about one half), the green channel comes down.
    half = truth.soft_edge & (np.abs(truth.alpha - 0.5) < 0.2) & (plain[..., 3] > 0) & (plain[..., 3] < 250)
    assert half.sum() > 100
    assert cleaned[..., 1][half].astype(float).mean() < plain[..., 1][half].astype(float).mean() - 5


async def test_decontaminate_refuses_a_non_boolean(gw: Gateway) -> None:
    """decontaminate=maybe is a 400 in the error envelope naming the option."""
    _, key = await gw.account("pro")
    form = aiohttp.FormData()
    form.add_field("decontaminate", "maybe")
    form.add_field("file", b"\x89PNG\r\n\x1a\n", filename="x.png", content_type="image/png")
    response = await gw.client.post("/v1/remove-background/file", data=form, headers={"X-API-Key": key})
    body = await response.json()
    assert response.status == 400, body
    assert body["error"]["code"] == "invalid_request" and "decontaminate" in body["error"]["message"]
