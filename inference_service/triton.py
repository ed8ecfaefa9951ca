"""The Triton client: one asyncio gRPC connection per Triton replica, round robin, that turns images into masks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton_grpc
from tritonclient.grpc import InferInput
from tritonclient.utils import InferenceServerException

from common import triton_infer
from inference_service.errors import (
    DeadlineExceeded,
    InferenceError,
    ModelNotInstalled,
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
_UNLOAD_TIMEOUT_S = 60.0  # Triton unloads once the model's calls under way are done


@dataclass(frozen=True)
class ModelInput:
    """What the pipeline must feed a model: an RGB uint8 image of width x height."""

    name: str
    width: int
    height: int
    # config.pbtxt's model_transaction_policy { decoupled: true }: Triton answers such a model over a gRPC
    # stream only (ModelStreamInfer), not a plain ModelInfer.
    decoupled: bool = False


@dataclass(frozen=True)
class Segmentation:
    mask: Mask
    model_name: str
    model_version: str


@dataclass(frozen=True)
class ServedModel:
    """A model of Triton's repository: loaded, or loaded when a request first names it."""

    name: str
    version: str  # "" until the model is loaded (Triton reports versions of loaded models only)
    description: str = ""  # the config.pbtxt parameter "description", once loaded


# What a model not yet loaded says of itself in the list (its config.pbtxt is read when Triton loads it).
NOT_LOADED = "loaded when a request first names it (that request waits for the load)"


# A stream's error response carries Triton's message but no status: these words mark a rejected input (Triton's
# own checks, or model.py's "invalid input").
_INVALID_INPUT_WORDS = ("invalid input", "unexpected shape", "unexpected datatype", "unexpected number of inputs")


@dataclass
class _Use:
    """One model's use on one Triton by this service: calls under way, and when the last one started or ended
    (time.time(): comparable with Triton's own last_inference)."""

    in_flight: int = 0
    last_s: float = 0.0


