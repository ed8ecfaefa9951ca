"""Request bodies and response shapes of the public API (field names as the spec's examples show them)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from contract.options import (
    ADD_SHADOW,
    BG_COLOR,
    BG_IMAGE_URL,
    BY_NAME,
    CROP,
    CROP_MARGIN,
    DECONTAMINATE,
    MAX_MEGAPIXELS,
    MAX_MEGAPIXELS_OPTION,
    MODEL,
    OUTPUT_FORMAT,
    OUTPUT_SIZE,
    OUTPUT_TYPE,
    POSITION,
    ROI,
    SCALE,
    Option,
    OptionError,
    OutputFormat,
    OutputSize,
    OutputType,
    RemovalOptions,
)
from gateway.errors import ErrorEnvelope, InvalidRequest
from gateway.store import tables
from gateway.store.tables import BatchStatus, ImageStatus, PlanName

_Model = TypeVar("_Model", bound=BaseModel)
# The plan names an account answer carries (handlers take it from here: they do not import the store).
AccountPlan = PlanName


def option_field(option: Option, default: Any = None) -> Any:
    """A request field described as the contract describes the option (its pattern, examples and text)."""
    return Field(
        default, description=option.description, pattern=option.pattern,
        examples=list(option.examples) or None,
    )


# Requests may name a format by an alias (jpeg); the document lists every accepted name, answers say the value.
_RequestedFormat = Annotated[OutputFormat, WithJsonSchema({"type": "string", "enum": OutputFormat.accepted()})]
_Url = Annotated[str, Field(min_length=1, max_length=2048, json_schema_extra={"format": "uri"})]


class RemovalParams(BaseModel):
    """Options shared by every remove-background endpoint; unknown fields are refused, not ignored. Each
    option is the contract's (contract/options.py): its text, pattern, parser and combination rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    output_format: _RequestedFormat = option_field(OUTPUT_FORMAT, OutputFormat.PNG)
    output_size: OutputSize = option_field(OUTPUT_SIZE, OutputSize.ORIGINAL)
    bg_color: str | None = option_field(BG_COLOR)
    webhook_url: _Url | None = Field(
        default=None, examples=["https://example.com/hooks/removai"],
        description="http(s) URL that is POSTed the result in the response envelope when processing ends, "
                    "signed with the account's webhook secret (headers X-RemovAI-Timestamp and "
                    "X-RemovAI-Signature); retried with exponential backoff. Must be a public address.",
    )
    output_type: OutputType = option_field(OUTPUT_TYPE, OutputType.CUTOUT)
    crop: bool = option_field(CROP, False)
    crop_margin: str | None = option_field(CROP_MARGIN)
    model: str | None = option_field(MODEL)
    bg_image_url: _Url | None = option_field(BG_IMAGE_URL)
    roi: str | None = option_field(ROI)
    scale: str | None = option_field(SCALE)
    position: str | None = option_field(POSITION)
    add_shadow: bool = option_field(ADD_SHADOW, False)
    max_megapixels: Annotated[float, Field(gt=0, le=MAX_MEGAPIXELS)] | None = option_field(MAX_MEGAPIXELS_OPTION)
    decontaminate: bool = option_field(DECONTAMINATE, True)

    @field_validator("crop_margin", mode="before")
    @classmethod
    def _margin_as_text(cls, value: object) -> object:
        """A bare JSON number is pixels."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("bg_color", "crop_margin", "model", "roi", "scale", "position")
    @classmethod
    def _contract_form(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Checked by the contract's parser (limits, colour names); a colour is kept as '#RRGGBB'."""
        if value is None or info.field_name is None:
            return value
        parsed = BY_NAME[info.field_name].parse(value)
        return parsed if isinstance(parsed, str) else value

    @model_validator(mode="after")
    def _compatible(self) -> RemovalParams:
        self.options  # noqa: B018 -- builds the contract's options, which checks their combination
        return self

    @property
    def options(self) -> RemovalOptions:
        """The contract's options (combinations checked: an OptionError is a ValueError naming the option)."""
        return RemovalOptions.from_fields({name: getattr(self, name) for name in BY_NAME})


class UrlRequest(RemovalParams):
    """One image by URL."""

    url: str = Field(
        max_length=2048, json_schema_extra={"format": "uri"}, examples=["https://example.com/image.jpg"],
        description="Public http(s) URL of a JPG, PNG or WEBP image. Private and loopback addresses are refused.",
    )


class FileRequest(RemovalParams):
    """The multipart form's text fields (the file itself is streamed separately)."""


