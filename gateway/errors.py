"""The public API's errors: each class is one HTTP status and spec error code; one table maps gRPC statuses."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Literal

import grpc
from pydantic import BaseModel, ConfigDict, Field

from contract.errors import Reason


class ApiError(Exception):
    """Rendered by the error middleware as {"success": false, "error": {code, message, status}}."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    code: str = "server_error"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})

    def envelope(self) -> dict[str, Any]:
        """The spec's error body, for HTTP answers and failure webhooks alike."""
        body = ErrorBody(code=self.code, message=self.message, status=int(self.status))
        return ErrorEnvelope(success=False, error=body).model_dump(mode="json")


class InvalidRequest(ApiError):
    """400 invalid_request: malformed or invalid request."""

    status = HTTPStatus.BAD_REQUEST
    code = "invalid_request"


class NoForeground(InvalidRequest):
    """400 invalid_request: no pixel of the result is foreground, so there is no subject to cut out (the remove.bg
    drop-in's unknown_foreground; /v1 answers such an image with foreground null instead)."""


class InvalidApiKey(ApiError):
    """401 invalid_api_key: the X-API-Key header is missing or matches no active key."""

    status = HTTPStatus.UNAUTHORIZED
    code = "invalid_api_key"


class Forbidden(ApiError):
    """403 forbidden: the plan does not allow this (e.g. batch on Basic), or the operator disabled the account."""

    status = HTTPStatus.FORBIDDEN
    code = "forbidden"


class NotFound(ApiError):
    """404 not_found: no such route, or no such resource for this account."""

    status = HTTPStatus.NOT_FOUND
    code = "not_found"


class MethodNotAllowed(ApiError):
    """405 with the spec's invalid_request code (the spec has no code of its own for it); sets Allow."""

    status = HTTPStatus.METHOD_NOT_ALLOWED
    code = "invalid_request"


class NotAcceptable(ApiError):
    """406 not_acceptable: the Accept header admits neither the JSON envelope nor an image this request makes."""

    status = HTTPStatus.NOT_ACCEPTABLE
    code = "not_acceptable"


class IdempotencyInProgress(ApiError):
    """409 idempotency_in_progress: the first request with this Idempotency-Key is still running (past the
    bounded wait); Retry-After says when to ask again, with the same key."""

    status = HTTPStatus.CONFLICT
    code = "idempotency_in_progress"


class IdempotencyKeyReused(ApiError):
    """422 idempotency_key_reused: this Idempotency-Key was used within 24 hours for a different request."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "idempotency_key_reused"


class UnsupportedMediaType(ApiError):
    """415 unsupported_media_type: not JPG, PNG or WEBP (decided by the bytes)."""

    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_media_type"


class UnprocessableEntity(ApiError):
    """422 unprocessable_entity: an accepted type that cannot be decoded or processed."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "unprocessable_entity"


class RateLimitExceeded(ApiError):
    """429 rate_limit_exceeded: over the plan's requests per minute; Retry-After says when to come back."""

    status = HTTPStatus.TOO_MANY_REQUESTS
    code = "rate_limit_exceeded"


class QuotaExceeded(ApiError):
    """429 quota_exceeded: the plan's monthly images are used up; Retry-After points at the next month."""

    status = HTTPStatus.TOO_MANY_REQUESTS
    code = "quota_exceeded"


class RequestTimeout(ApiError):
    """408 with the spec's invalid_request code: the body did not arrive in time (stalled or too slow)."""

    status = HTTPStatus.REQUEST_TIMEOUT
    code = "invalid_request"


class TooManyUploads(ApiError):
    """429 rate_limit_exceeded: the account already has as many uploads running, Idempotency-Key replays streaming
    or batch images queued as its cap allows; Retry-After says when to try again."""

    status = HTTPStatus.TOO_MANY_REQUESTS
    code = "rate_limit_exceeded"


class ServerError(ApiError):
    """500 server_error: a bug or an unexpected failure; details go to the log, not the client."""


