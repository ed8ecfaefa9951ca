"""The public API's OpenAPI 3.1 document, built as data from the code's own enums, errors, plans and settings."""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

from contract.options import OutputFormat, OutputSize, OutputType
from gateway import errors
from gateway.domain.plans import PLANS
from gateway.schemas import (
    CROP_MARGIN_PATTERN,
    FOREGROUND_ALPHA_THRESHOLD,
    BatchUrlRequest,
    RemovalParams,
    UrlRequest,
)
from gateway.settings import MIB, GatewaySettings
from gateway.store.tables import BatchStatus, ImageStatus

_LOGGER = logging.getLogger(__name__)

Json = dict[str, Any]

OPENAPI_PATH = "/v1/openapi.json"
DOCS_PATH = "/v1/docs"

# Enumerations read from the code that enforces them, so the document cannot drift from it.
OUTPUT_FORMATS: list[str] = [member.value for member in OutputFormat]
OUTPUT_SIZES: list[str] = [member.value for member in OutputSize]
OUTPUT_TYPES: list[str] = [member.value for member in OutputType]
IMAGE_STATUSES: list[str] = list(get_args(ImageStatus))
BATCH_STATUSES: list[str] = list(get_args(BatchStatus))
PLAN_NAMES: list[str] = list(PLANS)
_REQUEST_FIELDS: Json = RemovalParams.model_json_schema()["properties"]
BG_COLOR_PATTERN: str = _REQUEST_FIELDS["bg_color"]["anyOf"][0]["pattern"]
MODEL_PATTERN: str = _REQUEST_FIELDS["model"]["anyOf"][0]["pattern"]
WEBHOOK_URL_MAX: int = _REQUEST_FIELDS["webhook_url"]["anyOf"][0]["maxLength"]
URL_MAX: int = UrlRequest.model_json_schema()["properties"]["url"]["maxLength"]
BATCH_URLS_MIN: int = BatchUrlRequest.model_json_schema()["properties"]["urls"]["minItems"]
# Codes a failed image can record: whatever processing raises (see gateway.domain.processing.ImageProcessor.process).
IMAGE_ERROR_CODES = [
    errors.InvalidRequest.code,
    errors.UnsupportedMediaType.code,
    errors.UnprocessableEntity.code,
    errors.ServerError.code,
]
IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp"]

_EXAMPLE_IMAGE_ID = "img_k3x9q2m7w8p4t6zb"
_EXAMPLE_BATCH_ID = "batch_r5n2v8c1x7d3h9qa"
_EXAMPLE_CREATED = "2025-04-24T10:30:45Z"
_EXAMPLE_RESET = 1745490705
_EXAMPLE_SIGNATURE = "9f2c" + "0" * 56 + "b7e1"
_EXAMPLE_WEBHOOK_SECRET = {
    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw0ZvcWi7XAqM=",
    "rotated_at": None,
    "previous_secret_expires_at": None,
}