class BatchUrlRequest(RemovalParams):
    """A batch of images by URL."""

    urls: list[Annotated[str, WithJsonSchema({"type": "string", "format": "uri"})]] = Field(
        min_length=1, description="Public http(s) image URLs.",
    )


# Multipart forms, for the document only (the handlers stream the files): the image bytes plus the options.
_Binary = Annotated[bytes, WithJsonSchema({"type": "string", "format": "binary", "minLength": 1})]


_BG_IMAGE_PART = (
    "Optional background image (JPG, PNG or WEBP) scaled to cover the result and composited under the subject. "
    "Not with bg_color or bg_image_url."
)


class FileUpload(RemovalParams):
    """One uploaded image plus the options as text fields."""

    file: _Binary = Field(description="The image: JPG, PNG or WEBP (decided by its bytes), not empty.")
    bg_image: _Binary | None = Field(None, description=_BG_IMAGE_PART)


class BatchFileUpload(RemovalParams):
    """A batch of uploaded images plus the options as text fields."""

    files: list[_Binary] = Field(min_length=1, description="Repeat the field once per image.")
    bg_image: _Binary | None = Field(None, description=_BG_IMAGE_PART + " Used for every image.")


def parse(model: type[_Model], data: Any) -> _Model:
    """Validates data against model; the first problem becomes a 400 invalid_request naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        message = first["msg"]
        if first["type"] in ("string_pattern_mismatch", "enum") and field in BY_NAME:
            message = _contract_message(field, first["input"]) or message
        elif first["type"] == "value_error":
            # Our own cross-field checks name their field first: "field: message".
            field, _, message = str(first["ctx"]["error"]).partition(": ")
        elif first["type"] == "extra_forbidden":
            message = "is not a known parameter"
        elif first["type"] == "string_too_short" and first.get("ctx", {}).get("min_length") == 1:
            message = "must not be empty; leave the field out instead"
        raise InvalidRequest(f"{field}: {message}") from exc


def _contract_message(name: str, value: object) -> str | None:
    """What the contract's parser says of a value the option's pattern refused."""
    try:
        BY_NAME[name].parse(str(value))
    except OptionError as error:
        return error.message
    return None


def iso(moment: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, to the second, as the spec's examples show."""
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


# --- Response bodies -------------------------------------------------------------------------------------
# Serialised with exclude_unset: a field left unset is absent from the answer (SkipJsonSchema keeps null out of
# the document, where the service never sends it); a field set to None is sent as null.

Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time", "description": "UTC, to the second."})]
ImageId = Annotated[str, Field(pattern=r"^img_[a-z0-9]+$", examples=["img_k3x9q2m7w8p4t6zb"])]
BatchId = Annotated[str, Field(pattern=r"^batch_[a-z0-9]+$", examples=["batch_r5n2v8c1x7d3h9qa"])]
_Positive = Annotated[int, Field(ge=1)]
ImageErrorCode = Literal["invalid_request", "unsupported_media_type", "unprocessable_entity", "server_error"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageError(_Body):
    """Why processing failed. Failed images do not count against the monthly quota."""

    code: ImageErrorCode
    message: str


_ONLY_COMPLETED = ("output_url", "width", "height", "size_bytes", "foreground")


class Foreground(_Body):
    """The bounding box, in the result's pixels (after crop and output_size), of the pixels whose alpha is
    above 16 of 255."""

    left: int = Field(ge=0)
    top: int = Field(ge=0)
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class Image(_Body):
    """One background-removal job. Optional fields appear only when they apply."""

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"status": {"const": "completed"}}},
            "then": {"required": list(_ONLY_COMPLETED), "not": {"required": ["error"]}},
            "else": {
                "not": {"anyOf": [{"required": [name]} for name in _ONLY_COMPLETED]},
                "if": {"properties": {"status": {"const": "failed"}}},
                "then": {"required": ["error"]},
                "else": {"not": {"required": ["error"]}},
            },
        },
    )

    id: ImageId
    original_url: str | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra={"format": "uri"}, description="The source URL; only for images given by URL.",
    )
    output_url: str | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra={"format": "uri"},
        description="Signed link to the cut-out, downloadable without an API key (GET /v1/files/{name}); valid "
                    "for output_url_ttl_s from this response. Only when status is completed.",
    )
    output_size: OutputSize
    output_format: OutputFormat
    created_at: Timestamp
    status: ImageStatus
    bg_color: Annotated[str, Field(pattern=r"^#[0-9A-F]{6}$")] | SkipJsonSchema[None] = Field(
        default=None, description="The requested background colour as #RRGGBB (upper-case), whichever form it was "
                                  "given in; only when given.",
    )
    batch_id: BatchId | SkipJsonSchema[None] = Field(default=None, description="The batch it belongs to; only for batches.")
    width: _Positive | SkipJsonSchema[None] = Field(default=None, description="Output width in px; only when completed.")
    height: _Positive | SkipJsonSchema[None] = Field(default=None, description="Output height in px; only when completed.")
    size_bytes: _Positive | SkipJsonSchema[None] = Field(default=None, description="Output file size; only when completed.")
    error: ImageError | SkipJsonSchema[None] = Field(default=None, description="Only when status is failed.")
    output_type: OutputType | SkipJsonSchema[None] = Field(default=None, description="Only when mask was asked.")
    crop: bool | SkipJsonSchema[None] = Field(default=None, description="Only when crop was asked.")
    crop_margin: str | SkipJsonSchema[None] = Field(default=None, description="The margin as given; only with crop.")
    model: str | SkipJsonSchema[None] = Field(default=None, description="The model asked for; only when named.")
    bg_image_url: str | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra={"format": "uri"}, description="Only when one was given.",
    )
    roi: str | SkipJsonSchema[None] = Field(default=None, description="The region of interest; only when given.")
    scale: str | SkipJsonSchema[None] = Field(default=None, description="The subject's scale; only when given.")
    position: str | SkipJsonSchema[None] = Field(default=None, description="The subject's position; only when given.")
    add_shadow: bool | SkipJsonSchema[None] = Field(default=None, description="Only when a shadow was asked.")
    max_megapixels: float | SkipJsonSchema[None] = Field(default=None, description="Only when a cap was given.")
    decontaminate: bool | SkipJsonSchema[None] = Field(
        default=None, description="Only when decontaminate=false was asked (the default is true).",
    )
    foreground: Foreground | None = Field(
        default=None,
        description="Only when completed: the foreground's bounding box in the result's pixels; null when no "
                    "pixel's alpha is above the threshold (nothing in front of a background).",
    )


