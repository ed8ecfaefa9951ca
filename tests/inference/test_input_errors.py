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

from common import triton_infer
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
    real_infer = triton_infer.infer

    async def counted_infer(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(kwargs["request_id"]))
        return await real_infer(*args, **kwargs)

    monkeypatch.setattr(triton_infer, "infer", counted_infer)
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


class _Sender:
    """A decoupled request's response sender: records (response, flags)."""

    def __init__(self) -> None:
        self.sent: list[tuple[_Response, int]] = []

    def send(self, response: _Response, flags: int = 0) -> None:
        self.sent.append((response, flags))


class _Request(dict[str, _Tensor]):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.sender = _Sender()

    def get_response_sender(self) -> _Sender:
        return self.sender


def test_decoupled_model_answers_each_request_once_from_the_runtime_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoupled (isnet's config), execute() only starts the images and returns None; each request is answered
    once, with the final flag: its mask when its inferences are in (delivered here from another thread, as
    OpenVINO's callbacks are), INVALID_ARG for a bad input, INTERNAL when the runtime fails to start it."""
    import threading

    module = _load_isnet_model(monkeypatch)
    final = 1
    module.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL = final
    started: list[threading.Thread] = []

    class _Session(module._OpenVinoSession):  # type: ignore[name-defined,misc]
        fixed_batch_of_one = True

        def __init__(self) -> None:
            self.fail_next = False

        def submit(self, batch: npt.NDArray[Any], deliver: Any) -> None:
            if self.fail_next:
                raise RuntimeError("no stream")
            # The runtime's output for one image: probability 0.5 everywhere, [1, 1, H, W].
            thread = threading.Thread(target=deliver, args=(np.full((1, 1, 4, 4), 0.5, dtype=np.float32),))
            thread.start()
            started.append(thread)

    model = module.TritonPythonModel()
    model._shape = (4, 4, 3)
    model._decoupled = True
    model._session = _Session()
    model._mean = np.zeros((1, 3, 1, 1), dtype=np.float32)
    model._scale = np.ones((1, 3, 1, 1), dtype=np.float32)
    two = _Request({"image": _Tensor("image", np.zeros((2, 4, 4, 3), dtype=np.uint8))})
    bad = _Request({"image": _Tensor("image", np.zeros((1, 5, 4, 3), dtype=np.uint8))})
    assert model.execute([two, bad]) is None
    for thread in started:
        thread.join(10)
    [(answer, flags)] = two.sender.sent
    assert flags == final and answer.error is None
    assert answer.output_tensors[0].name == "mask"
    assert answer.output_tensors[0].array.tolist() == np.full((2, 4, 4), 128).tolist()
    [(rejected, flags)] = bad.sender.sent
    assert flags == final and rejected.error is not None and rejected.error.code == _TritonError.INVALID_ARG
    assert str(rejected.error).startswith("isnet: invalid input: ")

    model._session.fail_next = True
    broken = _Request({"image": _Tensor("image", np.zeros((1, 4, 4, 3), dtype=np.uint8))})
    assert model.execute([broken]) is None
    [(failed, flags)] = broken.sender.sent
    assert flags == final and failed.error is not None and failed.error.code == _TritonError.INTERNAL
    assert str(failed.error) == "isnet: no stream"


def test_an_answer_whose_caller_is_gone_is_dropped_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoupled answer sent after its caller went away (Triton's sender raises) is dropped inside the runtime's
    callback: nothing escapes into OpenVINO's queue, which would raise it at a later, unrelated request."""
    module = _load_isnet_model(monkeypatch)
    module.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

    class _Gone:
        def send(self, response: _Response, flags: int = 0) -> None:
            raise RuntimeError("the request has been cancelled")

    answer = module._Answer(_Gone(), 1, "isnet", lambda output, count: np.zeros((count, 4, 4), dtype=np.uint8))
    answer.deliver(0, np.zeros((1, 1, 4, 4), dtype=np.float32))  # raises nothing
    answer.fail(RuntimeError("late"))  # already answered (or tried): nothing either
