"""The output options: one definition of each public name and the proto enum value it stands for.

The public names (`png`, `small`, ...) are what the HTTP API, the CLI and stored images use; each member's
proto value is found by name (`OutputFormat.JPG` is `OUTPUT_FORMAT_JPG`), so adding an option means adding it
to the proto and one member here. The gateway's request models, its OpenAPI document, the CLI's choices and
the inference service's pipeline all take these enums.
"""

from __future__ import annotations

import enum

from removai.v1 import inference_pb2 as pb


class OutputFormat(enum.StrEnum):
    """The cut-out's encoding; the proto's UNSPECIFIED means PNG."""

    PNG = "png"
    JPG = "jpg"
    WEBP = "webp"

    @property
    def proto(self) -> pb.OutputFormat.ValueType:
        return pb.OutputFormat.Value(f"OUTPUT_FORMAT_{self.name}")

    @classmethod
    def from_proto(cls, value: int) -> OutputFormat:
        """The member for a proto value (UNSPECIFIED -> PNG); ValueError for a value the proto lacks."""
        if value == pb.OUTPUT_FORMAT_UNSPECIFIED:
            return cls.PNG
        name = pb.OutputFormat.Name(pb.OutputFormat.ValueType(value)).removeprefix("OUTPUT_FORMAT_")
        return cls[name]

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self]

    @property
    def extension(self) -> str:
        """The file name extension of stored and downloaded cut-outs."""
        return self.value

    @property
    def has_alpha(self) -> bool:
        return self is not OutputFormat.JPG


_CONTENT_TYPES = {OutputFormat.PNG: "image/png", OutputFormat.JPG: "image/jpeg", OutputFormat.WEBP: "image/webp"}


class OutputSize(enum.StrEnum):
    """Target for the longer side of the result; the result is never upscaled. UNSPECIFIED means ORIGINAL."""

    ORIGINAL = "original"
    SMALL = "small"
    MEDIUM = "medium"
    LARGE = "large"

    @property
    def proto(self) -> pb.OutputSize.ValueType:
        return pb.OutputSize.Value(f"OUTPUT_SIZE_{self.name}")

    @classmethod
    def from_proto(cls, value: int) -> OutputSize:
        """The member for a proto value (UNSPECIFIED -> ORIGINAL); ValueError for a value the proto lacks."""
        if value == pb.OUTPUT_SIZE_UNSPECIFIED:
            return cls.ORIGINAL
        name = pb.OutputSize.Name(pb.OutputSize.ValueType(value)).removeprefix("OUTPUT_SIZE_")
        return cls[name]

    @property
    def longer_side(self) -> int | None:
        return _LONGER_SIDES[self]

    def fit(self, width: int, height: int) -> tuple[int, int]:
        """The output dimensions for an image of width x height, keeping its aspect ratio."""
        target = self.longer_side
        longer = max(width, height)
        if target is None or longer <= target:
            return width, height
        scale = target / longer
        return max(1, round(width * scale)), max(1, round(height * scale))


# The proto comments name the same figures (protos/removai/v1/inference.proto).
_LONGER_SIDES = {OutputSize.ORIGINAL: None, OutputSize.SMALL: 1080, OutputSize.MEDIUM: 1920, OutputSize.LARGE: 2880}


class OutputType(enum.StrEnum):
    """The cut-out, or only its alpha matte (a single-channel PNG); the proto's UNSPECIFIED means CUTOUT."""

    CUTOUT = "cutout"
    MASK = "mask"

    @property
    def proto(self) -> pb.OutputType.ValueType:
        return pb.OutputType.Value(f"OUTPUT_TYPE_{self.name}")

    @classmethod
    def from_proto(cls, value: int) -> OutputType:
        """The member for a proto value (UNSPECIFIED -> CUTOUT); ValueError for a value the proto lacks."""
        if value == pb.OUTPUT_TYPE_UNSPECIFIED:
            return cls.CUTOUT
        name = pb.OutputType.Name(pb.OutputType.ValueType(value)).removeprefix("OUTPUT_TYPE_")
        return cls[name]