def _translate(exc: InferenceServerException, model: str) -> InferenceError:
    status = exc.status() or ""
    message = exc.message() or str(exc)
    if "DEADLINE_EXCEEDED" in status:
        return DeadlineExceeded(f"Triton did not answer before the deadline ({model})")
    if "NOT_FOUND" in status or "unknown model" in message.lower():
        return UnknownModel(f"model {model!r} is not in the model repository")
    if "INVALID_ARG" in status or (not status and any(word in message for word in _INVALID_INPUT_WORDS)):
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
        # Live, not "ready": with --strict-readiness Triton stops calling itself ready once any model's load
        # has failed (say a model loaded on first use whose weights are missing), though it serves the others.
        try:
            self.ready = bool(
                await self.client.is_server_live(client_timeout=_PROBE_TIMEOUT_S)
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
        # One load or unload at a time per (Triton, model): requests arriving during either wait for it.
        self._loading: dict[tuple[str, str], asyncio.Lock] = {}
        self._uses: dict[tuple[str, str], _Use] = {}

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

    async def _load(self, replica: _Replica, model: str, timeout_s: float) -> bool:
        """Loads `model` on this Triton where its repository has it but it is not loaded (Triton runs with
        explicit model control: only the default model at start, each other one when first asked for); False
        where the repository has no such model. Raises DeadlineExceeded or ModelUnavailable when it fails."""
        async with self._lock(replica, model):
            try:
                index = await replica.client.get_model_repository_index(client_timeout=_PROBE_TIMEOUT_S)
                entry = next((m for m in index.models if m.name == model), None)
                if entry is None:
                    return False
                if entry.state == "READY":
                    return True  # loaded while this call waited for the lock
                _LOGGER.info("model %s: loading on Triton %s (the first request naming it)", model, replica.url)
                started = time.monotonic()
                await replica.client.load_model(model, client_timeout=max(timeout_s, 0.001))
            except InferenceServerException as exc:
                if "DEADLINE_EXCEEDED" in (exc.status() or ""):
                    raise DeadlineExceeded(f"model {model!r} was still loading at the deadline; retry") from exc
                raise ModelNotInstalled(f"model {model!r} could not be loaded: {exc.message()}") from exc
            _LOGGER.info("model %s: loaded on Triton %s in %.1f s", model, replica.url, time.monotonic() - started)
            self._use(replica, model).last_s = time.time()  # idle from its load on, not from before it
            return True

    def _lock(self, replica: _Replica, model: str) -> asyncio.Lock:
        return self._loading.setdefault((replica.url, model), asyncio.Lock())

    def _use(self, replica: _Replica, model: str) -> _Use:
        return self._uses.setdefault((replica.url, model), _Use(last_s=time.time()))

    @contextlib.asynccontextmanager
    async def _calling(self, replica: _Replica, model: str, deadline: float) -> AsyncIterator[None]:
        """Counts a call to `model` on this Triton as under way (an idle unload leaves the model alone meanwhile);
        a call that arrives during an unload (or a load) waits for it to end, within the deadline, and then finds
        the model unloaded, and loads it again."""
        use = self._use(replica, model)
        use.in_flight += 1
        use.last_s = time.time()
        try:
            lock = self._lock(replica, model)
            if lock.locked():
                try:
                    await asyncio.wait_for(lock.acquire(), max(deadline - time.monotonic(), 0.001))
                except TimeoutError as exc:
                    raise DeadlineExceeded(f"model {model!r} was still loading or unloading at the deadline") from exc
                lock.release()
            yield
        finally:
            use.in_flight -= 1
            use.last_s = time.time()

    async def _last_inference_s(self, replica: _Replica, model: str) -> float:
        """When Triton last ran `model` for anyone (other inference services sharing this Triton included), as
        time.time(); 0 when never, or when Triton does not say."""
        try:
            stats: dict[str, Any] = await replica.client.get_inference_statistics(
                model, as_json=True, client_timeout=_PROBE_TIMEOUT_S
            )
        except InferenceServerException:
            return 0.0
        return max((int(s.get("last_inference", 0)) / 1000.0 for s in stats.get("model_stats", [])), default=0.0)

    async def unload_idle(self, idle_s: float, keep: str) -> list[tuple[str, str]]:
        """Unloads, on each Triton, every loaded model but `keep` (the default model) that no call has used for
        idle_s: neither this service's (counted from its load, or from when this service first saw it loaded)
        nor anyone's, by Triton's own last_inference. Its stub process and memory go with it; the next request
        naming it loads it again. Returns the (Triton URL, model) pairs unloaded."""
        unloaded: list[tuple[str, str]] = []
        for replica in self._replicas:
            try:
                index = await replica.client.get_model_repository_index(client_timeout=_PROBE_TIMEOUT_S)
            except InferenceServerException:
                continue  # that Triton is down: nothing of it to unload
            for entry in index.models:
                if entry.name == keep or entry.state != "READY":
                    continue
                use = self._use(replica, entry.name)
                if use.in_flight or time.time() - use.last_s < idle_s:
                    continue
                use.last_s = max(use.last_s, await self._last_inference_s(replica, entry.name))
                async with self._lock(replica, entry.name):
                    # Checked again under the lock: a call may have started while Triton was asked.
                    if use.in_flight or time.time() - use.last_s < idle_s:
                        continue
                    try:
                        await replica.client.unload_model(entry.name, client_timeout=_UNLOAD_TIMEOUT_S)
                    except InferenceServerException as exc:
                        _LOGGER.warning("model %s: unloading on Triton %s failed: %s", entry.name, replica.url,
                                        exc.message())
                        continue
                _LOGGER.info("model %s: unloaded on Triton %s (idle for %.0f s)", entry.name, replica.url,
                             time.time() - use.last_s)
                unloaded.append((replica.url, entry.name))
        return unloaded

    async def model_input(self, model: str, timeout_s: float = 300.0) -> ModelInput:
        """The model's input name and size, read from its config.pbtxt once and remembered. A model of the
        repository that is not loaded yet is loaded first, within timeout_s."""
        cached = self._inputs.get(model)
        if cached is not None:
            return cached
        deadline = time.monotonic() + timeout_s
        error: InferenceError | None = None
        for replica in self._order():
            try:
                response: dict[str, Any] = await self._config(replica, model, deadline)
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
            model_input = ModelInput(first["name"], width, height, triton_infer.is_decoupled(config))
            self._inputs[model] = model_input
            return model_input
        assert error is not None
        raise error

    async def _config(self, replica: _Replica, model: str, deadline: float) -> dict[str, Any]:
        """The model's config from this Triton, loading the model first where it is in the repository only."""
        try:
            response: dict[str, Any] = await replica.client.get_model_config(
                model, as_json=True, client_timeout=_PROBE_TIMEOUT_S
            )
            return response
        except InferenceServerException as exc:
            if not isinstance(_translate(exc, model), UnknownModel):
                raise
            if not await self._load(replica, model, deadline - time.monotonic()):
                raise
        response = await replica.client.get_model_config(model, as_json=True, client_timeout=_PROBE_TIMEOUT_S)
        return response

    async def segment(self, model: str, image: Pixels, timeout_s: float, request_id: str) -> Segmentation:
        """One image (uint8 [H, W, 3] at the model's input size) -> its mask, within timeout_s."""
        model_input = await self.model_input(model)
        deadline = time.monotonic() + timeout_s
        tensor = InferInput(model_input.name, [1, *image.shape], "UINT8")
        tensor.set_data_from_numpy(image[np.newaxis])

        async def call(replica: _Replica) -> Any:
            async with self._calling(replica, model, deadline):
                return await triton_infer.infer(
                    replica.client, model, tensor, request_id=request_id,
                    timeout_s=max(deadline - time.monotonic(), 0.001), decoupled=model_input.decoupled,
                )

        # Inference is idempotent: a call dropped by one Triton (killed, unloading) is tried on one other.
        attempts = self._order()[:2]
        for attempt, replica in enumerate(attempts):
            try:
                result = await call(replica)
            except InferenceServerException as exc:
                error = _translate(exc, model)
                if isinstance(error, UnknownModel) and await self._load(replica, model, deadline - time.monotonic()):
                    # This Triton had not loaded it (started after the model was first asked for, or unloaded
                    # it when idle): loaded now.
                    try:
                        result = await call(replica)
                    except InferenceServerException as again:
                        raise _translate(again, model) from again
                    return self._segmentation(result, model)
                if not isinstance(error, ModelUnavailable):
                    raise error from exc
                replica.ready = False
                if attempt + 1 == len(attempts):
                    raise error from exc
                _LOGGER.info("request %s: Triton %s unavailable; retrying on %s", request_id, replica.url,
                             attempts[attempt + 1].url)
                continue
            return self._segmentation(result, model)
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _segmentation(result: Any, model: str) -> Segmentation:
        mask = result.as_numpy("mask")
        if mask is None:
            raise ModelUnavailable(f"model {model!r} returned no 'mask' output")
        response = result.get_response()
        return Segmentation(mask[0], response.model_name, response.model_version)

    async def is_ready(self, model: str) -> bool:
        """True while at least one Triton is up with the model loaded and ready (probes them all)."""
        results = await asyncio.gather(*(replica.probe(model) for replica in self._replicas))
        return any(results)

    def readiness(self) -> dict[str, bool]:
        """Each Triton URL and whether its last probe or call found it ready."""
        return {replica.url: replica.ready for replica in self._replicas}

    async def served_models(self) -> list[ServedModel]:
        error: InferenceServerException | None = None
        for replica in self._order():
            try:
                index = await replica.client.get_model_repository_index(client_timeout=_PROBE_TIMEOUT_S)
            except InferenceServerException as exc:
                error = exc
                continue
            # Loaded models, and those Triton loads when a request names them (explicit model control lists them
            # with no state, or UNAVAILABLE once unloaded or after a failed load, which the request then reports).
            served = list(index.models)
            for m in served:
                if m.state == "READY" and m.name not in self._descriptions:
                    with contextlib.suppress(InferenceError):
                        await self.model_input(m.name)  # reads and remembers its config, description included
            return [
                ServedModel(m.name, m.version, self._descriptions.get(m.name, ""))
                if m.state == "READY" else ServedModel(m.name, "", NOT_LOADED)
                for m in served
            ]
        assert error is not None
        raise ModelUnavailable(f"Triton is unavailable: {error.message()}") from error
