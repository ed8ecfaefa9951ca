"""Every kind of bad input gets its own gRPC status (which the gateway's one table maps to a public error, and
which is never worth a retry); the server keeps serving."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from contract.client import remove_background
from contract.errors import Reason, is_retryable, reason_of
from gateway.errors import from_grpc
from inference_service.server import create_server
from inference_service.settings import InferenceSettings
from removai.v1 import inference_pb2 as pb
from removai.v1 import inference_pb2_grpc as pb_grpc
from tests.reference import DATA
from tools.triton_launcher import TritonServer


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


PHOTO = (DATA / "chelsea.jpg").read_bytes()
BAD_INPUTS = [
    ("corrupt-jpeg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, pb.RemovalOptions(),
     grpc.StatusCode.FAILED_PRECONDITION, "unprocessable_entity"),
    ("truncated-jpeg", PHOTO[: len(PHOTO) // 3], pb.RemovalOptions(),
     grpc.StatusCode.FAILED_PRECONDITION, "unprocessable_entity"),
    ("pixel-bomb", _encoded(Image.new("1", (20_000, 20_000)), "PNG"), pb.RemovalOptions(),
     grpc.StatusCode.FAILED_PRECONDITION, "unprocessable_entity"),
    ("gif", _encoded(Image.new("RGB", (32, 32), (200, 10, 10)), "GIF"), pb.RemovalOptions(),
     grpc.StatusCode.UNIMPLEMENTED, "unsupported_media_type"),
    ("svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
     pb.RemovalOptions(), grpc.StatusCode.UNIMPLEMENTED, "unsupported_media_type"),
    ("text", b"name,price\nwidget,3\n", pb.RemovalOptions(),
     grpc.StatusCode.UNIMPLEMENTED, "unsupported_media_type"),
    ("bad-bg-color", PHOTO, pb.RemovalOptions(bg_color="#12345"),
     grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
    ("bad-output-format", PHOTO, pb.RemovalOptions(output_format=99),  # type: ignore[arg-type]
     grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
    ("bad-output-size", PHOTO, pb.RemovalOptions(output_size=42),  # type: ignore[arg-type]
     grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
    ("unknown-model", PHOTO, pb.RemovalOptions(model="no_such_model"),
     grpc.StatusCode.NOT_FOUND, "invalid_request"),
    ("empty-image", b"", pb.RemovalOptions(),
     grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
]


@pytest.mark.parametrize(
    ("data", "options", "status", "public_code"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
async def test_bad_input_gets_its_own_status(
    stub: pb_grpc.BackgroundRemovalAsyncStub, data: bytes, options: pb.RemovalOptions,
    status: grpc.StatusCode, public_code: str,
) -> None:
    """Corrupt, unsupported, oversized-in-pixels and badly-optioned requests each map to one status, with no
    HTTP knowledge in the answer (no public-code trailer); the gateway's table makes it the public error, and
    the contract says the same call is not worth sending again."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await remove_background(stub, data, options, timeout_s=60)
    error = caught.value
    assert error.code() == status, error.details()
    assert error.details()
    assert "removai-error-code" not in dict(error.trailing_metadata() or ())
    assert reason_of(error) is None
    assert not is_retryable(error.code(), reason_of(error))
    assert from_grpc(error.code(), error.details() or "", retry_after_s=1).code == public_code


async def _stream(*messages: pb.RemoveBackgroundRequest) -> AsyncIterator[pb.RemoveBackgroundRequest]:
    for message in messages:
        yield message


@pytest.mark.parametrize(
    "messages",
    [
        (pb.RemoveBackgroundRequest(chunk=PHOTO),),
        (pb.RemoveBackgroundRequest(options=pb.RemovalOptions()),) * 2,
        (),
        (pb.RemoveBackgroundRequest(options=pb.RemovalOptions()), pb.RemoveBackgroundRequest()),
    ],
    ids=["chunk-before-options", "options-twice", "empty-stream", "empty-message"],
)
async def test_malformed_stream_is_invalid_argument(
    stub: pb_grpc.BackgroundRemovalAsyncStub, messages: tuple[pb.RemoveBackgroundRequest, ...]
) -> None:
    """The stream must be options first, then chunks; anything else is INVALID_ARGUMENT."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.RemoveBackground(_stream(*messages), timeout=30):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) is None


async def test_deadline_exceeded(stub: pb_grpc.BackgroundRemovalAsyncStub) -> None:
    """A deadline shorter than one inference ends the call with DEADLINE_EXCEEDED, not a hang."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await remove_background(stub, PHOTO, pb.RemovalOptions(), timeout_s=0.05)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest_asyncio.fixture(scope="module")
async def small_limit_stub(triton: TritonServer) -> AsyncIterator[pb_grpc.BackgroundRemovalAsyncStub]:
    running = create_server(InferenceSettings(port=0, metrics_port=0, triton_url=triton.grpc_url, max_image_bytes=64 * 1024))
    await running.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield pb_grpc.BackgroundRemovalStub(channel)
    await running.stop()


async def test_upload_over_the_byte_limit_is_resource_exhausted(
    small_limit_stub: pb_grpc.BackgroundRemovalAsyncStub,
) -> None:
    """Bytes beyond max_image_bytes are refused while streaming, with RESOURCE_EXHAUSTED and the reason
    IMAGE_TOO_LARGE (final: 400 at the gateway, unlike the busy refusal that shares the status)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await remove_background(small_limit_stub, PHOTO + bytes(100_000), pb.RemovalOptions())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(caught.value) == Reason.IMAGE_TOO_LARGE
    assert not is_retryable(caught.value.code(), reason_of(caught.value))


async def test_still_serving_after_all_errors(
    stub: pb_grpc.BackgroundRemovalAsyncStub, channel: grpc.aio.Channel
) -> None:
    """After every bad input above, health is SERVING and a good image still gets its cut-out."""
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    result = await remove_background(stub, PHOTO, pb.RemovalOptions(), timeout_s=60)
    assert (result.metadata.width, result.metadata.height) == (451, 300)


async def test_a_bug_in_the_pipeline_is_internal_and_logged(
    stub: pb_grpc.BackgroundRemovalAsyncStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception inside the pipeline becomes INTERNAL (never retried, 500 at the gateway), not
    a crash or a leaked traceback; the next call works."""
    from inference_service import imaging

    def broken(*args: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(imaging, "encode", broken)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await remove_background(stub, PHOTO, pb.RemovalOptions(), timeout_s=60)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert not is_retryable(caught.value.code(), reason_of(caught.value))
    assert "secret" not in (caught.value.details() or "")
    monkeypatch.undo()
    result = await remove_background(stub, PHOTO, pb.RemovalOptions(), timeout_s=60)
    assert result.metadata.width == 451
