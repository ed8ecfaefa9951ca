"""The Triton client: one asyncio gRPC connection per Triton replica, round robin, that turns images into masks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton_grpc
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from inference_service.errors import (
    DeadlineExceeded,
    InferenceError,
    ModelUnavailable,
    UnknownModel,
    UnprocessableImage,
)
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
    description: str = ""  # the config.pbtxt parameter "description"


def _translate(exc: InferenceServerException, model: str) -> InferenceError:
    status = exc.status() or ""
    message = exc.message() or str(exc)
    if "DEADLINE_EXCEEDED" in status:
        return DeadlineExceeded(f"Triton did not answer before the deadline ({model})")
    if "NOT_FOUND" in status or "unknown model" in message.lower():
        return UnknownModel(f"model {model!r} is not in the model repository")
    if "INVALID_ARG" in status:
        # The model (or Triton's own input checks) rejected this input: the same call would fail again, so it
        # is the caller's 422, never a retryable "unavailable". Triton's words (tensor names, shapes, request
        # ids, the backend's own text) describe our internals, not the caller's image: logged, never sent.
        _LOGGER.warning("model %s rejected an input: %s %s", model, status, message)
        return UnprocessableImage(f"model {model!r} rejected the input image")
    if "UNAVAILABLE" in status or "not ready" in message.lower() or "CANCELLED" in status:
        return ModelUnavailable(f"Triton or model {model!r} is unavailable: {message}")
    return ModelUnavailable(f"Triton failed on model {model!r}: {status} {message}")


def _description(config: dict[str, Any]) -> str:
    """The one-line "description" parameter of a model's config.pbtxt, or ""."""
    parameter = config.get("parameters", {}).get("description", {})
    return " ".join(str(parameter.get("string_value", "")).split())


class _Replica:
    """One Triton and the client connected to it; `ready` is what its last probe or call said."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = triton_grpc.InferenceServerClient(url, channel_args=_CHANNEL_ARGS)
        self.ready = True  # until a probe says otherwise: the first call need not wait for the health loop

    async def probe(self, model: str) -> bool:
        try:
            self.ready = bool(
                await self.client.is_server_ready(client_timeout=_PROBE_TIMEOUT_S)
                and await self.client.is_model_ready(model, client_timeout=_PROBE_TIMEOUT_S)
            )
        except InferenceServerException:
            self.ready = False
        return self.ready


class TritonSegmenter:
    """Masks from a model served by one or more Tritons: each call goes to the next ready one (round robin),
    and a call one Triton drops (UNAVAILABLE) is sent once more to another. Readiness holds while at least one
    Triton has the model ready. Create inside the running event loop; close() when done."""

    def __init__(self, urls: str | list[str]) -> None:
        urls = [urls] if isinstance(urls, str) else urls
        if not urls:
            raise ValueError("at least one Triton URL is needed")
        self._replicas = [_Replica(url) for url in urls]
        self._next = 0
        self._inputs: dict[str, ModelInput] = {}
        self._descriptions: dict[str, str] = {}

    async def close(self) -> None:
        for replica in self._replicas:
            await replica.client.close()

    def _order(self) -> list[_Replica]:
        """Every replica, ready ones first, starting after the one the previous call began with."""
        count = len(self._replicas)
        start = self._next
        self._next = (start + 1) % count
        rotated = [self._replicas[(start + i) % count] for i in range(count)]
        return [r for r in rotated if r.ready] + [r for r in rotated if not r.ready]

    async def model_input(self, model: str) -> ModelInput:
        """The model's input name and size, read from its config.pbtxt once and remembered."""
        cached = self._inputs.get(model)
        if cached is not None:
            return cached
        error: InferenceError | None = None
        for replica in self._order():
            try:
                response: dict[str, Any] = await replica.client.get_model_config(
                    model, as_json=True, client_timeout=_PROBE_TIMEOUT_S
                )
            except InferenceServerException as exc:
                error = _translate(exc, model)
                if not isinstance(error, ModelUnavailable):
                    raise error from exc
                replica.ready = False
                continue
            config = response["config"]
            self._descriptions[model] = _description(config)
            first = config["input"][0]
            height, width = (int(d) for d in first["dims"][:2])
            model_input = ModelInput(first["name"], width, height)
            self._inputs[model] = model_input
            return model_input
        assert error is not None
        raise error

    async def segment(self, model: str, image: Pixels, timeout_s: float, request_id: str) -> Segmentation:
        """One image (uint8 [H, W, 3] at the model's input size) -> its mask, within timeout_s."""
        model_input = await self.model_input(model)
        deadline = time.monotonic() + timeout_s
        tensor = InferInput(model_input.name, [1, *image.shape], "UINT8")
        tensor.set_data_from_numpy(image[np.newaxis])
        # Inference is idempotent: a call dropped by one Triton (killed, unloading) is tried on one other.
        attempts = self._order()[:2]
        for attempt, replica in enumerate(attempts):
            try:
                result = await replica.client.infer(
                    model,
                    [tensor],
                    outputs=[InferRequestedOutput("mask")],
                    request_id=request_id,
                    client_timeout=max(deadline - time.monotonic(), 0.001),
                )
            except InferenceServerException as exc:
                error = _translate(exc, model)
                if not isinstance(error, ModelUnavailable):
                    raise error from exc
                replica.ready = False
                if attempt + 1 == len(attempts):
                    raise error from exc
                _LOGGER.info("request %s: Triton %s unavailable; retrying on %s", request_id, replica.url,
                             attempts[attempt + 1].url)
                continue
            mask = result.as_numpy("mask")
            if mask is None:
                raise ModelUnavailable(f"model {model!r} returned no 'mask' output")
            response = result.get_response()
            return Segmentation(mask[0], response.model_name, response.model_version)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def is_ready(self, model: str) -> bool:
        """True while at least one Triton is up with the model loaded and ready (probes them all)."""
        results = await asyncio.gather(*(replica.probe(model) for replica in self._replicas))
        return any(results)

    def readiness(self) -> dict[str, bool]:
        """Each Triton URL and whether its last probe or call found it ready."""
        return {replica.url: replica.ready for replica in self._replicas}

    async def ready_models(self) -> list[ReadyModel]:
        error: InferenceServerException | None = None
        for replica in self._order():
            try:
                index = await replica.client.get_model_repository_index(client_timeout=_PROBE_TIMEOUT_S)
            except InferenceServerException as exc:
                error = exc
                continue
            ready = [m for m in index.models if m.state == "READY"]
            for m in ready:
                if m.name not in self._descriptions:
                    with contextlib.suppress(InferenceError):
                        await self.model_input(m.name)  # reads and remembers its config, description included
            return [ReadyModel(m.name, m.version, self._descriptions.get(m.name, "")) for m in ready]
        assert error is not None
        raise ModelUnavailable(f"Triton is unavailable: {error.message()}") from error
