"""A deterministic bad input to Triton is the caller's 422 (UnprocessableImage), never a retried 503."""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc.aio as triton_grpc

from inference_service.errors import ModelUnavailable, UnprocessableImage
from inference_service.triton import TritonSegmenter
from tests.conftest import MODEL_REPOSITORY
from tools.triton_launcher import TritonServer


async def test_bad_input_is_unprocessable_and_sent_to_triton_once(
    triton: TritonServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image of the wrong shape is rejected by Triton with INVALID_ARGUMENT; the segmenter raises
    UnprocessableImage (422, not the retryable ModelUnavailable) and does not send it to its second replica."""
    # Triton rejects a wrong shape before the model runs, so its metrics do not count it: count the calls the
    # real client makes instead (it still talks to the real Triton).
    calls: list[str] = []
    real_infer = triton_grpc.InferenceServerClient.infer

    async def counted_infer(self: triton_grpc.InferenceServerClient, *args: Any, **kwargs: Any) -> Any:
        calls.append(str(kwargs.get("request_id")))
        return await real_infer(self, *args, **kwargs)

    monkeypatch.setattr(triton_grpc.InferenceServerClient, "infer", counted_infer)
    # The same Triton listed twice: a retry on "another replica" would reach it again.
    segmenter = TritonSegmenter([triton.grpc_url, triton.grpc_url])
    try:
        model_input = await segmenter.model_input("isnet")
        wrong = np.zeros((model_input.height // 2, model_input.width // 2, 3), dtype=np.uint8)
        with pytest.raises(UnprocessableImage) as caught:
            await segmenter.segment("isnet", wrong, timeout_s=60.0, request_id="bad-shape")
        assert not isinstance(caught.value, ModelUnavailable)
        assert caught.value.status_code is grpc.StatusCode.FAILED_PRECONDITION
        # Our words only: Triton's own text (the input's name, the shapes, the request id) stays in the log.
        assert str(caught.value) == "model 'isnet' rejected the input image"
        assert calls == ["bad-shape"]
        assert segmenter.readiness() == {triton.grpc_url: True}  # a bad input says nothing about Triton's health
    finally:
        await segmenter.close()


@dataclass
class _Tensor:
    name: str
    array: npt.NDArray[Any]

    def as_numpy(self) -> npt.NDArray[Any]:
        return self.array


class _TritonError(Exception):
    INTERNAL = 13
    INVALID_ARG = 3

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Response:
    output_tensors: list[_Tensor]
    error: _TritonError | None = None


def _load_isnet_model(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """triton_models/isnet/1/model.py with a stand-in for triton_python_backend_utils (only Triton has it)."""
    utils = types.ModuleType("triton_python_backend_utils")
    utils.TritonError = _TritonError  # type: ignore[attr-defined]
    utils.InferenceResponse = _Response  # type: ignore[attr-defined]
    utils.Tensor = _Tensor  # type: ignore[attr-defined]
    utils.get_input_tensor_by_name = lambda request, name: request.get(name)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    spec = importlib.util.spec_from_file_location("isnet_model", MODEL_REPOSITORY / "isnet" / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_reports_bad_inputs_as_invalid_arg_and_failures_as_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    """model.py answers a missing, mis-shaped or mis-typed "image" with TritonError.INVALID_ARG, a failure of its
    own with INTERNAL, and a good request in the same batch with its mask."""
    module = _load_isnet_model(monkeypatch)
    model = module.TritonPythonModel()
    model._shape = (4, 4, 3)
    model._masks = lambda images: np.full(images.shape[:3], 7, dtype=np.uint8)
    good = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    requests: list[dict[str, _Tensor]] = [
        {},
        {"image": _Tensor("image", np.zeros((1, 5, 4, 3), dtype=np.uint8))},
        {"image": _Tensor("image", np.zeros((1, 4, 4, 3), dtype=np.float32))},
        {"image": _Tensor("image", good)},
    ]
    responses = model.execute(requests)
    codes = [response.error.code if response.error else None for response in responses]
    assert codes == [_TritonError.INVALID_ARG] * 3 + [None]
    assert 'must be uint8 [N, 4, 4, 3], got uint8 [1, 5, 4, 3]' in str(responses[1].error)
    assert responses[3].output_tensors[0].name == "mask"
    assert responses[3].output_tensors[0].array.tolist() == np.full((1, 4, 4), 7).tolist()

    def broken(images: npt.NDArray[Any]) -> npt.NDArray[Any]:
        raise RuntimeError("runtime failed")

    model._masks = broken
    [failed] = model.execute([{"image": _Tensor("image", good)}])
    assert failed.error.code == _TritonError.INTERNAL and str(failed.error) == "isnet: runtime failed"
