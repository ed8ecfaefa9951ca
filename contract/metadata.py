"""gRPC metadata keys the contract defines (lower case, as gRPC requires)."""

from __future__ import annotations

# The caller's request id; the service logs it and passes it to Triton, so one request can be followed
# across every part. RemovalOptions.request_id, when set, takes precedence.
REQUEST_ID = "x-request-id"
