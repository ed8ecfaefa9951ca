"""Removal options as the pipeline sees them, built from the gRPC message by the contract's one definition of
each option and of their combination rules (contract/options.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from contract import options as contract
from contract.options import CropMargin, OptionError, OutputFormat, OutputSize, OutputType, rgb_of
from inference_service.errors import InvalidRequest
from removai.v1 import inference_pb2 as pb

__all__ = ["OutputFormat", "OutputSize", "OutputType", "PngEncoder", "RemovalOptions", "parse_bg_color"]


class PngEncoder(enum.Enum):
    """Which encoder writes PNG results: the speed/size trade (`python -m inference_service.profile png` measures them)."""

    # numpy's Up filter + Intel ISA-L deflate: 5-8x faster than Pillow at level 3, ~1.15x Pillow level 6's bytes
    ISAL = "isal"
    PILLOW = "pillow"  # Pillow: adaptive filters + zlib at png_compress_level; smallest files at 6..9, slowest


def parse_bg_color(value: str) -> tuple[int, int, int] | None:
    """A colour in any form the contract accepts ('#RRGGBB', 'fff', 'red', ...) -> (r, g, b); '' -> None;
    anything else is an InvalidRequest."""
    if not value:
        return None
    try:
        return rgb_of(value)
    except OptionError as error:
        raise InvalidRequest(str(error)) from None


@dataclass(frozen=True)
class RemovalOptions:
    """The pipeline's view of the contract's options (contract.options.RemovalOptions, which validates the
    message): the colour as (r, g, b), the margin as numbers, the background image's length."""

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
        """Every value and combination checked by the contract; a refusal is an InvalidRequest."""
        try:
            options = contract.RemovalOptions.from_message(message)
        except OptionError as error:
            raise InvalidRequest(str(error)) from None
        margin = options.crop_margin or CropMargin()
        return cls(
            output_format=options.output_format,
            output_size=options.output_size,
            bg_color=rgb_of(options.bg_color) if options.bg_color else None,
            model=options.model or "",
            output_type=options.output_type,
            crop=options.crop,
            crop_margin_px=margin.px,
            crop_margin_percent=margin.percent,
            bg_image_bytes=message.bg_image_bytes,
        )
