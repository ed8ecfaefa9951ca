"""Placement and sizing options of the one removal engine, pixel by pixel: roi, per-side crop margins, scale and
position, the shadow, the megapixel cap and the zip result (compositing and imaging, on synthetic masks)."""

from __future__ import annotations

import io
import zipfile

import grpc
import numpy as np
import pytest
from PIL import Image

from contract import options as contract
from contract.client import remove_background
from contract.options import OptionError, OutputFormat
from inference_service import compositing, imaging
from inference_service.compositing import Box
from inference_service.errors import InvalidRequest
from inference_service.imaging import DecodedImage
from inference_service.options import Length, Margins, Region, RemovalOptions
from inference_service.server import InferenceServer
from removai.v1 import inference_pb2 as pb
from removai.v1 import inference_pb2_grpc as pb_grpc

WIDTH, HEIGHT = 200, 100
# The subject: a 60 x 40 rectangle with its top-left corner at (30, 20).
SUBJECT = Box(30, 20, 60, 40)


def _image() -> DecodedImage:
    """A colour gradient, so that moved pixels can be told from pixels left in place."""
    x = np.arange(WIDTH, dtype=np.uint8)[None, :].repeat(HEIGHT, axis=0)
    y = np.arange(HEIGHT, dtype=np.uint8)[:, None].repeat(WIDTH, axis=1)
    rgb = np.stack([x, y, np.full_like(x, 200)], axis=2)
    return DecodedImage(Image.fromarray(rgb, "RGB"), None)


def _mask(box: Box | None = SUBJECT) -> imaging.Mask:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    if box is None:
        mask[:] = 255
    else:
        mask[box.top : box.bottom, box.left : box.right] = 255
    return mask


def _alpha(rendered: compositing.Rendered) -> imaging.Mask:
    return np.asarray(rendered.image.getchannel("A"))


