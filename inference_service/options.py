"""Removal options as the pipeline sees them, validated from the gRPC message (the option enums themselves
are the contract's: contract/options.py)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from contract.options import OutputFormat, OutputSize, OutputType
from inference_service.errors import InvalidRequest
from removai.v1 import inference_pb2 as pb

__all__ = ["OutputFormat", "OutputSize", "OutputType", "PngEncoder", "RemovalOptions", "parse_bg_color"]


class PngEncoder(enum.Enum):
    """Which encoder writes PNG results: the speed/size trade (`python -m inference_service.profile png` measures them)."""

    # numpy's Up filter + Intel ISA-L deflate: 5-8x faster than Pillow at level 3, ~1.15x Pillow level 6's bytes
    ISAL = "isal"
    PILLOW = "pillow"  # Pillow: adaptive filters + zlib at png_compress_level; smallest files at 6..9, slowest


MAX_CROP_MARGIN_PX = 2000
MAX_CROP_MARGIN_PERCENT = 100.0
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
    output_type: OutputType = OutputType.CUTOUT
    crop: bool = False
    crop_margin_px: int = 0
    crop_margin_percent: float = 0.0
    bg_image_bytes: int = 0  # the length of the background image that follows the options; 0 for none

    @classmethod
    def from_proto(cls, message: pb.RemovalOptions) -> RemovalOptions:
        try:
            output_format = OutputFormat.from_proto(message.output_format)
        except (ValueError, KeyError):
            raise InvalidRequest(f"unknown output_format {message.output_format}") from None
        try:
            output_size = OutputSize.from_proto(message.output_size)
        except (ValueError, KeyError):
            raise InvalidRequest(f"unknown output_size {message.output_size}") from None
        if message.model and _MODEL_NAME.fullmatch(message.model) is None:
            raise InvalidRequest(f"invalid model name {message.model!r}")
        try:
            output_type = OutputType.from_proto(message.output_type)
        except (ValueError, KeyError):
            raise InvalidRequest(f"unknown output_type {message.output_type}") from None
        options = cls(
            output_format=output_format,
            output_size=output_size,
            bg_color=parse_bg_color(message.bg_color),
            model=message.model,
            output_type=output_type,
            crop=message.crop,
            crop_margin_px=message.crop_margin_px,
            crop_margin_percent=message.crop_margin_percent,
            bg_image_bytes=message.bg_image_bytes,
        )
        options.check_combination()
        return options

    def check_combination(self) -> None:
        """Options that contradict each other are an InvalidRequest, never silently ignored."""
        if self.crop_margin_px and self.crop_margin_percent:
            raise InvalidRequest("give crop_margin in px or in percent, not both")
        if self.crop_margin_px > MAX_CROP_MARGIN_PX:
            raise InvalidRequest(f"crop_margin_px must be 0..{MAX_CROP_MARGIN_PX}, got {self.crop_margin_px}")
        if not 0.0 <= self.crop_margin_percent <= MAX_CROP_MARGIN_PERCENT:  # NaN fails this too
            raise InvalidRequest(
                f"crop_margin_percent must be 0..{MAX_CROP_MARGIN_PERCENT:g}, got {self.crop_margin_percent}"
            )
        if (self.crop_margin_px or self.crop_margin_percent) and not self.crop:
            raise InvalidRequest("crop_margin applies only with crop")
        if self.bg_color is not None and self.bg_image_bytes:
            raise InvalidRequest("give bg_color or a background image, not both")
        if self.output_type is OutputType.MASK:
            if self.output_format is not OutputFormat.PNG:
                raise InvalidRequest("a mask is a single-channel PNG: output_format must be png")
            if self.bg_color is not None or self.bg_image_bytes:
                raise InvalidRequest("a mask has no background: leave bg_color and the background image out")
