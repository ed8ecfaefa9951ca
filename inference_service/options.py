"""Removal options as the pipeline sees them, validated from the gRPC message (the option enums themselves
are the contract's: contract/options.py)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from contract.options import OutputFormat, OutputSize
from inference_service.errors import InvalidRequest
from removai.v1 import inference_pb2 as pb

__all__ = ["OutputFormat", "OutputSize", "PngEncoder", "RemovalOptions", "parse_bg_color"]


class PngEncoder(enum.Enum):
    """Which encoder writes PNG results: the speed/size trade (bench/png_encoders.py measures them)."""

    # numpy's Up filter + Intel ISA-L deflate: 5-8x faster than Pillow at level 3, ~1.15x Pillow level 6's bytes
    ISAL = "isal"
    PILLOW = "pillow"  # Pillow: adaptive filters + zlib at png_compress_level; smallest files at 6..9, slowest


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
        return cls(
            output_format=output_format,
            output_size=output_size,
            bg_color=parse_bg_color(message.bg_color),
            model=message.model,
        )
