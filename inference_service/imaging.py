"""The pipeline's Pillow and numpy steps: sniff, decode, model input, mask to alpha, encode. Blocking, no I/O."""

from __future__ import annotations

import contextlib
import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from isal import isal_zlib
from PIL import Image, ImageOps

from contract.options import OutputFormat
from inference_service.errors import UnprocessableImage, UnsupportedMediaType
from inference_service.options import PngEncoder

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


def _limit(max_pixels: int) -> str:
    return f"the limit is {max_pixels:,} pixels ({max_pixels / 1_000_000:.0f} MP)"


def _open(data: bytes | bytearray, max_pixels: int) -> tuple[str, Image.Image]:
    """The image's format and its Pillow image, header read and size checked, no pixel decoded yet."""
    fmt = sniff_format(data)
    # No warnings.catch_warnings() here: it is not thread-safe and decoding runs in a thread pool. Our own
    # max_pixels check comes first; Pillow's DecompressionBombError (above 2x its own limit) is caught below.
    try:
        try:
            image = Image.open(io.BytesIO(data), formats=[fmt])
        except Image.DecompressionBombError as exc:
            # Pillow refuses sizes above twice its own limit while reading the header: the same answer as ours,
            # naming whichever limit is lower.
            limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
            raise UnprocessableImage(f"the image has more than {limit:,} pixels; {_limit(limit)}") from exc
        width, height = image.size
        # Checked on the header, before any pixel is decoded.
        if width * height > max_pixels:
            raise UnprocessableImage(f"the image is {width}x{height} = {width * height:,} pixels; {_limit(max_pixels)}")
        return fmt, image
    except UnprocessableImage:
        raise
    except Exception as exc:
        raise UnprocessableImage(f"the {fmt} image could not be decoded: {exc}") from exc


def _upright(fmt: str, image: Image.Image) -> DecodedImage:
    try:
        image.seek(0)  # animated PNG/WEBP: the first frame
        image.load()
        # In place: exif_transpose otherwise returns a copy even when there is nothing to turn (36 MB at 12 MP).
        ImageOps.exif_transpose(image, in_place=True)
        return _split_colour_and_alpha(image)
    except Exception as exc:
        raise UnprocessableImage(f"the {fmt} image could not be decoded: {exc}") from exc


def decode(data: bytes | bytearray, max_pixels: int) -> DecodedImage:
    """Decodes the first frame of a JPEG/PNG/WEBP, upright, refusing images of more than max_pixels."""
    return _upright(*_open(data, max_pixels))


def decode_for_model(data: bytes | bytearray, max_pixels: int, side: int) -> tuple[DecodedImage, bool]:
    """(the decoded image, whether it is the full size). A JPEG large enough is decoded at 1/2, 1/4 or 1/8
    scale by libjpeg's DCT scaling (Pillow's draft()), the smallest that still covers side x side; the caller
    makes the model input from it and decodes the full size with decode() once it needs it (after the mask is
    back), so no full-size pixels wait for the model. Other images are decoded in full, once."""
    fmt, image = _open(data, max_pixels)
    full_width, full_height = image.size
    if fmt == "JPEG":
        with contextlib.suppress(Exception):  # no draft is no saving, never an error: decoded in full then
            image.draft(None, (side, side))  # a square: covers the input whichever way EXIF turns the image
    decoded = _upright(fmt, image)
    width, height = decoded.size  # turned by EXIF maybe: the pixel count says whether it was scaled
    return decoded, width * height == full_width * full_height


def model_input(image: DecodedImage, width: int, height: int) -> Pixels:
    """uint8 [height, width, 3]: the RGB image resized bilinearly to the model's input."""
    return np.asarray(image.rgb.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)


def alpha_from_mask(mask: Mask, width: int, height: int) -> Image.Image:
    """The model's 8-bit mask resized bilinearly to width x height: the alpha channel."""
    return Image.fromarray(mask).resize((width, height), Image.Resampling.BILINEAR)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {"RGB": 2, "RGBA": 6}  # 8 bits per sample
_PNG_FILTER_UP = 2


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))


_PNG_BLOCK_ROWS = 128  # rows filtered and deflated at a time: a small buffer instead of a full-size copy


