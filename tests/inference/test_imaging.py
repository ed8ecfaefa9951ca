"""Unit tests of the Pillow/numpy steps: type sniffing, decoding of every mode, sizes, encoding (the cut-out is
test_compositing's)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from contract.options import OutputFormat, OutputSize
from inference_service import imaging
from inference_service.errors import InvalidRequest, UnprocessableImage, UnsupportedMediaType
from inference_service.options import PngEncoder, parse_bg_color
from inference_service.settings import InferenceSettings
from tests.reference import DATA


def _encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[np.newaxis, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, np.newaxis].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1), "RGB")


@pytest.mark.parametrize(
    ("fmt", "expected"), [("JPEG", "JPEG"), ("PNG", "PNG"), ("WEBP", "WEBP")]
)
def test_sniff_accepts_jpeg_png_webp(fmt: str, expected: str) -> None:
    """The accepted types are recognised from their bytes alone."""
    assert imaging.sniff_format(_encoded(_gradient(), fmt)) == expected


@pytest.mark.parametrize(
    "data",
    [
        _encoded(_gradient(), "GIF"),
        _encoded(_gradient(), "BMP"),
        _encoded(_gradient(), "TIFF"),
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        b"just some text\n",
        b"RIFF\x00\x00\x00\x00WAVEfmt ",
        b"",
    ],
    ids=["gif", "bmp", "tiff", "svg", "text", "riff-wave", "empty"],
)
def test_sniff_refuses_other_types(data: bytes) -> None:
    """Anything but JPEG/PNG/WEBP is UnsupportedMediaType, whatever Pillow could decode."""
    with pytest.raises(UnsupportedMediaType):
        imaging.sniff_format(data)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "RGBA", "CMYK", "I;16", "1"])
def test_decode_normalises_every_mode_to_rgb(mode: str) -> None:
    """Every input mode decodes to 8-bit RGB, with an alpha channel exactly when the input had one."""
    source = _gradient().convert("RGBA" if mode in ("LA", "PA") else "RGB")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(source.convert("L"), dtype=np.uint16) * 257)
        assert image.mode == "I;16"
    elif mode == "PA":
        image = source.convert("P")
        image.info["transparency"] = 0
    else:
        image = source.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = imaging.decode(_encoded(image, fmt), max_pixels=10_000)
    assert decoded.rgb.mode == "RGB"
    assert decoded.size == (64, 48)
    assert (decoded.alpha is not None) == (mode in ("LA", "PA", "RGBA"))
    if mode == "I;16":
        # 16-bit values are scaled, not clipped: the gradient survives.
        gray = np.asarray(decoded.rgb)[..., 0]
        expected = np.asarray(source.convert("L"))
        assert np.abs(gray.astype(int) - expected.astype(int)).max() <= 1


def test_decode_applies_exif_orientation() -> None:
    """A 64x48 picture stored rotated with EXIF orientation 6 decodes upright as 64x48, pixels included."""
    upright = _gradient()
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = imaging.decode(_encoded(stored, "PNG", exif=exif), max_pixels=10_000)
    assert decoded.size == (64, 48)
    assert np.array_equal(np.asarray(decoded.rgb), np.asarray(upright))


def test_decode_for_model_scales_only_large_jpegs_and_keeps_orientation() -> None:
    """A JPEG whose shorter side is at least twice the model's is decoded at a DCT scale that still covers the
    model input (upright: EXIF orientation 6 applied, as decode() does) and the caller is told it is not the
    full size; a smaller JPEG and a large PNG are decoded in full, identical to decode()."""
    upright = _gradient(64, 48).resize((3000, 2100), Image.Resampling.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = 6
    large = _encoded(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)
    reduced, full_size = imaging.decode_for_model(large, 10**8, 1024)
    assert not full_size
    assert reduced.size == (1500, 1050)  # 1/2: 1/4 would be 750x525, smaller than the model's 1024
    full = imaging.decode(large, 10**8)
    assert full.size == (3000, 2100)
    difference = np.abs(imaging.model_input(reduced, 1024, 1024).astype(np.int16)
                        - imaging.model_input(full, 1024, 1024).astype(np.int16))
    assert float(difference.mean()) < 1.0
    for data in (_encoded(upright.resize((1500, 1050)), "JPEG"), _encoded(upright, "PNG")):
        decoded, full_size = imaging.decode_for_model(data, 10**8, 1024)
        assert full_size
        assert np.array_equal(np.asarray(decoded.rgb), np.asarray(imaging.decode(data, 10**8).rgb))


def test_decode_takes_first_frame_of_animation() -> None:
    """An animated PNG decodes to its first frame."""
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    data = _encoded(frames[0], "PNG", save_all=True, append_images=frames[1:])
    decoded = imaging.decode(data, max_pixels=10_000)
    assert decoded.rgb.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("dims", "message"),
    [
        # 400 MP: Pillow itself calls it a decompression bomb while reading the header.
        ((20_000, 20_000), "the image has more than 50,000,000 pixels; the limit is 50,000,000 pixels (50 MP)"),
        ((10_000, 6_000), "the image is 10000x6000 = 60,000,000 pixels; the limit is 50,000,000 pixels (50 MP)"),
    ],
    ids=["400MP", "60MP"],
)
def test_decode_refuses_too_many_pixels_before_decoding(dims: tuple[int, int], message: str) -> None:
    """A small file declaring a huge canvas is refused as unprocessable with the service's own 50 MP message,
    whether or not Pillow would have called it a decompression bomb."""
    bomb = _encoded(Image.new("1", dims), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(UnprocessableImage) as refused:
        imaging.decode(bomb, max_pixels=50_000_000)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    "data",
    [b"\xff\xd8\xff\xe0" + b"\x00" * 100, _encoded(_gradient(640, 480), "PNG")[:2000], b"RIFF\x10\x00\x00\x00WEBPVP8 junk"],
    ids=["jpeg-garbage", "png-truncated", "webp-garbage"],
)
def test_decode_refuses_corrupt_bytes_as_unprocessable(data: bytes) -> None:
    """Bytes of an accepted type that do not decode are UnprocessableImage, not a crash."""
    with pytest.raises(UnprocessableImage):
        imaging.decode(data, max_pixels=10_000)


@pytest.mark.parametrize(
    ("size", "dims", "expected"),
    [
        (OutputSize.ORIGINAL, (4000, 3000), (4000, 3000)),
        (OutputSize.SMALL, (4000, 3000), (1080, 810)),
        (OutputSize.MEDIUM, (3000, 4000), (1440, 1920)),
        (OutputSize.LARGE, (4000, 3000), (2880, 2160)),
        (OutputSize.LARGE, (800, 600), (800, 600)),
    ],
)
def test_output_size_is_the_longer_side_and_never_upscales(
    size: OutputSize, dims: tuple[int, int], expected: tuple[int, int]
) -> None:
    """small/medium/large bound the longer side at 1080/1920/2880 px, keeping the aspect ratio."""
    assert size.fit(*dims) == expected


def test_parse_bg_color() -> None:
    """Hex (6 or 3 digits, '#' or not) and CSS names parse to a triple; anything else is an InvalidRequest."""
    assert parse_bg_color("#FF8000") == (255, 128, 0)
    assert parse_bg_color("ff8000") == (255, 128, 0)
    assert parse_bg_color("#f80") == (255, 136, 0)
    assert parse_bg_color("red") == (255, 0, 0)
    assert parse_bg_color("") is None
    for bad in ("#GG0000", "#FF800000", "#FF80", "notacolour"):
        with pytest.raises(InvalidRequest):
            parse_bg_color(bad)


@pytest.mark.parametrize("fmt", [fmt for fmt in OutputFormat if fmt is not OutputFormat.ZIP])
def test_encode_round_trips(fmt: OutputFormat) -> None:
    """Each image format encodes to bytes that decode to the same size and the expected mode (a zip holds two
    images: tests/inference/test_placement.py)."""
    image = _gradient()
    if fmt.has_alpha:
        image.putalpha(image.getchannel("R"))
    data = imaging.encode(image, fmt, png_compress_level=3)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.size == (64, 48)
    assert decoded.format == {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[fmt.value]
    assert decoded.mode == ("RGBA" if fmt.has_alpha else "RGB")


def test_pillow_bomb_guard_still_applies_above_a_raised_limit() -> None:
    """With max_pixels set above Pillow's own guard, a 400 MP canvas is still refused as unprocessable."""
    bomb = _encoded(Image.new("1", (20_000, 20_000)), "PNG")
    with pytest.raises(UnprocessableImage, match="more than 178,956,970 pixels; the limit is 178,956,970 pixels"):
        imaging.decode(bomb, max_pixels=10**10)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
