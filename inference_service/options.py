"""Removal options as the pipeline sees them, built from the gRPC message by the contract's one definition of
each option and of their combination rules (contract/options.py)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from contract import options as contract
from contract import placement
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
class Length:
    """Pixels of the original image, or a percentage of a width or height the option names."""

    value: float
    percent: bool = False

    def resolve(self, whole: int) -> float:
        """In pixels, a percentage taken of `whole`."""
        return whole * self.value / 100.0 if self.percent else self.value

    @classmethod
    def of(cls, message: pb.Length) -> Length:
        return cls(message.value, message.percent)


@dataclass(frozen=True)
class Region:
    """A rectangle from (x1, y1) to (x2, y2); percentages of the image's width (x) and height (y)."""

    x1: Length
    y1: Length
    x2: Length
    y2: Length

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels, clamped to the image; InvalidRequest when it is empty."""
        left = min(width, max(0, round(self.x1.resolve(width))))
        top = min(height, max(0, round(self.y1.resolve(height))))
        right = min(width, max(0, round(self.x2.resolve(width))))
        bottom = min(height, max(0, round(self.y2.resolve(height))))
        if right <= left or bottom <= top:
            raise InvalidRequest(
                f"roi: the rectangle ({left}, {top}) to ({right}, {bottom}) holds no pixel of the {width}x{height} "
                "image; give x1 < x2 and y1 < y2 inside it"
            )
        return left, top, right, bottom

    @classmethod
    def of(cls, message: pb.Region) -> Region:
        return cls(Length.of(message.x1), Length.of(message.y1), Length.of(message.x2), Length.of(message.y2))


@dataclass(frozen=True)
class Margins:
    """Crop margins per side: pixels, or percent of the subject's width (left, right) or height (top, bottom)."""

    top: Length
    right: Length
    bottom: Length
    left: Length

    @classmethod
    def of(cls, message: pb.Margins) -> Margins:
        return cls(Length.of(message.top), Length.of(message.right), Length.of(message.bottom),
                   Length.of(message.left))


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
    roi: Region | None = None
    crop_margins: Margins | None = None  # per side; crop_margin_px / crop_margin_percent are 0 then
    scale_percent: float = 0.0  # 0: the subject keeps its size
    position: tuple[float, float] | None = None  # (horizontal, vertical) percent of the free room; None: as it is
    add_shadow: bool = False
    max_megapixels: float = 0.0  # 0: no cap besides output_size

    @property
    def places_subject(self) -> bool:
        """Whether the subject is moved or resized on its canvas (scale or position)."""
        return bool(self.scale_percent) or self.position is not None

    def fit(self, width: int, height: int) -> tuple[int, int]:
        """The output dimensions for a width x height result: output_size's longer side, then max_megapixels;
        aspect kept, never upscaled."""
        out_width, out_height = self.output_size.fit(width, height)
        if self.max_megapixels and out_width * out_height > self.max_megapixels * 1_000_000:
            scale = math.sqrt(self.max_megapixels * 1_000_000 / (out_width * out_height))
            out_width, out_height = max(1, math.floor(out_width * scale)), max(1, math.floor(out_height * scale))
        return out_width, out_height
    decontaminate: bool = True  # soft edges' colours freed of the old background (inference_service/decontamination.py)

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
            roi=Region.of(placement.region(options.roi)) if options.roi else None,
            crop_margins=Margins.of(sides) if (sides := margin.margins()) is not None else None,
            scale_percent=placement.scale(options.scale) if options.scale else 0.0,
            position=_position(options.position),
            add_shadow=options.add_shadow,
            max_megapixels=options.max_megapixels or 0.0,
            decontaminate=options.decontaminate,
        )


def _position(text: str | None) -> tuple[float, float] | None:
    placed = placement.position(text) if text else None
    return None if placed is None else (placed.horizontal_percent, placed.vertical_percent)