class BatchImage(_Body):
    """An image as a batch submission lists it: not processed yet."""

    id: ImageId
    original_url: str | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra={"format": "uri"}, description="Only for URL batches.",
    )
    status: Literal["processing"]


class BatchAccepted(_Body):
    """A batch just accepted: its images are processed in the background; poll GET /v1/batches/{batch_id} or
    give webhook_url."""

    batch_id: BatchId
    total_images: int = Field(ge=1)
    status: Literal["processing"]
    created_at: Timestamp
    images: list[BatchImage] = Field(description="In the order they were submitted.")


class Batch(_Body):
    """A batch and each of its images as they stand."""

    batch_id: BatchId
    total_images: int = Field(ge=1)
    status: BatchStatus = Field(description="completed once every image is completed or failed.")
    created_at: Timestamp
    completed_at: Timestamp | SkipJsonSchema[None] = Field(default=None, description="Only when status is completed.")
    images: list[Image] = Field(description="In the order they were submitted.")


class DeletedImage(_Body):
    """The image that was deleted."""

    id: ImageId
    deleted: Literal[True]


class Account(_Body):
    """The caller's account, plan limits and this month's usage."""

    id: str = Field(pattern=r"^acct_[a-z0-9]+$")
    name: str
    plan: AccountPlan
    requests_per_minute: int = Field(ge=1)
    monthly_images: int | None = Field(ge=0, description="null: unlimited.")
    images_used_this_month: int = Field(ge=0, description="UTC calendar month; failed images not counted.")
    batch_allowed: bool
    created_at: Timestamp


class WebhookSecret(_Body):
    """The secret that signs the account's webhooks, in Standard Webhooks' format."""

    secret: str = Field(
        min_length=1, max_length=64,
        description="Standard Webhooks: HMAC-SHA256 key = base64-decode of what follows 'whsec_'. "
                    "X-RemovAI-Signature: key = this whole string, UTF-8.",
    )
    rotated_at: Timestamp | None = Field(description="null: never rotated.")
    previous_secret_expires_at: Timestamp | None = Field(
        description="Until then the previous secret signs too (a second signature in each signature header); "
                    "null when only this secret signs.",
    )


class EmptyMeta(_Body):
    """No meta for this endpoint."""


class PaginationMeta(_Body):
    """Where this page stands in the whole library."""

    page: int = Field(ge=1)
    per_page: int = Field(ge=1, le=100)
    total: int = Field(ge=0, description="Images in the whole library.")
    total_pages: int = Field(ge=1, description="At least 1, even when empty.")


class BatchProgressMeta(_Body):
    """How many of the batch's images are in each state."""

    completed: int = Field(ge=0)
    failed: int = Field(ge=0)
    processing: int = Field(ge=0)


