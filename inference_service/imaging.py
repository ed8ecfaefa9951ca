"""Pillow and numpy steps of the pipeline: sniff, decode, model input, cut-out, encode. Blocking; no I/O."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from contract.options import OutputFormat, OutputSize
from inference_service.errors import UnprocessableImage, UnsupportedMediaType

Pixels = npt.NDArray[np.uint8]  # [height, width, 3] RGB
Mask = npt.NDArray[np.uint8]  # [height, width]: foreground probability x 255

# Leading bytes of the types the public API accepts (JPG, PNG, WEBP). The type is decided by the bytes, never
# by a file name or a Content-Type header; everything else (GIF, SVG, TIFF, text...) is refused before Pillow
# sees it, so Pillow's many other decoders are never exposed to callers.
_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("JPEG", b"\xff\xd8\xff", 0),
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("WEBP", b"WEBP", 8),
)


def sniff_format(data: bytes | bytearray) -> str:
    """The Pillow format name of the image in data; UnsupportedMediaType for anything but JPEG/PNG/WEBP."""
    for name, magic, offset in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (name != "WEBP" or data[:4] == b"RIFF"):
            return name
    raise UnsupportedMediaType("unsupported image type: only JPG, PNG and WEBP are accepted")


@dataclass(frozen=True)
class DecodedImage:
    """The image upright (EXIF orientation applied), as 8-bit RGB plus its own alpha when it had one."""

    rgb: Image.Image
    alpha: Image.Image | None

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.size


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grayscale ('I;16*', 'I', 'F') scaled into 'L'."""
    values = np.asarray(image)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
        scaled = values.astype(np.float32) / 257.0
    else:
        scaled = values.astype(np.float32)
    return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L")


def _split_colour_and_alpha(image: Image.Image) -> DecodedImage:
    mode = image.mode
    if mode in ("LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        return DecodedImage(image.convert("RGB"), image.getchannel("A"))
    if mode.startswith("I") or mode == "F":
        image = _to_8bit_gray(image)
    # RGB, L, 1, P, CMYK, YCbCr, LAB...: Pillow's conversions.
    return DecodedImage(image if image.mode == "RGB" else image.convert("RGB"), None)


def decode(data: bytes | bytearray, max_pixels: int) -> DecodedImage:
    """Decodes the first frame of a JPEG/PNG/WEBP, upright, refusing images of more than max_pixels."""
    fmt = sniff_format(data)
    # No warnings.catch_warnings() here: it is not thread-safe and decoding runs in a thread pool. Our own
    # max_pixels check comes first; Pillow's DecompressionBombError (above 2x its own limit) is caught below.
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = image.size
        # Checked on the header, before any pixel is decoded.
        if width * height > max_pixels:
            raise UnprocessableImage(
                f"image has {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
            )
        image.seek(0)  # animated PNG/WEBP: the first frame
        image.load()
        upright = ImageOps.exif_transpose(image)
        return _split_colour_and_alpha(upright)
    except UnprocessableImage:
        raise
    except Exception as exc:
        raise UnprocessableImage(f"the {fmt} image could not be decoded: {exc}") from exc


def model_input(image: DecodedImage, width: int, height: int) -> Pixels:
    """uint8 [height, width, 3]: the RGB image resized bilinearly to the model's input."""
    return np.asarray(image.rgb.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)


def alpha_from_mask(mask: Mask, width: int, height: int) -> Image.Image:
    """The model's 8-bit mask resized bilinearly to width x height: the alpha channel."""
    return Image.fromarray(mask).resize((width, height), Image.Resampling.BILINEAR)


def cutout(
    image: DecodedImage,
    mask: Mask,
    output_size: OutputSize,
    output_format: OutputFormat,
    bg_color: tuple[int, int, int] | None,
) -> Image.Image:
    """Applies the mask as alpha at the output size; composites over bg_color (white for JPG when unset)."""
    width, height = output_size.fit(*image.size)
    rgb = image.rgb
    own_alpha = image.alpha
    if (width, height) != image.size:
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)
        own_alpha = own_alpha.resize((width, height), Image.Resampling.LANCZOS) if own_alpha else None
    alpha = alpha_from_mask(mask, width, height)
    if own_alpha is not None:
        # A pixel the input already made transparent stays transparent.
        alpha = Image.fromarray(
            (np.asarray(alpha, dtype=np.uint16) * np.asarray(own_alpha, dtype=np.uint16) // 255).astype(np.uint8),
            "L",
        )
    if bg_color is None and output_format.has_alpha:
        result = rgb.copy()
        result.putalpha(alpha)
        return result
    background = Image.new("RGB", (width, height), bg_color or (255, 255, 255))
    return Image.composite(rgb, background, alpha)


def encode(image: Image.Image, output_format: OutputFormat, png_compress_level: int) -> bytes:
    """Encodes without metadata (orientation is already applied; EXIF may carry GPS and camera data)."""
    buffer = io.BytesIO()
    if output_format is OutputFormat.PNG:
        image.save(buffer, "PNG", compress_level=png_compress_level)
    elif output_format is OutputFormat.JPG:
        image.convert("RGB").save(buffer, "JPEG", quality=92, optimize=False)
    else:
        image.save(buffer, "WEBP", quality=90, alpha_quality=100, method=4)
    return buffer.getvalue()