@pytest.mark.parametrize("encoder", list(PngEncoder))
def test_png_encoders_keep_every_pixel(encoder: PngEncoder, mode: str) -> None:
    """Each PNG encoder, at each level, writes a PNG that Pillow decodes to exactly the pixels given (random
    bytes exercise the Up filter's wrap-around modulo 256; odd sizes its row arithmetic)."""
    rng = np.random.default_rng(10)
    pixels = rng.integers(0, 256, (261, 53, len(mode)), dtype=np.uint8)  # 261 rows: blocks of 128, then 5
    for level in (0, 1, 3, 9):
        data = imaging.encode_png(Image.fromarray(pixels, mode), encoder, level)
        decoded = Image.open(io.BytesIO(data))
        assert decoded.format == "PNG" and decoded.mode == mode
        np.testing.assert_array_equal(np.asarray(decoded), pixels)


def test_isal_png_stays_within_the_size_target_of_pillow_level_6() -> None:
    """The fast encoder's file is at most 1.25x the bytes of Pillow's compress_level=6 on a photo
    with a cut-out's alpha (and the default encoder is the fast one)."""
    with Image.open(DATA / "coffee.jpg") as opened:
        photo = opened.convert("RGB")
    yy, xx = np.mgrid[0 : photo.height, 0 : photo.width]
    inside = ((xx - photo.width / 2) / (photo.width * 0.35)) ** 2 + ((yy - photo.height / 2) / (photo.height * 0.4)) ** 2
    photo.putalpha(Image.fromarray(np.where(inside <= 1.0, 255, 0).astype(np.uint8), "L"))
    level6 = len(imaging.encode_png(photo, PngEncoder.PILLOW, 6))
    assert InferenceSettings().png_encoder is PngEncoder.ISAL
    for level in (InferenceSettings().png_isal_level, 3):
        fast = imaging.encode(photo, OutputFormat.PNG, png_compress_level=level)
        assert fast == imaging.encode_png(photo, PngEncoder.ISAL, level)
        assert len(fast) <= 1.25 * level6, (level, len(fast), level6)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(fast))), np.asarray(photo))


def test_png_of_other_modes_falls_back_to_pillow() -> None:
    """A mode the fast writer does not handle (here 8-bit grey) is still written, by Pillow."""
    grey = _gradient().convert("L")
    decoded = Image.open(io.BytesIO(imaging.encode_png(grey, PngEncoder.ISAL, 3)))
    assert decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(grey))
