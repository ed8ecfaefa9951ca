"""Removal options as the pipeline sees them, validated from the gRPC message."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from inference_service.errors import InvalidRequest
from removai.v1 import inference_pb2 as pb


class OutputFormat(enum.Enum):
    PNG = "png"
    JPG = "jpg"
    WEBP = "webp"

    @property
    def content_type(self) -> str:
        return {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}[self.value]

    @property
    def has_alpha(self) -> bool:
        return self is not OutputFormat.JPG


class PngEncoder(enum.Enum):
    """Which encoder writes PNG results: the speed/size trade (bench/png_encoders.py measures them)."""

    # numpy's Up filter + Intel ISA-L deflate: 5-8x faster than Pillow at level 3, ~1.15x Pillow level 6's bytes
    ISAL = "isal"
    PILLOW = "pillow"  # Pillow: adaptive filters + zlib at png_compress_level; smallest files at 6..9, slowest


class OutputSize(enum.Enum):
    """Target for the longer side of the result; the result is never upscaled."""

    ORIGINAL = "original"
    SMALL = "small"
    MEDIUM = "medium"
    LARGE = "large"

    @property
    def longer_side(self) -> int | None:
        return {"original": None, "small": 1080, "medium": 1920, "large": 2880}[self.value]

    def fit(self, width: int, height: int) -> tuple[int, int]:
        """The output dimensions for an image of width x height, keeping its aspect ratio."""
        target = self.longer_side
        longer = max(width, height)
        if target is None or longer <= target:
            return width, height
        scale = target / longer
        return max(1, round(width * scale)), max(1, round(height * scale))


_FORMATS = {
    pb.OUTPUT_FORMAT_UNSPECIFIED: OutputFormat.PNG,
    pb.OUTPUT_FORMAT_PNG: OutputFormat.PNG,
    pb.OUTPUT_FORMAT_JPG: OutputFormat.JPG,
    pb.OUTPUT_FORMAT_WEBP: OutputFormat.WEBP,
}
_SIZES = {
    pb.OUTPUT_SIZE_UNSPECIFIED: OutputSize.ORIGINAL,
    pb.OUTPUT_SIZE_ORIGINAL: OutputSize.ORIGINAL,
    pb.OUTPUT_SIZE_SMALL: OutputSize.SMALL,
    pb.OUTPUT_SIZE_MEDIUM: OutputSize.MEDIUM,
    pb.OUTPUT_SIZE_LARGE: OutputSize.LARGE,
}
FORMAT_TO_PROTO = {v: k for k, v in _FORMATS.items() if k != pb.OUTPUT_FORMAT_UNSPECIFIED}
_HEX_COLOR = re.compile(r"#([0-9A-Fa-f]{6})")
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def parse_bg_color(value: str) -> tuple[int, int, int] | None:
    """'#RRGGBB' -> (r, g, b); '' -> None; anything else is an InvalidRequest."""
    if not value:
        return None
    match = _HEX_COLOR.fullmatch(value)
    if match is None:
        raise InvalidRequest(f"bg_color must look like #RRGGBB, got {value!r}")
    rgb = int(match.group(1), 16)
    return (rgb >> 16) & 0xFF, (rgb >> 8) & 0xFF, rgb & 0xFF


@dataclass(frozen=True)
class RemovalOptions:
    output_format: OutputFormat = OutputFormat.PNG
    output_size: OutputSize = OutputSize.ORIGINAL
    bg_color: tuple[int, int, int] | None = None
    model: str = ""  # empty: the service's default model

    @classmethod
    def from_proto(cls, message: pb.RemovalOptions) -> RemovalOptions:
        if message.output_format not in _FORMATS:
            raise InvalidRequest(f"unknown output_format {message.output_format}")
        if message.output_size not in _SIZES:
            raise InvalidRequest(f"unknown output_size {message.output_size}")
        if message.model and _MODEL_NAME.fullmatch(message.model) is None:
            raise InvalidRequest(f"invalid model name {message.model!r}")
        return cls(
            output_format=_FORMATS[message.output_format],
            output_size=_SIZES[message.output_size],
            bg_color=parse_bg_color(message.bg_color),
            model=message.model,
        )
