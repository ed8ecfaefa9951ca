"""The inference service's failures, each bound to the gRPC status it becomes (the contract's only language:
no HTTP here; the gateway maps statuses to public errors in gateway/errors.py)."""

from __future__ import annotations

import grpc

from contract.errors import Reason


class InferenceError(Exception):
    """Base class: a failure the caller should see as `status_code` (INTERNAL: a bug), with `reason` as
    google.rpc.ErrorInfo where the status alone does not say which failure it is."""

    status_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: Reason | None = None


class InvalidRequest(InferenceError):
    """Bad options or a malformed stream -> INVALID_ARGUMENT."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class PayloadTooLarge(InferenceError):
    """The image is larger than the service accepts -> RESOURCE_EXHAUSTED, reason IMAGE_TOO_LARGE (final)."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.IMAGE_TOO_LARGE


class UnsupportedMediaType(InferenceError):
    """The bytes are not JPEG, PNG or WEBP -> UNIMPLEMENTED."""

    status_code = grpc.StatusCode.UNIMPLEMENTED


class ServiceBusy(InferenceError):
    """As many removals as `max_concurrent_rpcs` are running, or the call's images would take the bytes held by
    all calls over `max_buffered_bytes` -> RESOURCE_EXHAUSTED, reason SERVICE_BUSY (retry shortly)."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.SERVICE_BUSY


class UnprocessableImage(InferenceError):
    """A supported type that is corrupt or truncated, has too many pixels, or that the model rejected as input
    -> FAILED_PRECONDITION (the same call fails again)."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class UnknownModel(InferenceError):
    """The requested model is not in Triton's repository -> NOT_FOUND."""

    status_code = grpc.StatusCode.NOT_FOUND


class ModelUnavailable(InferenceError):
    """Triton or the model is not ready; the call may be retried -> UNAVAILABLE."""

    status_code = grpc.StatusCode.UNAVAILABLE


class ModelNotInstalled(ModelUnavailable):
    """The model is in Triton's repository but its load failed (weights not installed or broken): the same call
    fails until an operator installs it -> UNAVAILABLE, reason MODEL_NOT_INSTALLED (final: not retried)."""

    reason = Reason.MODEL_NOT_INSTALLED


class DeadlineExceeded(InferenceError):
    """The caller's deadline passed before the cut-out was ready -> DEADLINE_EXCEEDED."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED
