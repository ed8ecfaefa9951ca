"""Request bodies and response shapes of the public API (field names as the spec's examples show them)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract.options import OutputFormat, OutputSize
from gateway.errors import InvalidRequest
from gateway.net.inference import Options
from gateway.store.tables import Batch

_Model = TypeVar("_Model", bound=BaseModel)


class RemovalParams(BaseModel):
    """Options shared by every remove-background endpoint; unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    output_format: OutputFormat = OutputFormat.PNG
    output_size: OutputSize = OutputSize.ORIGINAL
    bg_color: str | None = Field(None, pattern=r"^#[0-9A-Fa-f]{6}$")
    webhook_url: str | None = Field(None, max_length=2048)

    @property
    def options(self) -> Options:
        return Options(
            self.output_format.value, self.output_size.value, self.bg_color.upper() if self.bg_color else None
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
        elif first["type"] == "extra_forbidden":
            message = "is not a known parameter"
        raise InvalidRequest(f"{field}: {message}") from exc


def iso(moment: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, to the second, as the spec's examples show."""
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


class ImageFields(Protocol):
    """What an image's JSON shows: an ORM Image or a lighter read-only view of one (domain.images.ImageView)."""

    @property
    def id(self) -> str: ...
    @property
    def original_url(self) -> str | None: ...
    @property
    def output_format(self) -> str: ...
    @property
    def output_size(self) -> str: ...
    @property
    def bg_color(self) -> str | None: ...
    @property
    def batch_id(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def created_at(self) -> dt.datetime: ...
    @property
    def width(self) -> int | None: ...
    @property
    def height(self) -> int | None: ...
    @property
    def size_bytes(self) -> int | None: ...
    @property
    def error_code(self) -> str | None: ...
    @property
    def error_message(self) -> str | None: ...


def image_json(image: ImageFields, output_url: str | None) -> dict[str, Any]:
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
    if image.status == "completed":
        data.update(width=image.width, height=image.height, size_bytes=image.size_bytes)
    if image.status == "failed":
        data["error"] = {"code": image.error_code, "message": image.error_message}
    return data


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