class _Success(_Body):
    success: Literal[True]


class ImageEnvelope(_Success):
    """One image."""

    data: Image
    meta: EmptyMeta


class ImageListEnvelope(_Success):
    """One page of the library, newest first."""

    data: list[Image]
    meta: PaginationMeta


class BatchAcceptedEnvelope(_Success):
    """A batch just accepted."""

    data: BatchAccepted
    meta: EmptyMeta


class BatchEnvelope(_Success):
    """A batch and its progress."""

    data: Batch
    meta: BatchProgressMeta


class DeletedImageEnvelope(_Success):
    """A deleted image."""

    data: DeletedImage
    meta: EmptyMeta


class AccountEnvelope(_Success):
    """The account."""

    data: Account
    meta: EmptyMeta


class WebhookSecretEnvelope(_Success):
    """The webhook signing secret."""

    data: WebhookSecret
    meta: EmptyMeta


class ModelInfo(_Body):
    """One model the `model` option accepts."""

    name: str = Field(description="What to pass as `model`.")
    version: str
    description: str = Field(description="One line; may be empty.")
    default: bool = Field(description="Used when a request names none.")


class ModelList(_Body):
    """The models the service runs, the default first."""

    models: list[ModelInfo]


class ModelListEnvelope(_Success):
    """The models."""

    data: ModelList
    meta: EmptyMeta


ENVELOPES: tuple[type[BaseModel], ...] = (
    ImageEnvelope, ImageListEnvelope, BatchAcceptedEnvelope, BatchEnvelope, DeletedImageEnvelope,
    AccountEnvelope, WebhookSecretEnvelope, ModelListEnvelope, ErrorEnvelope,
)


def dump(model: BaseModel) -> dict[str, Any]:
    """The JSON body of a response model: unset optional fields left out."""
    return model.model_dump(mode="json", exclude_unset=True)


class ImageFields(Protocol):
    """What an image's answer shows: an ORM image (store.tables.Image) or a lighter read-only view of one
    (domain.images.ImageView, what GET /v1/images/{id} reads)."""

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
    @property
    def options(self) -> dict[str, Any] | None: ...
    @property
    def foreground_left(self) -> int | None: ...
    @property
    def foreground_top(self) -> int | None: ...
    @property
    def foreground_width(self) -> int | None: ...
    @property
    def foreground_height(self) -> int | None: ...


def image_result(image: ImageFields, output_url: str | None) -> Image:
    fields: dict[str, Any] = {
        "id": image.id, "output_size": image.output_size, "output_format": image.output_format,
        "created_at": iso(image.created_at), "status": image.status,
    }
    if image.original_url:
        fields["original_url"] = image.original_url
    if output_url:
        fields["output_url"] = output_url
    if image.bg_color:
        fields["bg_color"] = image.bg_color
    if image.batch_id:
        fields["batch_id"] = image.batch_id
    for name, value in (image.options or {}).items():
        fields[name] = value
    if image.status == "completed":
        fields.update(width=image.width, height=image.height, size_bytes=image.size_bytes)
        fields["foreground"] = foreground_of(image)
    if image.status == "failed":
        fields["error"] = ImageError(code=image.error_code, message=image.error_message)
    return Image(**fields)


def foreground_of(image: ImageFields) -> Foreground | None:
    """The foreground's box in the result's pixels; None when no pixel's alpha is above the threshold (and for
    images completed before the box was recorded)."""
    if image.foreground_width is None:
        return None
    return Foreground(
        left=image.foreground_left or 0, top=image.foreground_top or 0, width=image.foreground_width,
        height=image.foreground_height or 0,
    )


def batch_result(batch: tables.Batch, images: list[Image]) -> Batch:
    fields: dict[str, Any] = {
        "batch_id": batch.id, "total_images": batch.total_images, "status": batch.status,
        "created_at": iso(batch.created_at), "images": images,
    }
    if batch.completed_at:
        fields["completed_at"] = iso(batch.completed_at)
    return Batch(**fields)


def batch_accepted(batch: tables.Batch) -> BatchAccepted:
    listed = [
        BatchImage(id=image.id, original_url=image.original_url, status="processing") if image.original_url
        else BatchImage(id=image.id, status="processing")
        for image in batch.images
    ]
    return BatchAccepted(
        batch_id=batch.id, total_images=batch.total_images, status="processing",
        created_at=iso(batch.created_at) or "", images=listed,
    )


def batch_progress(batch: tables.Batch) -> BatchProgressMeta:
    counts = {"completed": 0, "failed": 0, "processing": 0}
    for image in batch.images:
        counts[image.status] += 1
    return BatchProgressMeta(**counts)
