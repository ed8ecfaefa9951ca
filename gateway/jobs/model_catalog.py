"""The models GET /v1/models lists: asked of the inference service in the background every `refresh_s` and
served from memory, so a request (the route needs no key) never costs a gRPC call and a Triton call."""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.errors import ApiError, ServiceUnavailable
from gateway.net.inference import InferenceClient, ModelInfo

_LOGGER = logging.getLogger(__name__)

# While no list was ever fetched, a request may ask the service itself at most this often (shared by every
# request waiting meanwhile); the background refresh keeps trying at its own pace.
_FIRST_FETCH_RETRY_S = 1.0


class ModelCatalog:
    """The last model list the inference service gave, refreshed every `refresh_s` by a task of its own. A
    failed refresh keeps the last list (the models rarely change; a client still gets an answer while the
    service is briefly away). Before the first list arrives, requests share one call at a time to the service
    and get its error (503 with Retry-After) when it fails. Create inside the running loop; close() when done."""

    def __init__(self, inference: InferenceClient, refresh_s: float, *, retry_after_s: int) -> None:
        self._inference = inference
        self._refresh_s = refresh_s
        self._retry_after_s = retry_after_s
        self._models: list[ModelInfo] | None = None
        self._error: ApiError | None = None
        self._failed_at = -float("inf")
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.refreshes = 0  # calls made to the service (for tests and logs)

    def start(self) -> None:
        """Fetch now and then every refresh_s, in the background (a start never waits for the service)."""
        if self._task is None:
            self._task = asyncio.create_task(self._periodically(), name="model catalog refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def models(self) -> list[ModelInfo]:
        """The models, default first; ApiError (503) while no list has ever been fetched and the service fails."""
        if self._models is not None:
            return self._models
        async with self._lock:
            if self._models is None and time.monotonic() - self._failed_at >= _FIRST_FETCH_RETRY_S:
                await self._refresh_locked()
        if self._models is not None:
            return self._models
        raise self._error or ServiceUnavailable(
            "the inference service is temporarily unavailable; retry shortly",
            headers={"Retry-After": str(self._retry_after_s)},
        )

    async def _refresh_locked(self) -> None:
        self.refreshes += 1
        try:
            models = await self._inference.list_models()
        except ApiError as error:
            self._error = error
            self._failed_at = time.monotonic()
            if self._models is None:
                _LOGGER.warning("model list: the inference service did not answer (%s)", error.message)
            else:
                _LOGGER.warning("model list: refresh failed (%s); still serving the last list", error.message)
            return
        if self._models != models:
            _LOGGER.info("model list: %s", ", ".join(model.name for model in models) or "(none)")
        self._models = models
        self._error = None

    async def _periodically(self) -> None:
        while True:
            try:
                async with self._lock:
                    await self._refresh_locked()
            except Exception:  # a bug: logged; the last list stays and the next round tries again
                _LOGGER.exception("model list: refresh failed unexpectedly")
            await asyncio.sleep(self._refresh_s)
