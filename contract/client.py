"""A caller's side of the inference API: stream an image in, collect the cut-out (gateway, CLI, bench, tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from contract import metadata as keys
from removai.v1 import inference_pb2 as pb
from removai.v1 import inference_pb2_grpc as pb_grpc

# Each message must stay under gRPC's default 4 MiB; 1 MiB keeps a 25 MB image well inside it.
REQUEST_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class RemovalResult:
    metadata: pb.ResultMetadata
    data: bytes


async def _requests(
    options: pb.RemovalOptions, image: bytes, background: bytes | None
) -> AsyncIterator[pb.RemoveBackgroundRequest]:
    """Options first, then the background image (if any) as bg_chunks, then the image as chunks."""
    if background:
        announced = pb.RemovalOptions()
        announced.CopyFrom(options)
        announced.bg_image_bytes = len(background)
        options = announced
    yield pb.RemoveBackgroundRequest(options=options)
    if background:
        view = memoryview(background)
        for start in range(0, len(view), REQUEST_CHUNK_BYTES):
            yield pb.RemoveBackgroundRequest(bg_chunk=bytes(view[start : start + REQUEST_CHUNK_BYTES]))
    view = memoryview(image)
    for start in range(0, len(view), REQUEST_CHUNK_BYTES):
        yield pb.RemoveBackgroundRequest(chunk=bytes(view[start : start + REQUEST_CHUNK_BYTES]))


async def remove_background(
    stub: pb_grpc.BackgroundRemovalAsyncStub,
    image: bytes,
    options: pb.RemovalOptions,
    *,
    timeout_s: float | None = None,
    request_id: str = "",
    background: bytes | None = None,
) -> RemovalResult:
    """The result of one removal (composited over the `background` image's bytes when given). Raises
    grpc.aio.AioRpcError with the service's status on failure (contract.errors says which are worth another
    try)."""
    metadata = ((keys.REQUEST_ID, request_id),) if request_id else None
    call = stub.RemoveBackground(_requests(options, image, background), timeout=timeout_s, metadata=metadata)
    result_metadata: pb.ResultMetadata | None = None
    chunks: list[bytes] = []
    async for response in call:
        if response.WhichOneof("part") == "metadata":
            result_metadata = response.metadata
        else:
            chunks.append(response.chunk)
    if result_metadata is None:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), "no metadata in the response"
        )
    return RemovalResult(result_metadata, b"".join(chunks))
