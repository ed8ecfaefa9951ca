"""The gateway's side of the inference API: one gRPC channel per process, failures as public errors."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from gateway.errors import from_grpc
from inference_service.client import CHANNEL_OPTIONS, RemovalResult, remove_background
from removai.v1 import inference_pb2 as pb
from removai.v1 import inference_pb2_grpc as pb_grpc

_LOGGER = logging.getLogger(__name__)

# The trailer the service sets on its own errors (protos/removai/v1/inference.proto); the gateway does not
# import the server's modules for it.
ERROR_CODE_TRAILER = "removai-error-code"
OUTPUT_FORMATS = {"png": pb.OUTPUT_FORMAT_PNG, "jpg": pb.OUTPUT_FORMAT_JPG, "webp": pb.OUTPUT_FORMAT_WEBP}
OUTPUT_SIZES = {
    "original": pb.OUTPUT_SIZE_ORIGINAL,
    "small": pb.OUTPUT_SIZE_SMALL,
    "medium": pb.OUTPUT_SIZE_MEDIUM,
    "large": pb.OUTPUT_SIZE_LARGE,
}


@dataclass(frozen=True)
class Options:
    """Validated public options, as stored with each image."""

    output_format: str = "png"
    output_size: str = "original"
    bg_color: str | None = None


class InferenceClient:
    """Create inside the running loop; close() when the app stops."""

    def __init__(self, target: str, *, timeout_s: float, retry_after_s: int) -> None:
        self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.BackgroundRemovalStub(self._channel)
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s

    async def close(self) -> None:
        await self._channel.close()

    async def remove_background(self, image: bytes, options: Options, *, request_id: str) -> RemovalResult:
        """The cut-out, or an ApiError (415, 422, 503 with Retry-After...) from the one mapping table."""
        message = pb.RemovalOptions(
            output_format=OUTPUT_FORMATS[options.output_format],
            output_size=OUTPUT_SIZES[options.output_size],
            bg_color=options.bg_color or "",
            request_id=request_id,
        )
        try:
            return await remove_background(
                self._stub, image, message, timeout_s=self._timeout_s, request_id=request_id
            )
        except grpc.aio.AioRpcError as exc:
            _LOGGER.info("request %s: inference failed: %s %s", request_id, exc.code().name, exc.details())
            trailers = dict(exc.trailing_metadata() or ())
            public_code = trailers.get(ERROR_CODE_TRAILER)
            raise from_grpc(
                exc.code(), exc.details() or "", retry_after_s=self._retry_after_s,
                public_code=public_code if isinstance(public_code, str) else None,
            ) from exc
