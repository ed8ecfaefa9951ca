"""The error contract of the inference API: which gRPC statuses a caller may retry, and the reasons that
tell apart two failures sharing a status.

The service answers every failure with one gRPC status (protos/removai/v1/inference.proto lists them). Where
one status covers two different failures, the status's rich details (`grpc-status-details-bin`, a
google.rpc.Status) carry a google.rpc.ErrorInfo with domain DOMAIN and one of the Reason values. The public
HTTP mapping is the gateway's (gateway/errors.py); this module knows nothing of HTTP.
"""

from __future__ import annotations

import enum

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "removai.v1"


class Reason(enum.StrEnum):
    """google.rpc.ErrorInfo reasons (UPPER_SNAKE_CASE, as AIP-193 asks)."""

    # RESOURCE_EXHAUSTED: the upload is larger than the service accepts; the same call fails again.
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
    # RESOURCE_EXHAUSTED: the service is running as many removals, or holding as many image bytes, as it
    # allows; retry shortly.
    SERVICE_BUSY = "SERVICE_BUSY"
    # UNAVAILABLE: the model is in the server's repository but could not be loaded (its weights are not
    # installed, or its files are broken); the same call fails until the server's operator installs it.
    MODEL_NOT_INSTALLED = "MODEL_NOT_INSTALLED"


# Failures of the service's moment, not of the call: sending the same call again (after a pause) may succeed.
# RESOURCE_EXHAUSTED is among them unless its reason says the image itself is too large (a cap in front of
# the service, gRPC's own maximum_concurrent_rpcs say, sends it with no details at all), and UNAVAILABLE unless
# its reason says the model is not installed on the server. Everything else
# (bad input, unsupported type, INTERNAL: a bug) fails the same way every time and is never retried.
RETRYABLE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
})
FINAL_REASONS = frozenset({Reason.IMAGE_TOO_LARGE, Reason.MODEL_NOT_INSTALLED})


def is_retryable(code: grpc.StatusCode, reason: str | None) -> bool:
    """Whether a failed call with this status and ErrorInfo reason is worth sending again."""
    return code in RETRYABLE_CODES and reason not in FINAL_REASONS


def reason_of(error: grpc.RpcError) -> str | None:
    """The ErrorInfo reason in a failed call's rich status details (of DOMAIN), None when it has none."""
    trailers = error.trailing_metadata() if isinstance(error, grpc.Call | grpc.aio.AioRpcError) else None
    for key, value in trailers or ():
        if key != rpc_status.GRPC_DETAILS_METADATA_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and info.domain == DOMAIN:
                return str(info.reason)
    return None


def error_status(code: grpc.StatusCode, message: str, reason: Reason | None = None) -> grpc.Status:
    """What a servicer aborts with (`await context.abort(s.code, s.details, s.trailing_metadata)`): the status,
    with an ErrorInfo of `reason` in its rich details when one is given."""
    status = status_pb2.Status(code=code.value[0], message=message)
    if reason is not None:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason.value, domain=DOMAIN))
        status.details.append(detail)
    converted: grpc.Status = rpc_status.to_status(status)
    return converted
