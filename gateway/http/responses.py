"""The OpenAPI document's shared parts: response headers, the error responses every operation refers to (one
per error kind, built from gateway.errors), and the header parameters several operations take."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway import errors

Json = dict[str, Any]


# --- Headers and the shared error responses ----------------------------------------------------------------

HEADERS: Mapping[str, tuple[str, Json]] = {
    "X-Request-Id": (
        ("Identifies the request in the gateway's logs: the caller's own X-Request-Id when it matches "
         "[A-Za-z0-9._-]{1,64}, otherwise a new one."),
        {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
    ),
    "X-Content-Type-Options": ("`nosniff`: the body is what Content-Type says.", {"type": "string", "const": "nosniff"}),
    "Cache-Control": (
        ("`no-store` (answers carry signed links, which no shared cache should keep), unless the operation says "
         "otherwise."),
        {"type": "string"},
    ),
    "X-RateLimit-Limit": ("Requests the plan allows per minute.", {"type": "integer", "minimum": 1}),
    "X-RateLimit-Remaining": ("Requests left in the current one-minute window.", {"type": "integer", "minimum": 0}),
    "X-RateLimit-Reset": ("When the current window resets, UTC epoch seconds.", {"type": "integer", "minimum": 0}),
    "Retry-After": ("Seconds to wait before retrying.", {"type": "integer", "minimum": 1}),
    "X-Image-Id": ("The image record's id (GET /v1/images/{image_id} has its output_url).", {"type": "string"}),
    "X-Width": ("Width of the cut-out, px.", {"type": "integer", "minimum": 1}),
    "X-Height": ("Height of the cut-out, px.", {"type": "integer", "minimum": 1}),
    "Idempotent-Replayed": (
        "\"true\" when this is the stored answer of an earlier request with the same Idempotency-Key.",
        {"type": "string", "const": "true"},
    ),
    **{
        f"X-Foreground-{side}": (
            (f"The {meaning} of the foreground's bounding box in the cut-out, px (pixels with alpha above 16 of "
             "255); absent when the image has no foreground."),
            {"type": "integer", "minimum": minimum},
        )
        for side, meaning, minimum in (("Left", "left edge", 0), ("Top", "top edge", 0), ("Width", "width", 1),
                                       ("Height", "height", 1))
    },
    "Content-Disposition": ("`inline` with the file's name, `{image_id}.{extension}`.", {"type": "string"}),
    "Vary": ("`Accept`: the answer depends on the Accept header.", {"type": "string"}),
    "Allow": ("The methods this path serves.", {"type": "string"}),
}


def header(name: str, *, required: bool) -> Json:
    """One documented response header."""
    return {"description": HEADERS[name][0], "required": required, "schema": dict(HEADERS[name][1])}


def headers(*, rate: bool | None, retry_after: bool = False) -> Json:
    """X-Request-Id, nosniff and Cache-Control always; the rate-limit headers required (True), possible (None)
    or absent (False)."""
    chosen = [("X-Request-Id", True), ("X-Content-Type-Options", True), ("Cache-Control", True)]
    if rate is not False:
        chosen += [(name, rate is True) for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")]
    if retry_after:
        chosen.append(("Retry-After", True))
    return {name: {"description": HEADERS[name][0], "required": required, "schema": dict(HEADERS[name][1])}
            for name, required in chosen}


E = errors
# name: (error classes, rate-limit headers, Retry-After, an example message, a note)
ERRORS: Mapping[str, tuple[tuple[type[errors.ApiError], ...], bool | None, bool, str, str]] = {
    "BadRequest": ((E.InvalidRequest,), True, False, "url: Field required", ""),
    "Unauthorized": ((E.InvalidApiKey,), False, False, "The API key provided is invalid or missing",
                     "No rate-limit headers: there is no account to count against."),
    "Forbidden": ((E.Forbidden,), True, False, "batch processing is available on the Pro and Enterprise plans", ""),
    "NotFound": ((E.NotFound,), True, False, "no image with this id", ""),
    "RouteNotFound": ((E.NotFound,), False, False, "no such endpoint",
                      "Any path this document does not list; answered before authentication."),
    "FileNotFound": ((E.NotFound,), False, False, "no file at this link, or the link has expired",
                     "An unknown, tampered or expired link, or a deleted image."),
    "MethodNotAllowed": ((E.MethodNotAllowed,), False, False, "method not allowed; use POST",
                         ("Any method a listed path does not serve; answered before authentication. The Allow "
                          "header lists the methods it does serve.")),
    "RequestTimeout": ((E.RequestTimeout,), None, False, "the request body stalled: nothing arrived for 30 s",
                       "The body stalled (upload_idle_timeout_s) or took longer than upload_deadline_s."),
    "UnsupportedMediaType": ((E.UnsupportedMediaType,), True, False, "the image is not JPG, PNG or WEBP", ""),
    "UnprocessableEntity": ((E.UnprocessableEntity,), True, False, "the JPEG image could not be decoded: image file is truncated", ""),
    "RateLimited": ((E.RateLimitExceeded, E.TooManyUploads), True, True,
                    "rate limit of 10 requests per minute exceeded", ""),
    "RateOrQuotaLimited": ((E.RateLimitExceeded, E.TooManyUploads, E.QuotaExceeded), True, True,
                           "rate limit of 10 requests per minute exceeded", ""),
    "ServerError": ((E.ServerError,), None, False, "an unexpected error occurred; it has been logged",
                    "The rate-limit headers are missing when the failure came before the account was known."),
    "ServiceUnavailable": ((E.ServiceUnavailable, E.StoreUnavailable), None, True,
                           "the inference service is temporarily unavailable; retry shortly",
                           "The rate-limit headers are missing when a store failed before the account was counted."),
    "StoreUnavailable": ((E.StoreUnavailable,), None, True, "the service is temporarily unavailable; retry shortly",
                         "The rate-limit headers are missing when the store failed before the account was counted."),
    "ModelsUnavailable": ((E.ServiceUnavailable,), False, True, "the inference service is temporarily unavailable; retry shortly",
                          "The model list comes from the inference service; public, so no rate-limit headers."),
    "GatewayTimeout": ((E.GatewayTimeout,), True, False, "the image was not processed within the deadline", ""),
    "NotAcceptable": ((E.NotAcceptable,), True, False,
                      "this request can answer with application/json, image/png; the Accept header allows none of them",
                      ""),
    "IdempotencyInProgress": ((E.IdempotencyInProgress,), True, True,
                              "a request with this Idempotency-Key is still running; repeat it shortly for its answer",
                              ""),
    "UnprocessableOrKeyReused": ((E.UnprocessableEntity, E.IdempotencyKeyReused), True, False,
                                 "the JPEG image could not be decoded: image file is truncated", ""),
    "IdempotencyKeyReused": ((E.IdempotencyKeyReused,), True, False,
                             ("this Idempotency-Key was already used for a different request in the last 24"
                              " hours; use a new key for a new request"), ""),
}


PARAMETERS: Json = {
    "ImageAccept": {
        "name": "Accept", "in": "header", "required": False,
        "description": (
            "The image type to answer with when the request gives no output_format (png when the header names "
            "none); q-values are honoured. An Accept that admits no image this request can make is 406."
        ),
        "schema": {"type": "string"},
        "example": "image/png",
    },
    "IdempotencyKey": {
        "name": "Idempotency-Key", "in": "header", "required": False,
        "description": (
            "Makes a creating request safe to retry: the same key with the same request within 24 hours gets the "
            "first answer again (same ids, not counted again against the monthly quota; like every request, it "
            "counts toward the per-minute rate limit); while the first still runs a repeat waits up to "
            "idempotency_wait_s, then 409 idempotency_in_progress; the key with a different request (any field, "
            "file, the Accept header) is 422 idempotency_key_reused. Scoped to your account. 5xx, 408, 409 and 429 "
            "answers are not kept: the key runs afresh."
        ),
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]{1,255}$"},
        "example": "0f3c2a8e-5b1d-4c8e-9a77-2d6f1e0b9c41",
    },
    "Accept": {
        "name": "Accept", "in": "header", "required": False,
        "description": (
            "`application/json` (the default, also for an Accept of any type) for the envelope; `image/png`, "
            "`image/jpeg`, `image/webp` or any image type (the image wildcard) for the cut-out's bytes (single "
            "images). q-values are honoured; an Accept nothing can satisfy is 406."
        ),
        "schema": {"type": "string"},
        "example": "image/png",
    },
}


def error_status(name: str) -> str:
    return str(int(ERRORS[name][0][0].status))


def error_response(name: str) -> Json:
    classes, rate, retry_after, message, note = ERRORS[name]
    codes = sorted({cls.code for cls in classes})
    status = int(classes[0].status)
    described = " ".join(" ".join((cls.__doc__ or "").split()) for cls in classes)
    return {
        "description": f"{described} {note}".strip(),
        "headers": {**headers(rate=rate, retry_after=retry_after),
                    **({"Allow": header("Allow", required=True)} if name == "MethodNotAllowed" else {})},
        "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorEnvelope"},
            "example": {"success": False, "error": {"code": codes[0], "message": message, "status": status}},
        }},
    }
