"""The gateway's resources, one cleanup context each: they close in the reverse of their start, and a failure
while one starts closes those started before it. No Triton: the inference address is an unused port."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.domain.links import SECRET_FILE
from gateway.domain.ratelimit import MemoryRateLimiter
from gateway.http.app import create_app
from gateway.http.appkeys import METRICS_PORT
from gateway.http.server import GatewayRunner, serve
from gateway.jobs.batch_runner import BatchRunner
from gateway.jobs.model_catalog import ModelCatalog
from gateway.jobs.sweeps import Sweeper
from gateway.jobs.webhook_outbox import WebhookSender
from gateway.net.inference import InferenceClient
from gateway.settings import GatewaySettings
from gateway.store.database import PointReader
from tools.triton_launcher import free_port

# Every resource with something to close, by the name the closes are recorded under.
CLOSES: dict[str, tuple[type[Any], str]] = {
    "batch claims": (BatchRunner, "close"),
    "sweeps": (Sweeper, "close"),
    "webhooks": (WebhookSender, "close"),
    "model catalog": (ModelCatalog, "close"),
    "inference": (InferenceClient, "close"),
    "rate limiter": (MemoryRateLimiter, "aclose"),
    "point reader": (PointReader, "close"),
}


def record_closes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wraps each resource's close so that it is recorded, by name, and then runs for real."""
    closed: list[str] = []

    def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        if asyncio.iscoroutinefunction(original):
            async def async_close(self: Any, *args: Any, **kwargs: Any) -> Any:
                closed.append(name)
                return await original(self, *args, **kwargs)
            return async_close

        def close(self: Any, *args: Any, **kwargs: Any) -> Any:
            closed.append(name)
            return original(self, *args, **kwargs)
        return close

    for name, (cls, method) in CLOSES.items():
        monkeypatch.setattr(cls, method, wrap(name, getattr(cls, method)))
    return closed


def settings_for(data_dir: Path) -> GatewaySettings:
    return GatewaySettings(
        host="127.0.0.1", port=free_port(), metrics_port=0, data_dir=data_dir,
        inference_url=f"127.0.0.1:{free_port()}",
    )


def refuses_connections(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


async def test_resources_close_in_the_reverse_of_their_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway that started closes every resource at the stop, the last started first: batch claims (their
    leases released) before the sweeps, the webhook sender before the clients and the database."""
    closed = record_closes(monkeypatch)
    app = create_app(settings_for(tmp_path))
    runner = GatewayRunner(app)
    await runner.setup()
    metrics_port = app[METRICS_PORT]
    assert not refuses_connections(metrics_port)
    assert closed == []
    await runner.cleanup()
    assert closed == list(CLOSES)
    assert refuses_connections(metrics_port)


async def test_a_resource_that_fails_to_start_closes_those_started_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The URL-signing secret cannot be read (its path is a directory): serve() fails with that error, and the
    resources started before it (webhook sender, model catalog, gRPC client, rate limiter, database, metrics
    listener) are closed, the last started first; the sweeps and batch claims, never started, are not."""
    (tmp_path / SECRET_FILE).mkdir()
    closed = record_closes(monkeypatch)
    app = create_app(settings_for(tmp_path))
    loop = asyncio.get_running_loop()
    try:
        with pytest.raises(IsADirectoryError):
            await serve(app)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # serve's own, for this process's loop
            loop.remove_signal_handler(signum)
    assert closed == ["webhooks", "model catalog", "inference", "rate limiter", "point reader"]
    assert refuses_connections(app[METRICS_PORT])
