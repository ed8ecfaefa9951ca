"""The contract package's one definitions: every proto option has exactly one public name, every side takes
its names from there, and the retryable set is what the proto comment says."""

from __future__ import annotations

import grpc
import pytest

from contract.errors import Reason, is_retryable
from contract.options import OutputFormat, OutputSize, OutputType
from gateway.schemas import RemovalParams
from removai.v1 import inference_pb2 as pb
from removai_cli.__main__ import _parser


def test_every_proto_option_has_one_public_name_and_back() -> None:
    """Each proto value but UNSPECIFIED maps to one member and back (a value added to the proto without its
    member fails here); UNSPECIFIED reads as the documented default."""
    assert {member.proto for member in OutputFormat} == set(pb.OutputFormat.values()) - {pb.OUTPUT_FORMAT_UNSPECIFIED}
    assert {member.proto for member in OutputSize} == set(pb.OutputSize.values()) - {pb.OUTPUT_SIZE_UNSPECIFIED}
    assert all(OutputFormat.from_proto(member.proto) is member for member in OutputFormat)
    assert all(OutputSize.from_proto(member.proto) is member for member in OutputSize)
    assert OutputFormat.from_proto(pb.OUTPUT_FORMAT_UNSPECIFIED) is OutputFormat.PNG
    assert OutputSize.from_proto(pb.OUTPUT_SIZE_UNSPECIFIED) is OutputSize.ORIGINAL
    assert {member.proto for member in OutputType} == set(pb.OutputType.values()) - {pb.OUTPUT_TYPE_UNSPECIFIED}
    assert all(OutputType.from_proto(member.proto) is member for member in OutputType)
    assert OutputType.from_proto(pb.OUTPUT_TYPE_UNSPECIFIED) is OutputType.CUTOUT
    with pytest.raises(ValueError):
        OutputFormat.from_proto(99)


def test_the_gateway_and_the_cli_offer_exactly_the_contract_names(capsys: pytest.CaptureFixture[str]) -> None:
    """The HTTP API's accepted values and the CLI's --format/--size choices are the contract's names."""
    assert RemovalParams.model_validate({"output_format": "webp", "output_size": "small"}).options.output_format == "webp"
    schema = RemovalParams.model_json_schema()
    enums = {name: definition["enum"] for name, definition in schema["$defs"].items()}
    assert enums == {"OutputSize": ["original", "small", "medium", "large"], "OutputType": ["cutout", "mask"]}
    # Requests may say jpeg for jpg: the request's format lists the alias after the values.
    assert schema["properties"]["output_format"]["enum"] == ["png", "jpg", "webp", "zip", "jpeg"]

    def accepted(flag: str, value: str) -> bool:
        try:
            _parser().parse_args(["remove", "photo.jpg", flag, value])
        except SystemExit:
            return False
        return True

    formats = ["png", "jpg", "jpeg", "webp", "zip", "gif", "PNG"]
    sizes = ["original", "small", "medium", "large", "huge", "1080"]
    assert [value for value in formats if accepted("--format", value)] == ["png", "jpg", "jpeg", "webp", "zip"]
    assert [value for value in sizes if accepted("--size", value)] == [member.value for member in OutputSize]


@pytest.mark.parametrize(
    ("code", "reason", "retryable"),
    [
        (grpc.StatusCode.UNAVAILABLE, None, True),
        (grpc.StatusCode.UNAVAILABLE, Reason.MODEL_NOT_INSTALLED, False),
        (grpc.StatusCode.DEADLINE_EXCEEDED, None, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.SERVICE_BUSY, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None, True),  # gRPC's own concurrency backstop
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.IMAGE_TOO_LARGE, False),
        (grpc.StatusCode.INVALID_ARGUMENT, None, False),
        (grpc.StatusCode.FAILED_PRECONDITION, None, False),
        (grpc.StatusCode.UNIMPLEMENTED, None, False),
        (grpc.StatusCode.NOT_FOUND, None, False),
        (grpc.StatusCode.INTERNAL, None, False),
        (grpc.StatusCode.UNKNOWN, None, False),
    ],
)
def test_retryable_set(code: grpc.StatusCode, reason: Reason | None, retryable: bool) -> None:
    """Only the service's momentary failures are worth another try; input errors and bugs never are."""
    assert is_retryable(code, reason) is retryable
