"""Builds the inference service from its settings: gRPC server, Triton client, pipeline, health, reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from inference_service.health import HealthWatcher
from inference_service.options import PngEncoder
from inference_service.pipeline import RemovalPipeline
from inference_service.servicer import BackgroundRemovalServicer
from inference_service.settings import InferenceSettings
from inference_service.triton import TritonSegmenter
from removai.v1 import inference_pb2 as pb
from removai.v1 import inference_pb2_grpc as pb_grpc

_LOGGER = logging.getLogger(__name__)


@dataclass
class InferenceServer:
    """The running parts, started and stopped together."""

    server: grpc.aio.Server
    port: int
    segmenter: TritonSegmenter
    health: HealthWatcher
    executor: ThreadPoolExecutor
    settings: InferenceSettings
    servicer: BackgroundRemovalServicer
    metrics_port: int | None = None
    _metrics: tuple[WSGIServer, threading.Thread] | None = field(default=None, repr=False)
    _unloader: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        await self.server.start()
        await self.health.start()
        if self.settings.model_idle_unload_s > 0:
            self._unloader = asyncio.create_task(self._unload_idle_models(), name="idle-model-unloader")
        if self.settings.metrics_port >= 0:
            self._metrics = start_http_server(self.settings.metrics_port, addr=self.settings.host)
            self.metrics_port = self._metrics[0].server_port
        _LOGGER.info("inference service listening on port %d (metrics %s)", self.port, self.metrics_port)

    async def _unload_idle_models(self) -> None:
        """Every quarter of model_idle_unload_s (at most a minute), unloads the models idle that long."""
        idle_s = self.settings.model_idle_unload_s
        while True:
            await asyncio.sleep(min(max(idle_s / 4, 0.05), 60.0))
            try:
                await self.segmenter.unload_idle(idle_s, keep=self.settings.default_model)
            except Exception:
                _LOGGER.exception("unloading idle models failed")

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._unloader is not None:
            self._unloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._unloader
            self._unloader = None
        if self._metrics is not None:
            self._metrics[0].shutdown()
            self._metrics[0].server_close()
            self._metrics = None
        await self.health.stop()
        await self.server.stop(grace_s)
        await self.segmenter.close()
        self.executor.shutdown(wait=True, cancel_futures=True)


def create_server(settings: InferenceSettings) -> InferenceServer:
    """Wires everything and binds the port (port 0 picks one); call inside the running event loop."""
    segmenter = TritonSegmenter(settings.triton_urls)
    executor = ThreadPoolExecutor(settings.pipeline_workers, thread_name_prefix="pipeline")
    pipeline = RemovalPipeline(
        segmenter,
        executor,
        default_model=settings.default_model,
        max_pixels=settings.max_pixels,
        png_level=(
            settings.png_isal_level if settings.png_encoder is PngEncoder.ISAL else settings.png_compress_level
        ),
        png_encoder=settings.png_encoder,
        full_size_at_once=settings.postprocess_slots,
    )
    health = HealthWatcher(segmenter, settings.default_model, settings.health_interval_s)
    # No maximum_concurrent_rpcs: gRPC's cap counts every call, health checks (and each gateway's health
    # Watch stream) included, so callers refused by it could starve them. The servicer bounds what removals
    # hold instead (calls, bytes, and how long a refusal lasts); health checks are always answered.
    server = grpc.aio.server()
    servicer = BackgroundRemovalServicer(
        pipeline, segmenter, health,
        max_image_bytes=settings.max_image_bytes, default_timeout_s=settings.triton_timeout_s,
        default_deadline_s=settings.default_deadline_s, idle_timeout_s=settings.stream_idle_timeout_s,
        max_active=settings.max_concurrent_rpcs, max_buffered_bytes=settings.max_buffered_bytes,
        refusal_drain_s=settings.refusal_drain_s,
    )
    pb_grpc.add_BackgroundRemovalServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflection.enable_server_reflection(
        (
            pb.DESCRIPTOR.services_by_name["BackgroundRemoval"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    return InferenceServer(server, port, segmenter, health, executor, settings, servicer)
