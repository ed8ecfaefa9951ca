"""The inference service's failures, each bound to the gRPC status (and public error code) it becomes."""

from __future__ import annotations

import grpc


class InferenceError(Exception):
    """Base class: a failure the caller should see as `status_code`, with `public_code` for the HTTP API."""

    status_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    public_code: str = "server_error"


class InvalidRequest(InferenceError):
    """Bad options or a malformed stream -> INVALID_ARGUMENT (400 invalid_request)."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT
    public_code = "invalid_request"


class PayloadTooLarge(InferenceError):
    """The image is larger than the service accepts -> RESOURCE_EXHAUSTED (400 invalid_request)."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    public_code = "invalid_request"


class UnsupportedMediaType(InferenceError):
    """The bytes are not JPEG, PNG or WEBP -> UNIMPLEMENTED (415 unsupported_media_type)."""

    status_code = grpc.StatusCode.UNIMPLEMENTED
    public_code = "unsupported_media_type"


class ServiceBusy(InferenceError):
    """As many removals as `max_concurrent_rpcs` are running; retry shortly -> RESOURCE_EXHAUSTED with the
    trailer server_error (503 server_error with Retry-After)."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    public_code = "server_error"


class UnprocessableImage(InferenceError):
    """A supported type that is corrupt, truncated or has too many pixels -> FAILED_PRECONDITION (422)."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION
    public_code = "unprocessable_entity"


class UnknownModel(InferenceError):
    """The requested model is not in Triton's repository -> NOT_FOUND (400 invalid_request)."""

    status_code = grpc.StatusCode.NOT_FOUND
    public_code = "invalid_request"


class ModelUnavailable(InferenceError):
    """Triton or the model is not ready; the call may be retried -> UNAVAILABLE (503 server_error)."""

    status_code = grpc.StatusCode.UNAVAILABLE
    public_code = "server_error"


class DeadlineExceeded(InferenceError):
    """The caller's deadline passed before the cut-out was ready -> DEADLINE_EXCEEDED (504 server_error)."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED
    public_code = "server_error"


# Trailing metadata key carrying `public_code`, so callers need not parse messages.
ERROR_CODE_METADATA_KEY = "removai-error-code"
