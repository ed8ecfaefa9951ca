"""How an internal service calls the gRPC API: stream a (large) image in, get the cut-out streamed back.

    python examples/grpc_client.py INPUT.jpg OUTPUT.png [--target 127.0.0.1:50051] [--size small]

Generated stubs come from protos/ (`make stubs`); option names, metadata keys and which failures are worth
another try come from the contract package (contract/). The image travels in 1 MiB chunks after an options
message, so a 25 MB photo never meets gRPC's 4 MiB message limit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from contract import metadata as keys
from contract.channel import CHANNEL_OPTIONS
from contract.errors import is_retryable, reason_of
from contract.options import OutputFormat, OutputSize
from removai.v1 import inference_pb2 as pb
from removai.v1 import inference_pb2_grpc as pb_grpc

CHUNK = 1024 * 1024


async def requests(path: Path, size: OutputSize) -> AsyncIterator[pb.RemoveBackgroundRequest]:
    yield pb.RemoveBackgroundRequest(
        options=pb.RemovalOptions(output_format=OutputFormat.PNG.proto, output_size=size.proto)
    )
    with path.open("rb") as f:  # streamed from disk: the whole file is never in memory at once
        while chunk := f.read(CHUNK):
            yield pb.RemoveBackgroundRequest(chunk=chunk)


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--size", type=OutputSize, choices=list(OutputSize), default=OutputSize.ORIGINAL)
    args = parser.parse_args()
    async with grpc.aio.insecure_channel(args.target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.BackgroundRemovalStub(channel)
        call = stub.RemoveBackground(requests(args.input, args.size), timeout=120,
                                     metadata=((keys.REQUEST_ID, "example-grpc"),))
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
            reason = reason_of(error)
            advice = "worth retrying later" if is_retryable(error.code(), reason) else "the same call fails again"
            print(f"failed: {error.code().name}{f' ({reason})' if reason else ''}: {error.details()} ({advice})",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
