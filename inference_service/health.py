"""grpc.health.v1 status that follows Triton: SERVING only while Triton and the default model are ready."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from grpc_health.v1 import health, health_pb2

_LOGGER = logging.getLogger(__name__)
SERVICE_NAME = "removai.v1.BackgroundRemoval"


class ReadinessProbe(Protocol):
    async def is_ready(self, model: str) -> bool: ...


class HealthWatcher:
    """Polls readiness every interval, and at once after poke() (a call just found Triton unavailable)."""

    def __init__(self, probe: ReadinessProbe, model: str, interval_s: float) -> None:
        self.servicer = health.aio.HealthServicer()
        self._probe = probe
        self._model = model
        self._interval_s = interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.serving = False

    async def _set(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        if serving != self.serving:
            _LOGGER.info("health: %s (model %s)", "SERVING" if serving else "NOT_SERVING", self._model)
        self.serving = serving
        for name in ("", SERVICE_NAME):
            await self.servicer.set(name, status)

    async def check(self) -> bool:
        await self._set(await self._probe.is_ready(self._model))
        return self.serving

    def poke(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                _LOGGER.exception("health check failed")
                await self._set(False)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)

    async def start(self) -> None:
        await self._set(False)
        self._task = asyncio.create_task(self._loop(), name="health-watcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.servicer.enter_graceful_shutdown()