def _png_isal(image: Image.Image, level: int) -> bytes:
    """An 8-bit RGB/RGBA PNG: every row with PNG's Up filter (the row minus the one above, vectorised in numpy:
    filters work on the unfiltered bytes, so rows are independent), deflated by ISA-L at level 0..3 as one
    stream, block by block. Neither the pixels (numpy's view of a Pillow image is a full-size copy) nor the
    filtered rows ever exist at full size: each block's rows (and the one above them) are copied out of the image,
    and the deflated parts are joined once, into the file itself (12 MP RGBA: 48 MB of pixels and two 11 MB joins
    fewer)."""
    width, height = image.size
    row_bytes = width * len(image.getbands())
    block = np.empty((min(_PNG_BLOCK_ROWS, height), row_bytes + 1), dtype=np.uint8)
    block[:, 0] = _PNG_FILTER_UP
    deflate = isal_zlib.compressobj(level)
    parts = []
    for top in range(0, height, _PNG_BLOCK_ROWS):
        bottom = min(top + _PNG_BLOCK_ROWS, height)
        out = block[: bottom - top]
        # The block's rows with the row above them (all zeros above the first).
        above = max(top - 1, 0)
        rows = np.frombuffer(image.crop((0, above, width, bottom)).tobytes(), dtype=np.uint8).reshape(-1, row_bytes)
        if top == 0:
            out[0, 1:] = rows[0]
            np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])  # uint8 wraps modulo 256
        else:
            np.subtract(rows[1:], rows[:-1], out=out[:, 1:])
        parts.append(deflate.compress(out.data))  # the first rows of block: C-contiguous, no copy
    parts.append(deflate.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPES[image.mode], 0, 0, 0)
    crc = zlib.crc32(b"IDAT")
    for part in parts:
        crc = zlib.crc32(part, crc)
    return b"".join(
        (_PNG_SIGNATURE, _png_chunk(b"IHDR", header), struct.pack(">I", sum(map(len, parts))), b"IDAT", *parts,
         struct.pack(">I", crc), _png_chunk(b"IEND", b""))
    )


def encode_png(image: Image.Image, encoder: PngEncoder, level: int) -> bytes:
    """PNG bytes of an RGB/RGBA image by `encoder`. Pillow uses `level` (zlib 0..9, adaptive filters); ISA-L
    uses min(level, 3) (its levels are 0..3), Up filter. Both decode (Pillow, libpng) to identical pixels."""
    if encoder is PngEncoder.ISAL and image.mode in _PNG_COLOUR_TYPES:
        return _png_isal(image, min(level, isal_zlib.ISAL_BEST_COMPRESSION))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=level)
    return buffer.getvalue()


def encode(
    image: Image.Image,
    output_format: OutputFormat,
    png_compress_level: int,
    png_encoder: PngEncoder = PngEncoder.ISAL,
) -> bytes:
    """Encodes without metadata (orientation is already applied; EXIF may carry GPS and camera data). PNG:
    png_compress_level is png_encoder's own level (see encode_png)."""
    if output_format is OutputFormat.PNG:
        return encode_png(image, png_encoder, png_compress_level)
    if output_format is OutputFormat.ZIP:
        return encode_zip(image, png_compress_level, png_encoder)
    buffer = io.BytesIO()
    if output_format is OutputFormat.JPG:
        image.convert("RGB").save(buffer, "JPEG", quality=92, optimize=False)
    else:
        image.save(buffer, "WEBP", quality=90, alpha_quality=100, method=4)
    return buffer.getvalue()


# The members of a zip result: the colours (JPEG, as small as an opaque photo gets) and the matte (PNG, exact).
ZIP_COLOUR = "color.jpg"
ZIP_ALPHA = "alpha.png"


def encode_zip(image: Image.Image, png_compress_level: int, png_encoder: PngEncoder = PngEncoder.ISAL) -> bytes:
    """A ZIP holding ZIP_COLOUR (the RGB, quality 92) and ZIP_ALPHA (the alpha, an 8-bit grayscale PNG); the
    members are stored, not deflated again (both are compressed already)."""
    colour = io.BytesIO()
    image.convert("RGB").save(colour, "JPEG", quality=92, optimize=False)
    alpha = image.getchannel("A") if image.mode == "RGBA" else Image.new("L", image.size, 255)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(ZIP_COLOUR, colour.getvalue())
        archive.writestr(ZIP_ALPHA, encode_png(alpha, png_encoder, png_compress_level))
    return buffer.getvalue()