def _rgb(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    pixel = image.getpixel(xy)
    assert isinstance(pixel, tuple)
    return pixel


def _px(value: float) -> Length:
    return Length(value)


def _pc(value: float) -> Length:
    return Length(value, percent=True)


def test_roi_keeps_only_its_rectangle() -> None:
    """With an all-foreground mask, only the roi (10% 20% to 50% 80% of 200 x 100) stays opaque."""
    options = RemovalOptions(roi=Region(_pc(10), _pc(20), _pc(50), _pc(80)))
    rendered = compositing.render(_image(), _mask(None), options)
    alpha = _alpha(rendered).copy()
    assert rendered.image.size == (WIDTH, HEIGHT)
    assert rendered.foreground == Box(20, 20, 80, 60)
    assert (alpha[20:80, 20:100] == 255).all()
    alpha[20:80, 20:100] = 0
    assert not alpha.any()


def test_roi_in_pixels_cuts_the_subject() -> None:
    """A roi in pixels over half the subject keeps that half only."""
    options = RemovalOptions(roi=Region(_px(0), _px(0), _px(60), _px(100)))
    rendered = compositing.render(_image(), _mask(), options)
    assert rendered.foreground == Box(30, 20, 30, 40)


def test_empty_roi_is_invalid() -> None:
    """x2 <= x1 holds no pixel: an InvalidRequest naming roi."""
    options = RemovalOptions(roi=Region(_px(50), _px(0), _px(50), _px(100)))
    with pytest.raises(InvalidRequest, match="roi"):
        compositing.render(_image(), _mask(), options)


def test_crop_margins_per_side() -> None:
    """Top 5 px, right 10 % of the box's width, bottom 0, left 2 px around the 60 x 40 subject."""
    options = RemovalOptions(crop=True, crop_margins=Margins(_px(5), _pc(10), _px(0), _px(2)))
    rendered = compositing.render(_image(), _mask(), options)
    assert rendered.image.size == (2 + 60 + 6, 5 + 40)
    assert rendered.foreground == Box(2, 5, 60, 40)
    # The crop keeps the image's own colours: the first column is x = 28 of the gradient.
    assert _rgb(rendered.image, (0, 0))[:3] == (28, 15, 200)


def test_crop_margins_are_clamped_to_the_image() -> None:
    """A margin past the image's edge stops at the edge."""
    options = RemovalOptions(crop=True, crop_margins=Margins(_px(500), _px(500), _px(500), _px(500)))
    assert compositing.render(_image(), _mask(), options).image.size == (WIDTH, HEIGHT)


def test_scale_centres_the_subject() -> None:
    """scale 50 %: the 60 x 40 box grows to half the canvas in its tighter dimension (1.25x: 75 x 50), centred."""
    rendered = compositing.render(_image(), _mask(), RemovalOptions(scale_percent=50))
    assert rendered.image.size == (WIDTH, HEIGHT)
    assert rendered.foreground == Box(62, 25, 75, 50)
    alpha = _alpha(rendered)
    assert alpha[50, 100] == 255 and alpha[10, 10] == 0 and alpha[30, 40] == 0


def test_position_moves_the_subject_without_scaling() -> None:
    """position 0 % 100 %: the subject, its size kept, at the bottom-left corner; its own colours move along."""
    rendered = compositing.render(_image(), _mask(), RemovalOptions(position=(0.0, 100.0)))
    assert rendered.foreground == Box(0, 60, 60, 40)
    # The subject's first pixel was at (30, 20) of the gradient.
    assert _rgb(rendered.image, (0, 60)) == (30, 20, 200, 255)
    assert _alpha(rendered)[20, 30] == 0


def test_scale_and_position_after_crop() -> None:
    """With crop the canvas is the cropped area: scale 100 % fills it, position 100 % 0 % in the top-right."""
    options = RemovalOptions(
        crop=True, crop_margins=Margins(_px(10), _px(10), _px(10), _px(10)), scale_percent=50, position=(100.0, 0.0)
    )
    rendered = compositing.render(_image(), _mask(), options)
    assert rendered.image.size == (80, 60)
    # 0.5 x min(80/60, 60/40) = 0.667: 40 x 27, against the right edge, at the top.
    assert rendered.foreground == Box(40, 0, 40, 27)


def test_shadow_falls_under_the_subject() -> None:
    """add_shadow: partly transparent black below the subject's bottom edge, nothing above its top, the subject
    itself unchanged."""
    plain = compositing.render(_image(), _mask(), RemovalOptions())
    shaded = compositing.render(_image(), _mask(), RemovalOptions(add_shadow=True))
    alpha = _alpha(shaded)
    below = alpha[SUBJECT.bottom, SUBJECT.left + 10 : SUBJECT.right - 10]
    above = alpha[SUBJECT.top - 2, SUBJECT.left + 10 : SUBJECT.right - 10]
    assert (below > 40).all() and (below < 255).all()
    assert (above < below).all()
    pixel = _rgb(shaded.image, (SUBJECT.left + 30, SUBJECT.bottom))
    assert pixel[:3] == (0, 0, 0)
    inside = (slice(SUBJECT.top + 5, SUBJECT.bottom - 5), slice(SUBJECT.left + 5, SUBJECT.right - 5))
    assert np.array_equal(np.asarray(shaded.image)[inside], np.asarray(plain.image)[inside])
    assert shaded.foreground == plain.foreground == SUBJECT


def test_shadow_darkens_a_background_colour() -> None:
    """Over bg_color the shadow darkens the colour below the subject; far from it the colour is untouched."""
    rendered = compositing.render(_image(), _mask(), RemovalOptions(add_shadow=True, bg_color=(255, 255, 255)))
    assert rendered.image.mode == "RGB"
    below = _rgb(rendered.image, (SUBJECT.left + 30, SUBJECT.bottom))
    assert max(below) < 200
    assert _rgb(rendered.image, (5, 5)) == (255, 255, 255)


def test_max_megapixels_caps_the_result() -> None:
    """0.005 MP of a 200 x 100 (0.02 MP) image: half each side, 100 x 50; never upscaled."""
    rendered = compositing.render(_image(), _mask(), RemovalOptions(max_megapixels=0.005))
    assert rendered.image.size == (100, 50)
    box = rendered.foreground
    assert box is not None
    # The subject halves too (its edges within a pixel: the mask is resized bilinearly to the output).
    assert all(abs(got - want) <= 2 for got, want in zip(
        (box.left, box.top, box.right, box.bottom), (15, 10, 45, 30), strict=True))
    assert compositing.render(_image(), _mask(), RemovalOptions(max_megapixels=4)).image.size == (WIDTH, HEIGHT)


def test_zip_holds_the_colours_and_the_matte() -> None:
    """A zip result: color.jpg (RGB, the image's size) and alpha.png (the cut-out's alpha, exactly)."""
    options = RemovalOptions(output_format=OutputFormat.ZIP)
    rendered = compositing.render(_image(), _mask(), options)
    data = imaging.encode(rendered.image, OutputFormat.ZIP, 3)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == ["alpha.png", "color.jpg"]
        colour = Image.open(io.BytesIO(archive.read("color.jpg")))
        matte = Image.open(io.BytesIO(archive.read("alpha.png")))
        assert (colour.format, colour.mode, colour.size) == ("JPEG", "RGB", (WIDTH, HEIGHT))
        assert (matte.format, matte.mode) == ("PNG", "L")
        assert np.array_equal(np.asarray(matte), _alpha(rendered))


@pytest.mark.parametrize(
    ("fields", "option"),
    [
        ({"output_format": "zip", "bg_color": "#010203"}, "output_format"),
        ({"scale": "5%"}, "scale"),
        ({"scale": "50"}, "scale"),
        ({"position": "0% 101%"}, "position"),
        ({"roi": "10 10 5 50"}, "roi"),
        ({"crop_margin": "1px 2px"}, "crop_margin"),
        ({"crop": "true", "crop_margin": "1px 2px 3px"}, "crop_margin"),
        ({"crop": "true", "crop_margin": "1px 2px 3px 2001px"}, "crop_margin"),
        ({"output_type": "mask", "add_shadow": "true"}, "add_shadow"),
        ({"max_megapixels": "0"}, "max_megapixels"),
    ],
)
def test_contradicting_options_are_refused(fields: dict[str, str], option: str) -> None:
    """Options that cannot go together, or values out of range, are refused by the contract naming the option."""
    with pytest.raises(OptionError) as refused:
        contract.RemovalOptions.from_fields(fields)
    assert refused.value.option == option


def test_placement_options_round_trip_the_message() -> None:
    """The contract's text forms -> the message -> the contract again, in normal form."""
    options = contract.RemovalOptions.from_fields({
        "roi": "10 20px 50% 100%", "crop": "true", "crop_margin": "10px 5%", "scale": "80%", "position": "center",
        "add_shadow": "true", "max_megapixels": "0.25", "output_format": "zip",
    })
    again = contract.RemovalOptions.from_message(options.message())
    assert (again.roi, str(again.crop_margin), again.scale, again.position) == (
        "10px 20px 50% 100%", "10px 5% 10px 5%", "80%", "50% 50%")
    assert (again.add_shadow, again.max_megapixels, again.output_format) == (True, 0.25, OutputFormat.ZIP)


# --- Through the real inference service on the held test model (an all-foreground mask) ----------------------


def _png(size: tuple[int, int] = (WIDTH, HEIGHT)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 30)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_options_travel_over_grpc(held_inference_server: InferenceServer) -> None:
    """roi, scale, position, shadow and the megapixel cap in the proto reach the pipeline: a zip whose matte is
    the roi's rectangle, scaled into the centre, and metadata that say zip and application/zip."""
    options = pb.RemovalOptions(
        output_format=pb.OUTPUT_FORMAT_ZIP,
        roi=pb.Region(x1=pb.Length(value=0), y1=pb.Length(value=0), x2=pb.Length(value=50, percent=True),
                      y2=pb.Length(value=50, percent=True)),
        scale_percent=50, position=pb.Placement(horizontal_percent=50, vertical_percent=50), max_megapixels=0.02,
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{held_inference_server.port}") as channel:
        result = await remove_background(pb_grpc.BackgroundRemovalStub(channel), _png(), options, timeout_s=60)
    metadata = result.metadata
    assert (metadata.output_format, metadata.content_type) == (pb.OUTPUT_FORMAT_ZIP, "application/zip")
    assert (metadata.width, metadata.height) == (WIDTH, HEIGHT)
    # The roi is 100 x 50; half the canvas in its tighter dimension (height): 100 x 50 -> factor 1, centred.
    assert (metadata.foreground.left, metadata.foreground.top) == (50, 25)
    assert (metadata.foreground.width, metadata.foreground.height) == (100, 50)
    with zipfile.ZipFile(io.BytesIO(result.data)) as archive:
        matte = np.asarray(Image.open(io.BytesIO(archive.read("alpha.png"))))
    assert matte[50, 100] == 255 and matte[5, 5] == 0 and matte[90, 190] == 0


async def test_bad_placement_is_invalid_argument(held_inference_server: InferenceServer) -> None:
    """An out-of-range scale is INVALID_ARGUMENT naming the option."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{held_inference_server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await remove_background(
                pb_grpc.BackgroundRemovalStub(channel), _png(), pb.RemovalOptions(scale_percent=200), timeout_s=60
            )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("scale: ")
