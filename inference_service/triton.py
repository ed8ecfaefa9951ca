"""The Triton client: one asyncio gRPC connection per process that turns images into masks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton_grpc
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from inference_service.errors import DeadlineExceeded, InferenceError, ModelUnavailable, UnknownModel
from inference_service.imaging import Mask, Pixels

_LOGGER = logging.getLogger(__name__)

# Without these, a channel that lost Triton backs off reconnecting for up to two minutes, so calls would keep
# failing long after Triton is back. With them it retries within a second; calls still fail fast meanwhile.
_CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]
_PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ModelInput:
    """What the pipeline must feed a model: an RGB uint8 image of width x height."""

    name: str
    width: int
    height: int


@dataclass(frozen=True)
class Segmentation:
    mask: Mask
    model_name: str
    model_version: str


@dataclass(frozen=True)
class ReadyModel:
    name: str
    version: str


def _translate(exc: InferenceServerException, model: str) -> InferenceError:
    status = exc.status() or ""
    message = exc.message() or str(exc)
    if "DEADLINE_EXCEEDED" in status:
        return DeadlineExceeded(f"Triton did not answer before the deadline ({model})")
    if "NOT_FOUND" in status or "unknown model" in message.lower():
        return UnknownModel(f"model {model!r} is not in the model repository")
    if "UNAVAILABLE" in status or "not ready" in message.lower() or "CANCELLED" in status:
        return ModelUnavailable(f"Triton or model {model!r} is unavailable: {message}")
    return ModelUnavailable(f"Triton failed on model {model!r}: {status} {message}")


class TritonSegmenter:
    """Masks from a model served by Triton. Create inside the running event loop; close() when done."""

    def __init__(self, url: str) -> None:
        self._client = triton_grpc.InferenceServerClient(url, channel_args=_CHANNEL_ARGS)
        self._inputs: dict[str, ModelInput] = {}

    async def close(self) -> None:
        await self._client.close()

    async def model_input(self, model: str) -> ModelInput:
        """The model's input name and size, read from its config.pbtxt once and remembered."""
        cached = self._inputs.get(model)
        if cached is not None:
            return cached
        try:
            response: dict[str, Any] = await self._client.get_model_config(
                model, as_json=True, client_timeout=_PROBE_TIMEOUT_S
            )
        except InferenceServerException as exc:
            raise _translate(exc, model) from exc
        config = response["config"]
        first = config["input"][0]
        height, width = (int(d) for d in first["dims"][:2])
        model_input = ModelInput(first["name"], width, height)
        self._inputs[model] = model_input
        return model_input

    async def segment(self, model: str, image: Pixels, timeout_s: float, request_id: str) -> Segmentation:
        """One image (uint8 [H, W, 3] at the model's input size) -> its mask, within timeout_s."""
        model_input = await self.model_input(model)
        tensor = InferInput(model_input.name, [1, *image.shape], "UINT8")
        tensor.set_data_from_numpy(image[np.newaxis])
        try:
            result = await self._client.infer(
                model,
                [tensor],
                outputs=[InferRequestedOutput("mask")],
                request_id=request_id,
                client_timeout=timeout_s,
            )
        except InferenceServerException as exc:
            raise _translate(exc, model) from exc
        mask = result.as_numpy("mask")
        if mask is None:
            raise ModelUnavailable(f"model {model!r} returned no 'mask' output")
        response = result.get_response()
        return Segmentation(mask[0], response.model_name, response.model_version)

    async def is_ready(self, model: str) -> bool:
        """True while Triton is up and the model is loaded and ready."""
        try:
            return bool(
                await self._client.is_server_ready(client_timeout=_PROBE_TIMEOUT_S)
                and await self._client.is_model_ready(model, client_timeout=_PROBE_TIMEOUT_S)
            )
        except InferenceServerException:
            return False

    async def ready_models(self) -> list[ReadyModel]:
        try:
            index = await self._client.get_model_repository_index(client_timeout=_PROBE_TIMEOUT_S)
        except InferenceServerException as exc:
            raise ModelUnavailable(f"Triton is unavailable: {exc.message()}") from exc
        return [ReadyModel(m.name, m.version) for m in index.models if m.state == "READY"]
