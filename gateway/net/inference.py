"""The gateway's side of the inference API: one balanced gRPC channel per process, failures as public errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import grpc

from contract.channel import BALANCED_CHANNEL_OPTIONS, balanced_target
from contract.client import RemovalResult, remove_background
from contract.errors import is_retryable, reason_of
from contract.options import RemovalOptions
from gateway.errors import from_grpc
from removai.v1 import inference_pb2 as pb
from removai.v1 import inference_pb2_grpc as pb_grpc

_LOGGER = logging.getLogger(__name__)

# Before retrying a call a replica dropped, wait at most this long for the channel to see a healthy replica
# (its health stream may lag a restart by a moment); bounded so that a 503 still comes promptly when none is.
RETRY_WAIT_S = 1.0


@dataclass(frozen=True)
class ModelInfo:
    """One model the inference service can run (GET /v1/models)."""

    name: str
    version: str
    description: str
    is_default: bool


class InferenceClient:
    """Round robin over every inference replica `target` names (see balanced_target); a call a replica drops
    (UNAVAILABLE) is sent once more, to another replica. Create inside the running loop; close() when done."""

    def __init__(self, target: str, *, timeout_s: float, retry_after_s: int) -> None:
        self._channel = grpc.aio.insecure_channel(balanced_target(target), options=BALANCED_CHANNEL_OPTIONS)
        self._stub = pb_grpc.BackgroundRemovalStub(self._channel)
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s

    async def close(self) -> None:
        await self._channel.close()

    async def list_models(self) -> list[ModelInfo]:
        """The models the inference service's Triton has ready, or an ApiError (503 when it is down)."""
        try:
            response = await self._stub.ListModels(pb.ListModelsRequest(), timeout=min(self._timeout_s, 10.0))
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(
                exc.code(), exc.details() or "", retry_after_s=self._retry_after_s, reason=reason_of(exc)
            ) from exc
        return sorted(
            (ModelInfo(m.name, m.version, m.description, m.is_default) for m in response.models),
            key=lambda m: (not m.is_default, m.name),
        )

    async def remove_background(
        self, image: bytes, options: RemovalOptions, *, request_id: str, background: bytes | None = None
    ) -> RemovalResult:
        """The result (over the `background` image's bytes when given), or an ApiError (415, 422, 503 with
        Retry-After...) from the one mapping table."""
        message = options.message(request_id)
        deadline = time.monotonic() + self._timeout_s
        try:
            try:
                return await remove_background(
                    self._stub, image, message, timeout_s=self._timeout_s, request_id=request_id,
                    background=background,
                )
            except grpc.aio.AioRpcError as exc:
                # Inference is idempotent, so a call a replica dropped (killed, or its Triton went away) is safe
                # to send again; any other status is the answer for this image and would only repeat.
                if exc.code() is not grpc.StatusCode.UNAVAILABLE or not is_retryable(exc.code(), reason_of(exc)):
                    raise
                _LOGGER.info("request %s: inference unavailable (%s); retrying once", request_id, exc.details())
                await self._wait_for_a_healthy_replica(min(RETRY_WAIT_S, deadline - time.monotonic()))
                return await remove_background(
                    self._stub, image, message, timeout_s=max(deadline - time.monotonic(), 0.001),
                    request_id=request_id, background=background,
                )
        except grpc.aio.AioRpcError as exc:
            _LOGGER.info("request %s: inference failed: %s %s", request_id, exc.code().name, exc.details())
            raise from_grpc(
                exc.code(), exc.details() or "", retry_after_s=self._retry_after_s, reason=reason_of(exc)
            ) from exc

    async def _wait_for_a_healthy_replica(self, within_s: float) -> None:
        """Returns once the channel is READY (some replica connected and SERVING) or after within_s."""
        if within_s <= 0:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._channel.channel_ready(), within_s)
