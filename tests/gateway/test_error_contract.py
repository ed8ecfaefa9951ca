"""One error contract end to end: an input the model itself rejects (Triton's INVALID_ARG) is the caller's
final error everywhere, and neither the CLI nor the gateway ever sends it a second time."""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from common import triton_infer
from inference_service.server import InferenceServer
from inference_service.triton import ModelInput
from removai_cli.__main__ import run
from tests.gateway.harness import Gateway
from tests.reference import DATA

PHOTO = DATA / "chelsea.jpg"


class Rejecting:
    """Makes the real pipeline send the real Triton a tensor of the wrong shape (half the model's input size),
    which Triton refuses with INVALID_ARG on every try; counts what reaches the service and Triton."""

    def __init__(self, server: InferenceServer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.triton_calls = 0
        self._before = self.service_calls_now()
        real_input = server.segmenter.model_input
        real_infer = triton_infer.infer

        async def half_sized(model: str, timeout_s: float = 300.0) -> ModelInput:
            right = await real_input(model, timeout_s)
            return ModelInput(right.name, right.width // 2, right.height // 2, right.decoupled)

        async def counted_infer(*args: Any, **kwargs: Any) -> Any:
            self.triton_calls += 1
            return await real_infer(*args, **kwargs)

        monkeypatch.setattr(server.segmenter, "model_input", half_sized)
        monkeypatch.setattr(triton_infer, "infer", counted_infer)

    @staticmethod
    def service_calls_now() -> float:
        """RemoveBackground calls the in-process service ended with FAILED_PRECONDITION (its own counter)."""
        value = REGISTRY.get_sample_value("removai_inference_requests_total", {"status": "FAILED_PRECONDITION"})
        return value or 0.0

    @property
    def service_calls(self) -> float:
        return self.service_calls_now() - self._before


async def test_cli_never_retries_an_input_the_model_rejects(
    inference_server: InferenceServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`removai remove --grpc` with 5 attempts allowed: the model's INVALID_ARG is FAILED_PRECONDITION, the
    contract calls it final, so the service and Triton each see the image once and the run reports it."""
    rejecting = Rejecting(inference_server, monkeypatch)

    status = await run(["remove", str(PHOTO), "--grpc", f"127.0.0.1:{inference_server.port}", "--max-attempts", "5",
                        "--out", str(tmp_path / "out"), "--no-progress"])

    out = capsys.readouterr().out
    assert status == 1, out
    assert f"failed  {PHOTO}: failed_precondition (FAILED_PRECONDITION): model 'isnet' rejected the input" in out
    assert out.rstrip().endswith("0 succeeded, 1 failed")
    assert (rejecting.service_calls, rejecting.triton_calls) == (1, 1)
    assert not (tmp_path / "out").exists()


async def test_gateway_answers_422_once_for_an_input_the_model_rejects(
    gw: Gateway, inference_server: InferenceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway maps the model's rejection to 422 unprocessable_entity (not a retryable 503, no
    Retry-After) in our own words (nothing of Triton's message: its tensor names, shapes, request id), and
    sends the image to the service, and so to Triton, exactly once."""
    rejecting = Rejecting(inference_server, monkeypatch)
    _, key = await gw.account("pro")
    form = aiohttp.FormData()
    form.add_field("file", PHOTO.read_bytes(), filename="chelsea.jpg", content_type="image/jpeg")

    response = await gw.client.post("/v1/remove-background/file", data=form, headers={"X-API-Key": key})

    assert response.status == HTTPStatus.UNPROCESSABLE_ENTITY
    assert "Retry-After" not in response.headers
    body = await response.json()
    assert body == {"success": False, "error": {
        "code": "unprocessable_entity", "status": 422, "message": "model 'isnet' rejected the input image",
    }}
    assert (rejecting.service_calls, rejecting.triton_calls) == (1, 1)
