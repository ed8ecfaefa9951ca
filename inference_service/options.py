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


class OutputType(enum.Enum):
    """The cut-out itself, or only its alpha matte (a single-channel PNG)."""

    CUTOUT = "cutout"
    MASK = "mask"


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
_TYPES = {
    pb.OUTPUT_TYPE_UNSPECIFIED: OutputType.CUTOUT,
    pb.OUTPUT_TYPE_CUTOUT: OutputType.CUTOUT,
    pb.OUTPUT_TYPE_MASK: OutputType.MASK,
}
FORMAT_TO_PROTO = {v: k for k, v in _FORMATS.items() if k != pb.OUTPUT_FORMAT_UNSPECIFIED}
TYPE_TO_PROTO = {OutputType.CUTOUT: pb.OUTPUT_TYPE_CUTOUT, OutputType.MASK: pb.OUTPUT_TYPE_MASK}
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
        if message.output_format not in _FORMATS:
            raise InvalidRequest(f"unknown output_format {message.output_format}")
        if message.output_size not in _SIZES:
            raise InvalidRequest(f"unknown output_size {message.output_size}")
        if message.model and _MODEL_NAME.fullmatch(message.model) is None:
            raise InvalidRequest(f"invalid model name {message.model!r}")
        if message.output_type not in _TYPES:
            raise InvalidRequest(f"unknown output_type {message.output_type}")
        options = cls(
            output_format=_FORMATS[message.output_format],
            output_size=_SIZES[message.output_size],
            bg_color=parse_bg_color(message.bg_color),
            model=message.model,
            output_type=_TYPES[message.output_type],
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