_BG_IMAGE_PART = (
    "Optional background image (JPG, PNG or WEBP, at most {max_mb} MB) scaled to cover the result and "
    "composited under the subject. Not with bg_color or bg_image_url."
)


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _docstring(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


# --- Schemas -----------------------------------------------------------------------------------------


def _removal_option_properties(*, form: bool) -> Json:
    """The shared options; JSON also accepts null for the optional strings, a form field is always text."""
    nullable = "string" if form else ["string", "null"]
    return {
        "output_format": {
            "type": "string", "enum": OUTPUT_FORMATS, "default": "png",
            "description": "Format of the cut-out. png and webp keep transparency; jpg has none.",
        },
        "output_size": {
            "type": "string", "enum": OUTPUT_SIZES, "default": "original",
            "description": "original keeps the size; small, medium and large fit the longer side in 1080, "
                           "1920 and 2880 px, keeping the aspect ratio and never upscaling.",
        },
        "bg_color": {
            "type": nullable, "pattern": BG_COLOR_PATTERN, "examples": ["#FF0000"],
            "description": "Hex colour #RRGGBB composited behind the subject (the result is then opaque in "
                           "every format). Without it, jpg gets white and png/webp stay transparent.",
        },
        "webhook_url": {
            "type": nullable, "maxLength": WEBHOOK_URL_MAX, "format": "uri",
            "description": "http(s) URL that is POSTed the result in the response envelope when processing "
                           "ends, signed with the account's webhook secret (headers X-RemovAI-Timestamp and "
                           "X-RemovAI-Signature); retried with exponential backoff. Must be a public address.",
        },
        **_added_option_properties(form=form),
    }


def _added_option_properties(*, form: bool) -> Json:
    """Options added to the spec (issue 11): mask output, crop to the subject, model choice, background image."""
    nullable = "string" if form else ["string", "null"]
    return {
        "output_type": {
            "type": "string", "enum": OUTPUT_TYPES, "default": "cutout",
            "description": "cutout: the image without its background. mask: only the alpha matte, a "
                           "single-channel (grayscale) PNG equal pixel for pixel to the cut-out's alpha; "
                           "output_format must then be png and no background may be given.",
        },
        "crop": {
            **({"type": "string", "enum": ["true", "false"], "default": "false"} if form
               else {"type": "boolean", "default": False}),
            "description": "Crop the result to the foreground's bounding box (pixels with alpha above "
                           f"{FOREGROUND_ALPHA_THRESHOLD} of 255) plus crop_margin; output_size applies after "
                           "the crop. An image without foreground is a 422.",
        },
        "crop_margin": {
            "type": nullable if form else ["string", "integer", "null"], "examples": ["30px", "10%"],
            "pattern": CROP_MARGIN_PATTERN,
            "description": "Only with crop: added on each side of the box, clamped to the image. Pixels of the "
                           "original ('30' or '30px', at most 2000) or percent of the box's width (left, right) "
                           "and height (top, bottom), '10%' (at most 100).",
        },
        "model": {
            "type": nullable, "pattern": MODEL_PATTERN, "examples": ["isnet_fp16"],
            "description": "A model listed by GET /v1/models; without it the default one. An unknown model is "
                           "a 400 naming the available ones.",
        },
        "bg_image_url": {
            "type": nullable, "maxLength": URL_MAX, "format": "uri",
            "description": "A public http(s) image (JPG, PNG or WEBP, fetched like url) scaled to cover the "
                           "result, centred, and composited under the subject: the result is opaque. Not with "
                           "bg_color or a bg_image file.",
        },
    }


def _image_schema(settings: GatewaySettings) -> Json:
    return {
        "type": "object",
        "description": "One background-removal job. Optional fields appear only when they apply.",
        "required": ["id", "output_size", "output_format", "created_at", "status"],
        "properties": {
            "id": {"type": "string", "pattern": "^img_[a-z0-9]+$", "examples": [_EXAMPLE_IMAGE_ID]},
            "original_url": {
                "type": "string", "format": "uri", "description": "The source URL; only for images given by URL.",
            },
            "output_url": {
                "type": "string", "format": "uri",
                "description": "Signed link to the cut-out, downloadable without an API key (GET "
                               f"/v1/files/{{name}}); valid for {settings.output_url_ttl_s} s from this response. "
                               "Only when status is completed.",
            },
            "output_size": {"type": "string", "enum": OUTPUT_SIZES},
            "output_format": {"type": "string", "enum": OUTPUT_FORMATS},
            "created_at": {"type": "string", "format": "date-time", "description": "UTC, to the second."},
            "status": {"type": "string", "enum": IMAGE_STATUSES},
            "bg_color": {
                "type": "string", "pattern": "^#[0-9A-F]{6}$",
                "description": "The requested background colour, upper-cased; only when one was given.",
            },
            "batch_id": {
                "type": "string", "pattern": "^batch_[a-z0-9]+$",
                "description": "The batch the image belongs to; only for batch images.",
            },
            "output_type": {"type": "string", "enum": OUTPUT_TYPES, "description": "Only when mask was asked."},
            "crop": {"type": "boolean", "description": "Only when crop was asked."},
            "crop_margin": {"type": "string", "description": "The margin asked for, as given; only with crop."},
            "model": {"type": "string", "description": "The model asked for; only when one was named."},
            "bg_image_url": {"type": "string", "format": "uri", "description": "Only when one was given."},
            "foreground": {
                "type": ["object", "null"],
                "description": "Only when completed: the bounding box, in the result's pixels (after crop and "
                               f"output_size), of the pixels whose alpha is above {FOREGROUND_ALPHA_THRESHOLD} "
                               "of 255; null when there are none (nothing was found in front of a background).",
                "required": ["left", "top", "width", "height"],
                "properties": {
                    "left": {"type": "integer", "minimum": 0}, "top": {"type": "integer", "minimum": 0},
                    "width": {"type": "integer", "minimum": 1}, "height": {"type": "integer", "minimum": 1},
                },
                "additionalProperties": False,
            },
            "width": {"type": "integer", "minimum": 1, "description": "Output width in px; only when completed."},
            "height": {"type": "integer", "minimum": 1, "description": "Output height in px; only when completed."},
            "size_bytes": {
                "type": "integer", "minimum": 1, "description": "Size of the output file; only when completed.",
            },
            "error": {
                "type": "object",
                "description": "Why processing failed; only when status is failed. Failed images do not count "
                               "against the monthly quota.",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": IMAGE_ERROR_CODES},
                    "message": {"type": "string"},
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
        "allOf": [
            {
                "if": {"properties": {"status": {"const": "completed"}}},
                "then": {
                    "required": ["output_url", "width", "height", "size_bytes", "foreground"],
                    "not": {"required": ["error"]},
                },
                "else": {"not": {"anyOf": [{"required": [name]} for name in
                                           ("output_url", "width", "height", "size_bytes", "foreground")]}},
            },
            {
                "if": {"properties": {"status": {"const": "failed"}}},
                "then": {"required": ["error"]},
                "else": {"not": {"required": ["error"]}},
            },
        ],
    }


def _batch_schema(description: str, image: Json, *, accepted: bool) -> Json:
    properties: Json = {
        "batch_id": {"type": "string", "pattern": "^batch_[a-z0-9]+$", "examples": [_EXAMPLE_BATCH_ID]},
        "total_images": {"type": "integer", "minimum": 1},
        "status": {"const": "processing"} if accepted else {
            "type": "string", "enum": BATCH_STATUSES,
            "description": "completed once every image is completed or failed.",
        },
        "created_at": {"type": "string", "format": "date-time"},
    }
    if not accepted:
        properties["completed_at"] = {
            "type": "string", "format": "date-time", "description": "Only when status is completed.",
        }
    properties["images"] = {"type": "array", "items": image, "description": "In the order they were submitted."}
    return {
        "type": "object",
        "description": description,
        "required": ["batch_id", "total_images", "status", "created_at", "images"],
        "properties": properties,
        "additionalProperties": False,
    }


def _schemas(settings: GatewaySettings) -> Json:
    max_batch = settings.max_batch_images
    max_mb = settings.max_upload_bytes // MIB
    options = _removal_option_properties(form=False)
    form_options = _removal_option_properties(form=True)
    binary = {"type": "string", "contentMediaType": "application/octet-stream"}
    return {
        "SuccessEnvelope": {
            "type": "object",
            "description": "Every successful JSON answer (except this document itself).",
            "required": ["success", "data", "meta"],
            "properties": {
                "success": {"const": True},
                "data": {"description": "The endpoint's result."},
                "meta": {"type": "object", "description": "Pagination or progress; {} when the endpoint has none."},
            },
            "additionalProperties": False,
        },
        "ErrorEnvelope": {
            "type": "object",
            "description": "Every error, from any endpoint or an unknown path.",
            "required": ["success", "error"],
            "properties": {
                "success": {"const": False},
                "error": {
                    "type": "object",
                    "required": ["code", "message", "status"],
                    "properties": {
                        "code": {"$ref": "#/components/schemas/ErrorCode"},
                        "message": {"type": "string", "minLength": 1, "description": "For people, not programs."},
                        "status": {"type": "integer", "description": "The HTTP status, repeated."},
                    },
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
        "ErrorCode": {
            "type": "string",
            "enum": sorted({cls.code for cls in _error_classes()}),
            "description": "Machine-readable; one status can carry more than one code (429: rate_limit_exceeded "
                           "or quota_exceeded) and one code more than one status (server_error: 500, 503, 504).",
        },
        "EmptyMeta": {"type": "object", "maxProperties": 0, "description": "No meta for this endpoint."},
        "PaginationMeta": {
            "type": "object",
            "required": ["page", "per_page", "total", "total_pages"],
            "properties": {
                "page": {"type": "integer", "minimum": 1},
                "per_page": {"type": "integer", "minimum": 1, "maximum": 100},
                "total": {"type": "integer", "minimum": 0, "description": "Images in the whole library."},
                "total_pages": {"type": "integer", "minimum": 1, "description": "At least 1, even when empty."},
            },
            "additionalProperties": False,
        },
        "BatchProgressMeta": {
            "type": "object",
            "description": "How many of the batch's images are in each state.",
            "required": ["completed", "failed", "processing"],
            "properties": {name: {"type": "integer", "minimum": 0} for name in ("completed", "failed", "processing")},
            "additionalProperties": False,
        },
        "RemovalOptions": {
            "type": "object",
            "description": "Options every remove-background endpoint takes; unknown fields are refused (400).",
            "properties": options,
        },
        "UrlRequest": {
            "type": "object",
            "description": "One image by URL.",
            "required": ["url"],
            "properties": {
                "url": {
                    "type": "string", "format": "uri", "maxLength": URL_MAX,
                    "description": f"Public http(s) URL of a JPG, PNG or WEBP image, at most {max_mb} MB. "
                                   "Private and loopback addresses are refused.",
                },
            },
            "allOf": [_ref("RemovalOptions")],
            "unevaluatedProperties": False,
        },
        "BatchUrlRequest": {
            "type": "object",
            "description": "A batch of images by URL.",
            "required": ["urls"],
            "properties": {
                "urls": {
                    "type": "array", "minItems": BATCH_URLS_MIN, "maxItems": max_batch,
                    "items": {"type": "string", "format": "uri"},
                    "description": f"Public http(s) image URLs, at most {max_batch}.",
                },
            },
            "allOf": [_ref("RemovalOptions")],
            "unevaluatedProperties": False,
        },
        "FileRequest": {
            "type": "object",
            "description": "One uploaded image plus the options as text fields.",
            "required": ["file"],
            "properties": {
                "file": {**binary, "description": f"The image: JPG, PNG or WEBP (by its bytes), at most {max_mb} MB."},
                "bg_image": {**binary, "description": _BG_IMAGE_PART.format(max_mb=max_mb)},
                **form_options,
            },
            "additionalProperties": False,
        },
        "BatchFileRequest": {
            "type": "object",
            "description": "A batch of uploaded images plus the options as text fields.",
            "required": ["files"],
            "properties": {
                "files": {
                    "type": "array", "minItems": 1, "maxItems": max_batch, "items": binary,
                    "description": f"Repeat the field once per image: at most {max_batch} files of at most "
                                   f"{max_mb} MB each.",
                },
                "bg_image": {**binary, "description": _BG_IMAGE_PART.format(max_mb=max_mb) + " Used for every image."},
                **form_options,
            },
            "additionalProperties": False,
        },
        "ModelList": {
            "type": "object",
            "required": ["models"],
            "properties": {
                "models": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "version", "description", "default"],
                        "properties": {
                            "name": {"type": "string", "description": "What to pass as `model`."},
                            "version": {"type": "string"},
                            "description": {"type": "string", "description": "One line; may be empty."},
                            "default": {"type": "boolean", "description": "Used when a request names none."},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
        "Image": _image_schema(settings),
        "BatchImage": {
            "type": "object",
            "description": "An image as a batch submission lists it: not processed yet.",
            "required": ["id", "status"],
            "properties": {
                "id": {"type": "string", "pattern": "^img_[a-z0-9]+$"},
                "original_url": {"type": "string", "format": "uri", "description": "Only for URL batches."},
                "status": {"const": "processing"},
            },
            "additionalProperties": False,
        },
        "BatchAccepted": _batch_schema(
            "A batch just accepted: its images are processed in the background; poll GET /v1/batches/{batch_id} "
            "or give webhook_url.", _ref("BatchImage"), accepted=True,
        ),
        "Batch": _batch_schema("A batch and each of its images as they stand.", _ref("Image"), accepted=False),
        "DeletedImage": {
            "type": "object",
            "required": ["id", "deleted"],
            "properties": {"id": {"type": "string", "pattern": "^img_[a-z0-9]+$"}, "deleted": {"const": True}},
            "additionalProperties": False,
        },
        "Account": {
            "type": "object",
            "description": "The caller's account, plan limits and this month's usage.",
            "required": [
                "id", "name", "plan", "requests_per_minute", "monthly_images", "images_used_this_month",
                "batch_allowed", "created_at",
            ],
            "properties": {
                "id": {"type": "string", "pattern": "^acct_[a-z0-9]+$"},
                "name": {"type": "string"},
                "plan": {"type": "string", "enum": PLAN_NAMES},
                "requests_per_minute": {"type": "integer", "minimum": 1},
                "monthly_images": {"type": ["integer", "null"], "minimum": 0, "description": "null: unlimited."},
                "images_used_this_month": {
                    "type": "integer", "minimum": 0, "description": "UTC calendar month; failed images not counted.",
                },
                "batch_allowed": {"type": "boolean"},
                "created_at": {"type": "string", "format": "date-time"},
            },
            "additionalProperties": False,
        },
        "WebhookSecret": {
            "type": "object",
            "description": "The secret that signs the account's webhooks, in Standard Webhooks' format.",
            "required": ["secret", "rotated_at", "previous_secret_expires_at"],
            "properties": {
                "secret": {
                    "type": "string", "minLength": 1, "maxLength": 64,
                    "description": "Standard Webhooks: HMAC-SHA256 key = base64-decode of what follows 'whsec_'. "
                                   "X-RemovAI-Signature: key = this whole string, UTF-8.",
                },
                "rotated_at": {
                    "type": ["string", "null"], "format": "date-time", "description": "null: never rotated.",
                },
                "previous_secret_expires_at": {
                    "type": ["string", "null"], "format": "date-time",
                    "description": "Until then the previous secret signs too (a second signature in each "
                                   "signature header); null when only this secret signs.",
                },
            },
            "additionalProperties": False,
        },
    }


# --- Headers and responses -----------------------------------------------------------------------------

_HEADERS: Mapping[str, tuple[str, Json]] = {
    "X-Request-Id": (
        (
            "Identifies the request in the gateway's logs: the caller's own X-Request-Id when it matches "
            "[A-Za-z0-9._-]{1,64}, otherwise a new one."
        ),
        {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
    ),
    "X-RateLimit-Limit": ("Requests the plan allows per minute.", {"type": "integer", "minimum": 1}),
    "X-RateLimit-Remaining": (
        "Requests left in the current one-minute window.", {"type": "integer", "minimum": 0},
    ),
    "X-RateLimit-Reset": ("When the current window resets, UTC epoch seconds.", {"type": "integer", "minimum": 0}),
    "Retry-After": ("Seconds to wait before retrying.", {"type": "integer", "minimum": 1}),
}
_RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _headers(*, rate: bool | None, retry_after: bool = False) -> Json:
    """X-Request-Id always; the rate-limit headers required (True), possible (None) or absent (False)."""
    chosen: list[tuple[str, bool]] = [("X-Request-Id", True)]
    if rate is not False:
        chosen += [(name, rate is True) for name in _RATE_HEADERS]
    if retry_after:
        chosen.append(("Retry-After", True))
    return {
        name: {"description": _HEADERS[name][0], "required": required, "schema": dict(_HEADERS[name][1])}
        for name, required in chosen
    }


def _error_classes() -> list[type[errors.ApiError]]:
    found: list[type[errors.ApiError]] = [errors.ApiError]
    for cls in found:
        found.extend(sub for sub in cls.__subclasses__() if sub not in found)
    return found


def _error_response(
    classes: Iterable[type[errors.ApiError]], *, rate: bool | None, retry_after: bool = False, note: str = ""
) -> Json:
    """One error response: the envelope narrowed to these classes' single status and their codes."""
    chosen = list(classes)
    statuses = {cls.status for cls in chosen}
    if len(statuses) != 1:
        raise ValueError(f"one response per status, got {statuses}")
    status = statuses.pop()
    codes = sorted({cls.code for cls in chosen})
    description = " ".join([*(_docstring(cls) for cls in chosen), note]).strip()
    example = {
        "success": False,
        "error": {"code": codes[0], "message": _example_message(chosen[0]), "status": int(status)},
    }
    return {
        "description": description,
        "headers": _headers(rate=rate, retry_after=retry_after),
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [_ref("ErrorEnvelope")],
                    "properties": {
                        "error": {
                            "properties": {"code": {"enum": codes}, "status": {"const": int(status)}},
                        },
                    },
                },
                "example": example,
            },
        },
    }


def _example_message(cls: type[errors.ApiError]) -> str:
    return {
        errors.InvalidRequest: "output_size: Input should be 'original', 'small', 'medium' or 'large'",
        errors.InvalidApiKey: "The API key provided is invalid or missing",
        errors.Forbidden: "batch processing is available on the Pro and Enterprise plans",
        errors.NotFound: "no image with this id",
        errors.MethodNotAllowed: "method not allowed; use POST",
        errors.UnsupportedMediaType: "the image is not JPG, PNG or WEBP",
        errors.UnprocessableEntity: "the image could not be decoded",
        errors.RateLimitExceeded: "rate limit of 10 requests per minute exceeded",
        errors.ServerError: "an unexpected error occurred; it has been logged",
        errors.ServiceUnavailable: "inference is temporarily unavailable",
        errors.GatewayTimeout: "the image was not processed within the deadline",
    }.get(cls, "the request could not be completed")


def _responses() -> Json:
    e = errors
    return {
        "BadRequest": _error_response([e.InvalidRequest], rate=True),
        "Unauthorized": _error_response(
            [e.InvalidApiKey], rate=False, note="No rate-limit headers: there is no account to count against.",
        ),
        "Forbidden": _error_response([e.Forbidden], rate=True),
        "NotFound": _error_response([e.NotFound], rate=True),
        "RouteNotFound": _error_response(
            [e.NotFound], rate=False, note="Any path this document does not list; answered before authentication.",
        ),
        "FileNotFound": _error_response(
            [e.NotFound], rate=False, note="An unknown, tampered or expired link, or a deleted image.",
        ),
        "MethodNotAllowed": _error_response(
            [e.MethodNotAllowed], rate=False,
            note="Any method a listed path does not serve; answered before authentication. The Allow header "
                 "lists the methods it does serve.",
        ),
        "UnsupportedMediaType": _error_response([e.UnsupportedMediaType], rate=True),
        "UnprocessableEntity": _error_response([e.UnprocessableEntity], rate=True),
        "RateLimited": _error_response([e.RateLimitExceeded], rate=True, retry_after=True),
        "RateOrQuotaLimited": _error_response([e.RateLimitExceeded, e.QuotaExceeded], rate=True, retry_after=True),
        "ServerError": _error_response(
            [e.ServerError], rate=None, note="The rate-limit headers are missing when the failure came before "
                                             "the account was known.",
        ),
        "ServiceUnavailable": _error_response([e.ServiceUnavailable], rate=True, retry_after=True),
        "GatewayTimeout": _error_response([e.GatewayTimeout], rate=True),
        "RequestTimeout": _error_response(
            [e.RequestTimeout], rate=None,
            note="The request body stalled (upload_idle_timeout_s) or took longer than upload_deadline_s.",
        ),
    }


def _response_ref(name: str) -> Json:
    return {"$ref": f"#/components/responses/{name}"}


def _success(description: str, data: Json, meta: Json, example: Json) -> Json:
    return {
        "description": description,
        "headers": _headers(rate=True),
        "content": {
            "application/json": {
                "schema": {"allOf": [_ref("SuccessEnvelope")], "properties": {"data": data, "meta": meta}},
                "example": example,
            },
        },
    }


# --- Examples ------------------------------------------------------------------------------------------


def _example_image(settings: GatewaySettings, **overrides: Any) -> Json:
    image: Json = {
        "id": _EXAMPLE_IMAGE_ID,
        "original_url": "https://example.com/image.jpg",
        "output_url": f"{settings.base_url}/v1/files/{_EXAMPLE_IMAGE_ID}.png?expires={_EXAMPLE_RESET + 86400}"
                      f"&signature={_EXAMPLE_SIGNATURE}",
        "output_size": "original",
        "output_format": "png",
        "created_at": _EXAMPLE_CREATED,
        "status": "completed",
        "width": 1024,
        "height": 768,
        "size_bytes": 482113,
        "foreground": {"left": 212, "top": 64, "width": 590, "height": 704},
    }
    image.update(overrides)
    return image


# --- Operations ----------------------------------------------------------------------------------------


def _operation(
    operation_id: str, tag: str, summary: str, description: str, responses: Json, *,
    request_body: Json | None = None, parameters: Iterable[Json] = (), public: bool = False,
) -> Json:
    operation: Json = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "description": description,
        "parameters": [{"$ref": "#/components/parameters/RequestId"}, *parameters],
    }
    if request_body is not None:
        operation["requestBody"] = request_body
    if public:
        operation["security"] = []
    operation["responses"] = responses
    return operation


def _authenticated(responses: Json, *, limited: str = "RateLimited") -> Json:
    """The responses every authenticated operation can give, plus its own."""
    common = {"401": _response_ref("Unauthorized"), "429": _response_ref(limited), "500": _response_ref("ServerError")}
    merged = {**responses, **common}
    return dict(sorted(merged.items()))


def _removal_responses(settings: GatewaySettings, example: Json) -> Json:
    return _authenticated({
        "200": _success("The cut-out is ready.", _ref("Image"), _ref("EmptyMeta"),
                        {"success": True, "data": example, "meta": {}}),
        "400": _response_ref("BadRequest"),
        "408": _response_ref("RequestTimeout"),
        "415": _response_ref("UnsupportedMediaType"),
        "422": _response_ref("UnprocessableEntity"),
        "503": _response_ref("ServiceUnavailable"),
        "504": _response_ref("GatewayTimeout"),
    }, limited="RateOrQuotaLimited")


def _url_body(example: Json) -> Json:
    return {
        "required": True,
        "content": {"application/json": {"schema": _ref("UrlRequest"), "example": example}},
    }


def _paths(settings: GatewaySettings) -> Json:
    url_example = {"url": "https://example.com/image.jpg", "output_format": "png", "output_size": "original"}
    one_image = _example_image(settings)
    uploaded = _example_image(settings, output_format="webp")
    del uploaded["original_url"]
    uploaded["output_url"] = uploaded["output_url"].replace(".png?", ".webp?")
    single_note = (
        "Processed while you wait: the answer carries the finished image (or the error). Counts one image "
        "against the plan's monthly quota before any work; a failed image gives it back."
    )
    image_id = {
        "name": "image_id", "in": "path", "required": True,
        "schema": {"type": "string"}, "example": _EXAMPLE_IMAGE_ID,
    }
    batch_urls = [f"https://example.com/image{n}.jpg" for n in (1, 2)]
    accepted_example = {
        "success": True,
        "data": {
            "batch_id": _EXAMPLE_BATCH_ID, "total_images": 2, "status": "processing", "created_at": _EXAMPLE_CREATED,
            "images": [
                {"id": f"img_{n}bcdef123456abcd", "original_url": url, "status": "processing"}
                for n, url in zip("ab", batch_urls, strict=True)
            ],
        },
        "meta": {},
    }
    done_images = [
        _example_image(settings, id="img_abcdef123456abcd", original_url=batch_urls[0], batch_id=_EXAMPLE_BATCH_ID),
        {
            "id": "img_bbcdef123456abcd", "original_url": batch_urls[1], "output_size": "original",
            "output_format": "png", "created_at": _EXAMPLE_CREATED, "status": "failed", "batch_id": _EXAMPLE_BATCH_ID,
            "error": {"code": "unsupported_media_type", "message": "the image is not JPG, PNG or WEBP"},
        },
    ]
    done_images[0]["output_url"] = done_images[0]["output_url"].replace(_EXAMPLE_IMAGE_ID, "img_abcdef123456abcd")
    return {
        "/v1/remove-background": {
            "post": _operation(
                "removeBackground", "Remove background", "Remove the background from an image URL",
                "The same as POST /v1/remove-background/url (the spec's authentication example). " + single_note,
                _removal_responses(settings, one_image), request_body=_url_body(url_example),
            ),
        },
        "/v1/remove-background/url": {
            "post": _operation(
                "removeBackgroundFromUrl", "Remove background", "Remove the background from an image URL",
                "Fetches the image (public addresses only, redirects followed and checked) and returns the "
                "cut-out. " + single_note,
                _removal_responses(settings, one_image), request_body=_url_body(url_example),
            ),
        },
        "/v1/remove-background/file": {
            "post": _operation(
                "removeBackgroundFromFile", "Remove background", "Remove the background from an uploaded file",
                "multipart/form-data with the image in the field `file` and the options as text fields. The "
                "answer has no original_url. " + single_note,
                _removal_responses(settings, uploaded),
                request_body={
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": _ref("FileRequest"),
                            "encoding": {"file": {"contentType": ", ".join(IMAGE_TYPES)}},
                            "example": {"file": "(binary image)", "output_format": "webp"},
                        },
                    },
                },
            ),
        },
        "/v1/remove-background/batch": {
            "post": _operation(
                "removeBackgroundBatch", "Remove background", "Remove the backgrounds of many images",
                "Pro and Enterprise plans only. Either JSON with `urls` or multipart/form-data with one `files` "
                "field per image. Answers 202 at once; the images are processed in the background (poll GET "
                "/v1/batches/{batch_id}, or give webhook_url to be called once when all are done). Counts every "
                "image against the monthly quota up front; failed images are given back.",
                _authenticated({
                    "202": _success("Accepted: the batch is processing.", _ref("BatchAccepted"), _ref("EmptyMeta"),
                                    accepted_example),
                    "400": _response_ref("BadRequest"),
                    "403": _response_ref("Forbidden"),
                    "408": _response_ref("RequestTimeout"),
                }, limited="RateOrQuotaLimited"),
                request_body={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _ref("BatchUrlRequest"),
                            "example": {"urls": batch_urls, "output_format": "png", "output_size": "medium"},
                        },
                        "multipart/form-data": {
                            "schema": _ref("BatchFileRequest"),
                            "encoding": {"files": {"contentType": ", ".join(IMAGE_TYPES)}},
                            "example": {"files": ["(binary image)", "(binary image)"], "output_format": "jpg"},
                        },
                    },
                },
            ),
        },
        "/v1/batches/{batch_id}": {
            "get": _operation(
                "getBatch", "Library", "Get a batch and its images",
                "Each image as it stands (completed ones with output_url), and the counts per state in meta.",
                _authenticated({
                    "200": _success(
                        "The batch.", _ref("Batch"), _ref("BatchProgressMeta"),
                        {
                            "success": True,
                            "data": {
                                "batch_id": _EXAMPLE_BATCH_ID, "total_images": 2, "status": "completed",
                                "created_at": _EXAMPLE_CREATED, "completed_at": "2025-04-24T10:30:52Z",
                                "images": done_images,
                            },
                            "meta": {"completed": 1, "failed": 1, "processing": 0},
                        },
                    ),
                    "404": _response_ref("NotFound"),
                }),
                parameters=[{
                    "name": "batch_id", "in": "path", "required": True,
                    "schema": {"type": "string"}, "example": _EXAMPLE_BATCH_ID,
                }],
            ),
        },
        "/v1/images": {
            "get": _operation(
                "listImages", "Library", "List your images",
                "Newest first, every status (batch images included); pagination in meta.",
                _authenticated({
                    "200": _success(
                        "One page of images.", {"type": "array", "items": _ref("Image")}, _ref("PaginationMeta"),
                        {
                            "success": True, "data": [one_image],
                            "meta": {"page": 1, "per_page": 20, "total": 1, "total_pages": 1},
                        },
                    ),
                    "400": _response_ref("BadRequest"),
                }),
                parameters=[
                    {
                        "name": "page", "in": "query", "required": False, "description": "1-based page number.",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1},
                    },
                    {
                        "name": "per_page", "in": "query", "required": False, "description": "Images per page.",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                ],
            ),
        },
        "/v1/images/{image_id}": {
            "get": _operation(
                "getImage", "Library", "Get one image",
                "Another account's image is 404, like a missing one. output_url is freshly signed on every read.",
                _authenticated({
                    "200": _success("The image.", _ref("Image"), _ref("EmptyMeta"),
                                    {"success": True, "data": one_image, "meta": {}}),
                    "404": _response_ref("NotFound"),
                }),
                parameters=[image_id],
            ),
            "delete": _operation(
                "deleteImage", "Library", "Delete an image",
                "Removes the record and the stored file; its output_url links stop working at once.",
                _authenticated({
                    "200": _success("Deleted.", _ref("DeletedImage"), _ref("EmptyMeta"),
                                    {"success": True, "data": {"id": _EXAMPLE_IMAGE_ID, "deleted": True}, "meta": {}}),
                    "404": _response_ref("NotFound"),
                }),
                parameters=[image_id],
            ),
        },
        "/v1/files/{name}": {
            "get": _operation(
                "downloadOutput", "Files", "Download a cut-out (signed link)",
                "The link an image's output_url gives: no API key, not rate limited, valid until `expires`.",
                {
                    "200": {
                        "description": "The processed image.",
                        "headers": {
                            **_headers(rate=False),
                            "Cache-Control": {"schema": {"type": "string"}, "example": "private, max-age=3600"},
                            "Content-Disposition": {
                                "schema": {"type": "string"}, "example": f'inline; filename="{_EXAMPLE_IMAGE_ID}.png"',
                            },
                        },
                        "content": {media: {"schema": {"type": "string", "contentMediaType": media}}
                                    for media in IMAGE_TYPES},
                    },
                    "404": _response_ref("FileNotFound"),
                    "500": _response_ref("ServerError"),
                },
                parameters=[
                    {
                        "name": "name", "in": "path", "required": True, "description": "{image_id}.{extension}",
                        "schema": {"type": "string"}, "example": f"{_EXAMPLE_IMAGE_ID}.png",
                    },
                    {
                        "name": "expires", "in": "query", "required": True, "description": "UTC epoch seconds.",
                        "schema": {"type": "integer"}, "example": _EXAMPLE_RESET + 86400,
                    },
                    {
                        "name": "signature", "in": "query", "required": True, "description": "HMAC-SHA256, hex.",
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "example": _EXAMPLE_SIGNATURE,
                    },
                ],
                public=True,
            ),
        },
        "/v1/models": {
            "get": _operation(
                "listModels", "Models", "The models you can choose",
                "What the `model` option accepts: each model the service runs, with a one-line description; "
                "the default (used when a request names none) comes first with default true. No API key.",
                {
                    "200": {
                        "description": "The models.",
                        "headers": _headers(rate=False),
                        "content": {
                            "application/json": {
                                "schema": {
                                    "allOf": [_ref("SuccessEnvelope")],
                                    "properties": {"data": _ref("ModelList"), "meta": _ref("EmptyMeta")},
                                },
                                "example": {"success": True, "data": {"models": [
                                    {"name": "isnet", "version": "1", "default": True,
                                     "description": "ISNet (DIS) general-use background removal"},
                                    {"name": "isnet_fp16", "version": "1", "default": False,
                                     "description": "ISNet (DIS) with float16 weights"},
                                ]}, "meta": {}},
                            },
                        },
                    },
                    "500": _response_ref("ServerError"),
                    "503": _response_ref("ServiceUnavailable"),
                },
                public=True,
            ),
        },
        "/v1/account": {
            "get": _operation(
                "getAccount", "Account", "Your account, plan and usage",
                "The plan's limits and the images used this UTC calendar month.",
                _authenticated({
                    "200": _success(
                        "The account.", _ref("Account"), _ref("EmptyMeta"),
                        {
                            "success": True,
                            "data": {
                                "id": "acct_m2k8x4c9v1b7n3q5", "name": "Example Ltd", "plan": "pro",
                                "requests_per_minute": 60, "monthly_images": 500, "images_used_this_month": 42,
                                "batch_allowed": True, "created_at": "2025-01-02T09:00:00Z",
                            },
                            "meta": {},
                        },
                    ),
                }),
            ),
        },
        "/v1/account/webhook-secret": {
            "get": _operation(
                "getWebhookSecret", "Account", "Your webhook signing secret",
                "The secret that signs your webhooks. Verify a delivery with any Standard Webhooks library "
                "(headers webhook-id, webhook-timestamp, webhook-signature) or with X-RemovAI-Signature, "
                "\"v1=\" + hex HMAC-SHA256 of \"{X-RemovAI-Timestamp}.{body}\". Answered with "
                "Cache-Control: no-store.",
                _authenticated({
                    "200": _success(
                        "The secret.", _ref("WebhookSecret"), _ref("EmptyMeta"),
                        {"success": True, "data": _EXAMPLE_WEBHOOK_SECRET, "meta": {}},
                    ),
                }),
            ),
        },
        "/v1/account/webhook-secret/rotate": {
            "post": _operation(
                "rotateWebhookSecret", "Account", "Rotate your webhook signing secret",
                f"A new secret signs from now on. The one it replaces keeps signing beside it for "
                f"{settings.webhook_secret_overlap_s} seconds (previous_secret_expires_at), so every signature "
                "header carries two signatures meanwhile and receivers can switch without rejecting a delivery, "
                "retries of earlier deliveries included. Rotating again within the window drops the oldest.",
                _authenticated({
                    "200": _success(
                        "The new secret.", _ref("WebhookSecret"), _ref("EmptyMeta"),
                        {
                            "success": True,
                            "data": {
                                **_EXAMPLE_WEBHOOK_SECRET, "rotated_at": _EXAMPLE_CREATED,
                                "previous_secret_expires_at": "2025-04-25T10:30:45Z",
                            },
                            "meta": {},
                        },
                    ),
                    "404": _response_ref("NotFound"),
                }),
            ),
        },
        OPENAPI_PATH: {
            "get": _operation(
                "getOpenApiDocument", "Documentation", "This OpenAPI 3.1 document",
                "Public. The document itself, not wrapped in the envelope.",
                {
                    "200": {
                        "description": "The document.",
                        "headers": _headers(rate=False),
                        "content": {"application/json": {"schema": {"type": "object", "required": ["openapi"]}}},
                    },
                },
                public=True,
            ),
        },
        DOCS_PATH: {
            "get": _operation(
                "getDocs", "Documentation", "This document as a web page",
                "Public. Plain HTML rendered on the server from the document; no scripts.",
                {
                    "200": {
                        "description": "The page.",
                        "headers": _headers(rate=False),
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                },
                public=True,
            ),
        },
    }


def _description(settings: GatewaySettings) -> str:
    plans = "\n".join(
        f"- {plan.name}: {plan.requests_per_minute} requests per minute, "
        + (f"{plan.monthly_images} images per month" if plan.monthly_images is not None else "unlimited images")
        + ("" if plan.batch_allowed else ", no batch")
        for plan in PLANS.values()
    )
    return (
        "Remove the background from images given by URL or uploaded as files, one at a time or in batches, "
        "and manage the resulting image library.\n\n"
        "Authentication: send your API key in the X-API-Key header. Only the signed file links and this "
        "documentation are public.\n\n"
        "Successful answers are {\"success\": true, \"data\": ..., \"meta\": {...}}; errors are "
        "{\"success\": false, \"error\": {\"code\", \"message\", \"status\"}}.\n\n"
        "Every answer carries X-Request-Id. Every answer to an authenticated request carries X-RateLimit-Limit, "
        "X-RateLimit-Remaining and X-RateLimit-Reset; 429 and 503 carry Retry-After.\n\n"
        f"Plans:\n{plans}\n\n"
        "Any path not listed here answers 404 not_found, and any method a listed path does not serve answers 405 "
        "(see components/responses RouteNotFound and MethodNotAllowed)."
    )


def build_document(settings: GatewaySettings) -> Json:
    """The whole OpenAPI 3.1 document for a gateway with these settings (its server URL and limits)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "RemovAI API",
            "version": "1.0.0",
            "summary": "Image background removal.",
            "description": _description(settings),
        },
        "servers": [{"url": settings.base_url, "description": "This gateway"}],
        "security": [{"ApiKeyAuth": []}],
        "tags": [
            {"name": "Remove background", "description": "Process images."},
            {"name": "Library", "description": "Your images and batches."},
            {"name": "Account", "description": "Your plan and usage."},
            {"name": "Files", "description": "Signed links to processed images."},
            {"name": "Documentation", "description": "This document."},
        ],
        "paths": _paths(settings),
        "components": {
            "securitySchemes": {
                "ApiKeyAuth": {
                    "type": "apiKey", "in": "header", "name": "X-API-Key",
                    "description": "Your API key; a missing, unknown or rotated-out key is 401 invalid_api_key.",
                },
            },
            "parameters": {
                "RequestId": {
                    "name": "X-Request-Id", "in": "header", "required": False,
                    "description": _HEADERS["X-Request-Id"][0],
                    "schema": {"type": "string"},
                },
            },
            "schemas": _schemas(settings),
            "responses": _responses(),
        },
    }


# --- The HTML page -------------------------------------------------------------------------------------

_STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:70rem;margin:0 auto;padding:1rem 2rem;color:#1a1a1a}"
    "code,pre{font:13px/1.4 ui-monospace,monospace}pre{background:#f4f4f6;padding:.75rem;overflow-x:auto}"
    "table{border-collapse:collapse;width:100%;margin:.5rem 0}th,td{border:1px solid #ddd;padding:.3rem .5rem;"
    "text-align:left;vertical-align:top}th{background:#f4f4f6}section.op{border-top:2px solid #ccc;margin-top:2rem}"
    ".method{display:inline-block;min-width:4.5rem;font-weight:700;text-transform:uppercase}"
    ".req{color:#b00}nav li{list-style:none}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_MAX_DEPTH = 4


class _Page:
    """Renders the document to HTML; every piece of text from the document is escaped."""

    def __init__(self, document: Json) -> None:
        self.document = document
        self.parts: list[str] = []

    def resolve(self, node: Json) -> Json:
        while "$ref" in node:
            target: Any = self.document
            for key in node["$ref"].removeprefix("#/").split("/"):
                target = target[key.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def flatten(self, schema: Json) -> Json:
        """allOf parts merged into one schema (properties merged key by key), refs resolved."""
        schema = self.resolve(schema)
        if "allOf" not in schema:
            return schema
        merged: Json = {}
        for part in [*schema["allOf"], {k: v for k, v in schema.items() if k != "allOf"}]:
            merged = _merge(merged, self.flatten(part))
        return merged

    def type_label(self, schema: Json) -> str:
        # A narrowed reference (an error response's own codes) shows the narrowing, not the reference.
        if "const" in schema:
            return f"<code>{_e(json.dumps(schema['const']))}</code>"
        if "enum" in schema:
            return "one of " + ", ".join(f"<code>{_e(json.dumps(value))}</code>" for value in schema["enum"])
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
        schema = self.flatten(schema)
        if "const" in schema or "enum" in schema:
            return self.type_label({k: v for k, v in schema.items() if k in ("const", "enum")})
        kind = schema.get("type", "any")
        kinds = kind if isinstance(kind, list) else [kind]
        label = " or ".join(_e(k) for k in kinds)
        if "array" in kinds and "items" in schema:
            label = "array of " + self.type_label(schema["items"])
        if "format" in schema:
            label += f" ({_e(schema['format'])})"
        if "contentMediaType" in schema:
            label += " (binary)"
        return label

    def constraints(self, schema: Json) -> str:
        schema = self.flatten(schema) if "$ref" not in schema else {}
        notes = []
        for key in ("pattern", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "default"):
            if key in schema:
                notes.append(f"{key}: <code>{_e(json.dumps(schema[key]))}</code>")
        return "; ".join(notes)

    def field_rows(self, schema: Json, prefix: str, depth: int) -> list[str]:
        schema = self.flatten(schema)
        rows = []
        required = set(schema.get("required", []))
        properties = schema.get("properties", {})
        # Required fields first, each group in the document's order.
        for name in sorted(properties, key=lambda name: name not in required):
            field = properties[name]
            path = f"{prefix}{name}"
            description = _e(field.get("description") or self.resolve(field).get("description", ""))
            extra = self.constraints(field)
            rows.append(
                f"<tr><td><code>{_e(path)}</code>{' <span class=req>required</span>' if name in required else ''}"
                f"</td><td>{self.type_label(field)}</td><td>{description}"
                f"{'<br>' + extra if extra else ''}</td></tr>"
            )
            if "$ref" not in field and depth < _MAX_DEPTH and self.flatten(field).get("properties"):
                rows.extend(self.field_rows(field, f"{path}.", depth + 1))
        return rows

    def schema_block(self, schema: Json) -> None:
        rows = self.field_rows(schema, "", 0)
        if rows:
            self.parts.append("<table><tr><th>Field</th><th>Type</th><th>Description</th></tr>")
            self.parts.extend(rows)
            self.parts.append("</table>")
        else:
            self.parts.append(f"<p>{self.type_label(schema)}</p>")

    def example(self, media: Json) -> None:
        if "example" in media:
            self.parts.append(f"<p>Example:</p><pre>{_e(json.dumps(media['example'], indent=2))}</pre>")

    def response(self, status: str, response: Json) -> None:
        response = self.resolve(response)
        self.parts.append(f"<h4>{_e(status)} — {_e(response.get('description', ''))}</h4>")
        headers = response.get("headers", {})
        if headers:
            self.parts.append("<table><tr><th>Header</th><th>Type</th><th>Description</th></tr>")
            for header, spec in headers.items():
                required = " <span class=req>always</span>" if spec.get("required") else ""
                self.parts.append(
                    f"<tr><td><code>{_e(header)}</code>{required}</td><td>{self.type_label(spec['schema'])}</td>"
                    f"<td>{_e(spec.get('description', ''))}</td></tr>"
                )
            self.parts.append("</table>")
        for media_type, media in response.get("content", {}).items():
            self.parts.append(f"<p>Body: <code>{_e(media_type)}</code></p>")
            if "schema" in media:
                self.schema_block(media["schema"])
            self.example(media)

    def operation(self, path: str, method: str, operation: Json) -> None:
        self.parts.append(
            f'<section class=op id="op-{_e(operation["operationId"])}"><h3><span class=method>{_e(method)}</span> '
            f"<code>{_e(path)}</code></h3><p><strong>{_e(operation.get('summary', ''))}</strong></p>"
            f"<p>{_e(operation.get('description', ''))}</p>"
        )
        public = operation.get("security") == []
        self.parts.append(
            "<p>Public: no API key.</p>" if public else '<p>Needs the <a href="#auth">X-API-Key</a> header.</p>'
        )
        parameters = [self.resolve(parameter) for parameter in operation.get("parameters", [])]
        if parameters:
            self.parts.append(
                "<h4>Parameters</h4><table><tr><th>Name</th><th>In</th><th>Type</th><th>Description</th></tr>"
            )
            for parameter in parameters:
                required = " <span class=req>required</span>" if parameter.get("required") else ""
                extra = self.constraints(parameter["schema"])
                self.parts.append(
                    f"<tr><td><code>{_e(parameter['name'])}</code>{required}</td><td>{_e(parameter['in'])}</td>"
                    f"<td>{self.type_label(parameter['schema'])}</td><td>{_e(parameter.get('description', ''))}"
                    f"{'<br>' + extra if extra else ''}</td></tr>"
                )
            self.parts.append("</table>")
        body = operation.get("requestBody")
        if body:
            for media_type, media in body["content"].items():
                self.parts.append(f"<h4>Request body: <code>{_e(media_type)}</code></h4>")
                self.schema_block(media["schema"])
                self.example(media)
        self.parts.append("<h4>Responses</h4>")
        for status, response in operation["responses"].items():
            self.response(status, response)
        self.parts.append("</section>")

    def render(self) -> str:
        info = self.document["info"]
        operations = [
            (path, method, operation)
            for path, item in self.document["paths"].items()
            for method, operation in item.items()
        ]
        self.parts.append(
            f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{_e(info['title'])}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{_e(info['title'])} <small>{_e(info['version'])}</small></h1>"
        )
        for paragraph in info.get("description", "").split("\n\n"):
            self.parts.append(f"<p>{_e(paragraph).replace(chr(10), '<br>')}</p>")
        servers = ", ".join(f"<code>{_e(server['url'])}</code>" for server in self.document.get("servers", []))
        self.parts.append(
            f"<p>Server: {servers}. Machine-readable: <a href=\"{OPENAPI_PATH}\">{OPENAPI_PATH}</a>.</p>"
            "<h2>Endpoints</h2><nav><ul>"
        )
        for path, method, operation in operations:
            self.parts.append(
                f'<li><a href="#op-{_e(operation["operationId"])}"><span class=method>{_e(method)}</span> '
                f"<code>{_e(path)}</code></a> — {_e(operation.get('summary', ''))}</li>"
            )
        self.parts.append("</ul></nav><h2 id=auth>Authentication</h2>")
        for name, scheme in self.document["components"]["securitySchemes"].items():
            self.parts.append(
                f"<p><strong>{_e(name)}</strong>: header <code>{_e(scheme['name'])}</code>. "
                f"{_e(scheme.get('description', ''))}</p>"
            )
        for path, method, operation in operations:
            self.operation(path, method, operation)
        self.parts.append("<h2>Responses on any path</h2>")
        for name in ("RouteNotFound", "MethodNotAllowed"):
            self.response({"RouteNotFound": "404", "MethodNotAllowed": "405"}[name],
                          {"$ref": f"#/components/responses/{name}"})
        self.parts.append("<h2>Schemas</h2>")
        for name, schema in self.document["components"]["schemas"].items():
            self.parts.append(f'<h3 id="schema-{_e(name)}">{_e(name)}</h3><p>{_e(schema.get("description", ""))}</p>')
            self.schema_block(schema)
        self.parts.append("</body></html>")
        return "".join(self.parts)


def _merge(base: Json, extra: Json) -> Json:
    merged = dict(base)
    for key, value in extra.items():
        if key == "properties" and key in merged:
            properties = dict(merged[key])
            for name, field in value.items():
                properties[name] = _merge(properties[name], field) if name in properties else field
            merged[key] = properties
        elif key == "required" and key in merged:
            merged[key] = [*merged[key], *(name for name in value if name not in merged[key])]
        else:
            merged[key] = value
    return merged


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def render_html(document: Json) -> str:
    """The document as one self-contained HTML page (an inline style allowed by hash; no scripts)."""
    return _Page(document).render()


@dataclass(frozen=True)
class Published:
    document_json: bytes
    html: str


@functools.lru_cache(maxsize=8)
def published(settings: GatewaySettings) -> Published:
    """The document and its page, built once per settings (they depend on nothing else)."""
    document = build_document(settings)
    _LOGGER.debug("built the OpenAPI document for %s", settings.base_url)
    return Published(json.dumps(document, indent=2).encode(), render_html(document))

