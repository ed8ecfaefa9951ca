"""How an internal service calls the gRPC API: stream a (large) image in, get the cut-out streamed back.

    python examples/grpc_client.py INPUT.jpg OUTPUT.png [--target 127.0.0.1:50051] [--size small]

Generated stubs come from protos/ (`make stubs`). The image travels in 1 MiB chunks after an options message,
so a 25 MB photo never meets gRPC's 4 MiB message limit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from removai.v1 import inference_pb2 as pb
from removai.v1 import inference_pb2_grpc as pb_grpc

CHUNK = 1024 * 1024
SIZES = {"original": pb.OUTPUT_SIZE_ORIGINAL, "small": pb.OUTPUT_SIZE_SMALL, "medium": pb.OUTPUT_SIZE_MEDIUM,
         "large": pb.OUTPUT_SIZE_LARGE}


async def requests(path: Path, size: str) -> AsyncIterator[pb.RemoveBackgroundRequest]:
    yield pb.RemoveBackgroundRequest(
        options=pb.RemovalOptions(output_format=pb.OUTPUT_FORMAT_PNG, output_size=SIZES[size])
    )
    with path.open("rb") as f:  # streamed from disk: the whole file is never in memory at once
        while chunk := f.read(CHUNK):
            yield pb.RemoveBackgroundRequest(chunk=chunk)


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--size", choices=sorted(SIZES), default="original")
    args = parser.parse_args()
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = pb_grpc.BackgroundRemovalStub(channel)
        call = stub.RemoveBackground(requests(args.input, args.size), timeout=120,
                                     metadata=(("x-request-id", "example-grpc"),))
        try:
            with args.output.open("wb") as out:
                async for response in call:
                    if response.WhichOneof("part") == "metadata":
                        meta = response.metadata
                        print(f"{meta.width}x{meta.height} {meta.content_type} by {meta.model_name} "
                              f"v{meta.model_version} in {meta.timings.total_ms:.0f} ms")
                    else:
                        out.write(response.chunk)
        except grpc.aio.AioRpcError as error:
            code = dict(error.trailing_metadata() or ()).get("removai-error-code")
            print(f"failed: {error.code().name} ({code}): {error.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