class ServiceUnavailable(ApiError):
    """503 server_error with Retry-After: inference (Triton) is temporarily unavailable; safe to retry."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class StoreUnavailable(ApiError):
    """503 server_error with Retry-After: a store the gateway keeps its state in (the database, or Redis for
    shared rate limits) cannot be reached right now; safe to retry. `store` names it for logs and metrics only:
    the message does not say which (a client cannot act on it, and it describes the deployment)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, store: str, *, retry_after_s: int) -> None:
        super().__init__(
            "the service is temporarily unavailable; retry shortly", headers={"Retry-After": str(retry_after_s)}
        )
        self.store = store


class GatewayTimeout(ApiError):
    """504 server_error: the image was not processed within the deadline; safe to retry."""

    status = HTTPStatus.GATEWAY_TIMEOUT


def error_classes() -> list[type[ApiError]]:
    """ApiError and every subclass, each once."""
    found: list[type[ApiError]] = [ApiError]
    for cls in found:
        found.extend(sub for sub in cls.__subclasses__() if sub not in found)
    return found


def _code_enum(schema: dict[str, Any]) -> None:
    # Read from the classes when the document is built, so a new error class cannot be left out.
    schema["enum"] = sorted({cls.code for cls in error_classes()})


class ErrorBody(BaseModel):
    """What went wrong."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(
        json_schema_extra=_code_enum,
        description="Machine-readable; one status can carry more than one code (429: rate_limit_exceeded or "
                    "quota_exceeded) and one code more than one status (server_error: 500, 503, 504).",
    )
    message: str = Field(min_length=1, description="For people, not programs.")
    status: int = Field(ge=400, le=599, description="The HTTP status, repeated.")


class ErrorEnvelope(BaseModel):
    """Every error, from any endpoint or an unknown path."""

    model_config = ConfigDict(extra="forbid")

    success: Literal[False]
    error: ErrorBody


# The one table from the inference service's gRPC statuses to public errors (docs/inference.md and the proto link here).
# RESOURCE_EXHAUSTED is the exception the table cannot express: see from_grpc.
GRPC_STATUS_TO_ERROR: Mapping[grpc.StatusCode, type[ApiError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.RESOURCE_EXHAUSTED: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: InvalidRequest,
    grpc.StatusCode.UNIMPLEMENTED: UnsupportedMediaType,
    grpc.StatusCode.FAILED_PRECONDITION: UnprocessableEntity,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: GatewayTimeout,
}


def from_grpc(code: grpc.StatusCode, details: str, *, retry_after_s: int, reason: str | None = None) -> ApiError:
    """The public error for a failed inference call; unknown statuses (INTERNAL: a bug) are server errors.

    `reason` is the ErrorInfo reason of the status's rich details (contract.errors). RESOURCE_EXHAUSTED is an
    image too large (400) only with IMAGE_TOO_LARGE; otherwise the service is at its cap of concurrent calls
    (its own refusal, SERVICE_BUSY, or gRPC's maximum_concurrent_rpcs, no details): 503 with Retry-After."""
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and reason != Reason.IMAGE_TOO_LARGE:
        return ServiceUnavailable(
            "the inference service is at capacity; retry shortly", headers={"Retry-After": str(retry_after_s)}
        )
    error_class = GRPC_STATUS_TO_ERROR.get(code, ServerError)
    if error_class is ServerError:
        return ServerError("the image could not be processed because of an internal error")
    if error_class is ServiceUnavailable and reason == Reason.MODEL_NOT_INSTALLED:
        # Not the moment's: no Retry-After. The details name the server's files, so they stay in its log.
        return ServiceUnavailable(
            "the requested model is not installed on this server; use another (GET /v1/models) or ask its operator"
        )
    if error_class is ServiceUnavailable:
        # gRPC's own UNAVAILABLE details name internal addresses ("failed to connect to ... ipv4:10.0.0.5:50051").
        return ServiceUnavailable(
            "the inference service is temporarily unavailable; retry shortly",
            headers={"Retry-After": str(retry_after_s)},
        )
    return error_class(details or "the image could not be processed")
