"""Request bodies and response shapes of the public API (field names as the spec's examples show them)."""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.options import OutputFormat, OutputSize, OutputType
from gateway.errors import InvalidRequest
from gateway.net.inference import Options, crop_margin_of
from gateway.store.tables import Batch, Image

_Model = TypeVar("_Model", bound=BaseModel)
# The inference service's threshold for the foreground box (inference_service/framing.py; the gateway does
# not import the server's modules, a test holds the two equal).
FOREGROUND_ALPHA_THRESHOLD = 16
CROP_MARGIN_PATTERN = r"^(\d{1,5}(px)?|\d{1,3}(\.\d{1,2})?%)$"


class RemovalParams(BaseModel):
    """Options shared by every remove-background endpoint; unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    output_format: OutputFormat = OutputFormat.PNG
    output_size: OutputSize = OutputSize.ORIGINAL
    bg_color: str | None = Field(None, pattern=r"^#[0-9A-Fa-f]{6}$")
    webhook_url: str | None = Field(None, max_length=2048)
    output_type: OutputType = Field(
        OutputType.CUTOUT, description="`mask`: only the alpha matte, a single-channel PNG equal to the cut-out's alpha"
    )
    crop: bool = Field(False, description="crop the result to the foreground's bounding box (plus crop_margin)")
    crop_margin: str | None = Field(
        None, pattern=CROP_MARGIN_PATTERN,
        description="with crop: pixels ('30' or '30px', at most 2000) or percent of the box ('10%', at most 100) "
        "added on each side, clamped to the image",
    )
    model: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,128}$", description="a model from GET /v1/models; default: the marked one"
    )
    bg_image_url: str | None = Field(
        None, max_length=2048, description="an image scaled to cover the result and composited under it"
    )

    @field_validator("crop_margin", mode="before")
    @classmethod
    def _margin_as_text(cls, value: object) -> object:
        """A bare JSON number is pixels."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _compatible(self) -> RemovalParams:
        if self.crop_margin is not None:
            if not self.crop:
                raise ValueError("crop_margin: applies only with crop=true")
            margin_px, margin_percent = crop_margin_of(self.crop_margin)
            if margin_px > 2000 or margin_percent > 100:
                raise ValueError("crop_margin: at most 2000px or 100%")
        if self.output_type is OutputType.MASK:
            if self.output_format is not OutputFormat.PNG:
                raise ValueError("output_format: a mask is a single-channel PNG; use png (the default)")
            if self.bg_color or self.bg_image_url:
                raise ValueError("output_type: a mask has no background; leave bg_color and bg_image_url out")
        if self.bg_color and self.bg_image_url:
            raise ValueError("bg_color: give bg_color or bg_image_url, not both")
        return self

    @property
    def options(self) -> Options:
        return Options(
            self.output_format.value, self.output_size.value, self.bg_color.upper() if self.bg_color else None,
            output_type=self.output_type.value, crop=self.crop, crop_margin=self.crop_margin, model=self.model,
            bg_image_url=self.bg_image_url,
        )


class UrlRequest(RemovalParams):
    url: str = Field(max_length=2048)


class FileRequest(RemovalParams):
    """The multipart form's text fields (the file itself is streamed separately)."""


class BatchUrlRequest(RemovalParams):
    urls: list[str] = Field(min_length=1)


def parse(model: type[_Model], data: Any) -> _Model:
    """Validates data against model; the first problem becomes a 400 invalid_request naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        message = first["msg"]
        if first["type"] == "string_pattern_mismatch" and field == "bg_color":
            message = "must be a hex colour like #FF0000"
        elif first["type"] == "string_pattern_mismatch" and field == "crop_margin":
            message = "must be pixels like 30 or 30px, or a percentage like 10%"
        elif first["type"] == "value_error":
            # Our own cross-field checks name their field first: "field: message".
            field, _, message = str(first["ctx"]["error"]).partition(": ")
        elif first["type"] == "extra_forbidden":
            message = "is not a known parameter"
        raise InvalidRequest(f"{field}: {message}") from exc


def iso(moment: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, to the second, as the spec's examples show."""
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def image_json(image: Image, output_url: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"id": image.id}
    if image.original_url:
        data["original_url"] = image.original_url
    if output_url:
        data["output_url"] = output_url
    data.update(
        output_size=image.output_size,
        output_format=image.output_format,
        created_at=iso(image.created_at),
        status=image.status,
    )
    if image.bg_color:
        data["bg_color"] = image.bg_color
    if image.batch_id:
        data["batch_id"] = image.batch_id
    for name, value in (image.options or {}).items():
        data[name] = value
    if image.status == "completed":
        data.update(width=image.width, height=image.height, size_bytes=image.size_bytes)
        data["foreground"] = foreground_json(image)
    if image.status == "failed":
        data["error"] = {"code": image.error_code, "message": image.error_message}
    return data


def foreground_json(image: Image) -> dict[str, int] | None:
    """The foreground's box in the result's pixels; None when no pixel's alpha is above the threshold (and for
    images completed before the box was recorded)."""
    if image.foreground_width is None:
        return None
    return {
        "left": image.foreground_left or 0,
        "top": image.foreground_top or 0,
        "width": image.foreground_width,
        "height": image.foreground_height or 0,
    }


def batch_json(batch: Batch, images: list[dict[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "batch_id": batch.id,
        "total_images": batch.total_images,
        "status": batch.status,
        "created_at": iso(batch.created_at),
    }
    if batch.completed_at:
        data["completed_at"] = iso(batch.completed_at)
    data["images"] = images
    return data


def batch_progress(batch: Batch) -> dict[str, int]:
    counts = {"completed": 0, "failed": 0, "processing": 0}
    for image in batch.images:
        counts[image.status] += 1
    return counts
