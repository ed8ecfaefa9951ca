"""The gRPC servicer: stream messages in, project objects to the pipeline, stream messages out. Thin."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from common.logs import REQUEST_ID
from contract import metadata as keys
from contract.errors import error_status
from inference_service import metrics
from inference_service.admission import ByteBudget, Holding
from inference_service.errors import (
    DeadlineExceeded,
    InferenceError,
    InvalidRequest,
    ModelNotInstalled,
    ModelUnavailable,
    PayloadTooLarge,
    ServiceBusy,
)
from inference_service.health import HealthWatcher
from inference_service.options import RemovalOptions
from inference_service.pipeline import Cutout, RemovalPipeline
from inference_service.triton import TritonSegmenter
from removai.v1 import inference_pb2 as pb
from removai.v1 import inference_pb2_grpc as pb_grpc

_LOGGER = logging.getLogger(__name__)
RESPONSE_CHUNK_BYTES = 1024 * 1024
# Refused calls whose streams are read (and dropped) at once before their status is sent; more are refused
# without reading, so a flood of refusals costs at most this many short reads.
MAX_DRAINING = 16
Context = grpc.aio.ServicerContext[Any, Any]


async def _next_message(
    messages: AsyncIterator[pb.RemoveBackgroundRequest], idle_timeout_s: float
) -> pb.RemoveBackgroundRequest | None:
    """The stream's next message, None at its end; a stream silent for idle_timeout_s is given up on, so an
    open but idle stream cannot hold its buffer (up to max_image_bytes) for ever."""
    try:
        async with asyncio.timeout(idle_timeout_s):
            return await anext(messages)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise DeadlineExceeded(f"no message on the request stream for {idle_timeout_s:g}s; closed") from None


async def _receive(
    requests: AsyncIterator[pb.RemoveBackgroundRequest], max_bytes: int, idle_timeout_s: float, holding: Holding
) -> tuple[pb.RemovalOptions, bytearray, bytearray]:
    """Options from the first message, then the background image's bytes (`bg_chunk`s, as many as the
    options announce), then the image's bytes (`chunk`s). Every byte kept is taken from the budget first
    (the background's announced length at once): ServiceBusy when it does not fit."""
    options: pb.RemovalOptions | None = None
    data = bytearray()
    background = bytearray()
    messages = aiter(requests)
    while (message := await _next_message(messages, idle_timeout_s)) is not None:
        part = message.WhichOneof("part")
        if part == "options":
            if options is not None:
                raise InvalidRequest("options were sent twice; send them once, in the first message")
            options = message.options
            if options.bg_image_bytes > max_bytes:
                raise PayloadTooLarge(f"the background image is larger than {max_bytes} bytes")
            holding.take(options.bg_image_bytes)
        elif part == "bg_chunk":
            if options is None:
                raise InvalidRequest("the first message must carry the options")
            if data or len(background) + len(message.bg_chunk) > options.bg_image_bytes:
                raise InvalidRequest("background chunks must come before the image and add up to bg_image_bytes")
            background += message.bg_chunk
        elif part == "chunk":
            if options is None:
                raise InvalidRequest("the first message must carry the options")
            if len(data) + len(message.chunk) > max_bytes:
                raise PayloadTooLarge(f"the image is larger than {max_bytes} bytes")
            holding.take(len(message.chunk))
            data += message.chunk
        else:
            raise InvalidRequest("a message carried neither options nor a chunk")
    if options is None:
        raise InvalidRequest("the stream carried no options")
    if len(background) != options.bg_image_bytes:
        raise InvalidRequest(f"the stream carried {len(background)} of bg_image_bytes={options.bg_image_bytes}")
    if not data:
        raise InvalidRequest("the stream carried no image bytes")
    return options, data, background


def _metadata(cutout: Cutout) -> pb.ResultMetadata:
    t = cutout.timings
    return pb.ResultMetadata(
        width=cutout.width,
        height=cutout.height,
        output_format=cutout.options.output_format.proto,
        content_type=cutout.options.output_format.content_type,
        model_name=cutout.model_name,
        model_version=cutout.model_version,
        timings=pb.Timings(
            decode_ms=t.decode_ms, preprocess_ms=t.preprocess_ms, inference_ms=t.inference_ms,
            postprocess_ms=t.postprocess_ms, encode_ms=t.encode_ms, total_ms=t.total_ms,
        ),
        size_bytes=len(cutout.data),
        original_width=cutout.original_width,
        original_height=cutout.original_height,
        output_type=cutout.options.output_type.proto,
        foreground=(
            pb.Box(left=box.left, top=box.top, width=box.width, height=box.height)
            if (box := cutout.foreground) is not None else None
        ),
    )


def _record(cutout: Cutout) -> None:
    t = cutout.timings
    metrics.REQUESTS.labels("OK").inc()
    metrics.IMAGES.labels(cutout.options.output_format.value).inc()
    metrics.BYTES_OUT.inc(len(cutout.data))
    metrics.TRITON_SECONDS.observe(t.inference_ms / 1000.0)
    for stage in ("decode", "preprocess", "inference", "postprocess", "encode"):
        metrics.STAGE_SECONDS.labels(stage).observe(getattr(t, f"{stage}_ms") / 1000.0)


class BackgroundRemovalServicer(pb_grpc.BackgroundRemovalServicer):
    def __init__(
        self,
        pipeline: RemovalPipeline,
        segmenter: TritonSegmenter,
        health: HealthWatcher,
        *,
        max_image_bytes: int,
        default_timeout_s: float,
        default_deadline_s: float = 120.0,
        idle_timeout_s: float = 10.0,
        max_active: int = 32,
        max_buffered_bytes: int | None = None,
        refusal_drain_s: float = 1.0,
    ) -> None:
        self._pipeline = pipeline
        self._segmenter = segmenter
        self._health = health
        self._max_image_bytes = max_image_bytes
        self._default_timeout_s = default_timeout_s
        self._default_deadline_s = default_deadline_s
        self._idle_timeout_s = idle_timeout_s
        self._max_active = max_active
        self._budget = ByteBudget(max_buffered_bytes or max_active * 2 * max_image_bytes)
        self._refusal_drain_s = refusal_drain_s
        self._active = 0
        self._draining = 0

    @property
    def active(self) -> int:
        """RemoveBackground calls being served now (refused ones not counted)."""
        return self._active

    @property
    def buffered_bytes(self) -> int:
        """Image and background bytes the calls hold now, of the max_buffered_bytes budget."""
        return self._budget.in_use

    @property
    def draining(self) -> int:
        """Refused calls whose streams are being read before their status is sent."""
        return self._draining

    async def _abort(self, context: Context, error: InferenceError, request_id: str) -> None:
        if isinstance(error, ModelUnavailable) and not isinstance(error, ModelNotInstalled):
            self._health.poke()
        metrics.REQUESTS.labels(error.status_code.name).inc()
        _LOGGER.info("request %s failed: %s %s", request_id, error.status_code.name, error)
        status = error_status(error.status_code, str(error), error.reason)
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def RemoveBackground(
        self,
        request_iterator: AsyncIterator[pb.RemoveBackgroundRequest],
        context: Context,
    ) -> AsyncIterator[pb.RemoveBackgroundResponse]:
        """At most max_active removals at once, holding at most max_buffered_bytes of images between them;
        more are refused at once with a proper status. (gRPC's own maximum_concurrent_rpcs is not used: it
        refuses a client-streaming call before it starts, so callers may see INTERNAL instead, and it counts
        health checks with removals, so refused callers could starve them.)"""
        request_id = str(dict(context.invocation_metadata() or ()).get(keys.REQUEST_ID) or uuid.uuid4().hex)
        REQUEST_ID.set(request_id)
        if self._active >= self._max_active:
            await self._refuse(request_iterator, context, ServiceBusy(
                f"{self._max_active} removals are running; retry shortly"), request_id)
            return
        self._active += 1
        metrics.IN_FLIGHT.inc()
        try:
            async for response in self._remove(request_iterator, context, request_id):
                yield response
        finally:
            self._active -= 1
            metrics.IN_FLIGHT.dec()

    async def _refuse(
        self, requests: AsyncIterator[pb.RemoveBackgroundRequest], context: Context, busy: ServiceBusy,
        request_id: str,
    ) -> None:
        """Read and drop what is left of the caller's stream, for at most refusal_drain_s, then refuse: a status
        sent while the caller is still writing can reach it as INTERNAL ("Internal error from Core"), which the
        gateway could not tell from a bug. A caller slower than that is cut off, so it cannot keep the refusal
        (and what it holds) open; past MAX_DRAINING refusals at once, nothing is read. Nothing is kept."""
        if self._draining < MAX_DRAINING:
            self._draining += 1
            try:
                messages = aiter(requests)
                with contextlib.suppress(TimeoutError, grpc.RpcError):
                    async with asyncio.timeout(self._refusal_drain_s):
                        async for _ in messages:
                            pass
            finally:
                self._draining -= 1
        await self._abort(context, busy, request_id)

    async def _remove(
        self, request_iterator: AsyncIterator[pb.RemoveBackgroundRequest], context: Context, request_id: str
    ) -> AsyncIterator[pb.RemoveBackgroundResponse]:
        # A call without a deadline gets the default one, receiving the stream included: grpc enforces a
        # caller's deadline itself, this bounds the calls that would otherwise have none.
        remaining = context.time_remaining()
        budget_s = remaining if remaining is not None else self._default_deadline_s
        holding = self._budget.holding()
        try:
            async with asyncio.timeout(budget_s) as deadline:
                message, data, background = await _receive(
                    request_iterator, self._max_image_bytes, self._idle_timeout_s, holding
                )
                metrics.BYTES_IN.inc(len(data) + len(background))
                if message.request_id and message.request_id != request_id:
                    request_id = message.request_id
                    REQUEST_ID.set(request_id)
                options = RemovalOptions.from_proto(message)
                timeout_s = max(0.0, (deadline.when() or 0.0) - asyncio.get_running_loop().time())
                if remaining is None:  # no caller deadline: Triton also gets no more than its own default
                    timeout_s = min(timeout_s, self._default_timeout_s)
                cutout = await self._pipeline.run(
                    data, options, timeout_s=timeout_s, request_id=request_id, background=background or None
                )
                # The pipeline is done with them: freed (and given back to the budget) before the cut-out is sent.
                del data, background
        except ServiceBusy as busy:  # the budget is used up: refused like a call over the cap, its bytes dropped
            holding.release()
            await self._refuse(request_iterator, context, busy, request_id)
            return
        except TimeoutError:
            await self._abort(context, DeadlineExceeded(f"the call took longer than its {budget_s:g}s deadline"), request_id)
            return
        except InferenceError as error:
            await self._abort(context, error, request_id)
            return
        except Exception:  # a bug: logged here, INTERNAL to the caller, the server keeps serving
            _LOGGER.exception("request %s: unexpected failure", request_id)
            await self._abort(context, InferenceError("internal error; it has been logged"), request_id)
            return
        finally:
            holding.release()
        _record(cutout)
        _LOGGER.info(
            "request %s: %dx%d -> %dx%d %s in %.0f ms (inference %.0f ms)", request_id,
            cutout.original_width, cutout.original_height, cutout.width, cutout.height,
            options.output_format.value, cutout.timings.total_ms, cutout.timings.inference_ms,
        )
        yield pb.RemoveBackgroundResponse(metadata=_metadata(cutout))
        view = memoryview(cutout.data)
        for start in range(0, len(view), RESPONSE_CHUNK_BYTES):
            yield pb.RemoveBackgroundResponse(chunk=bytes(view[start : start + RESPONSE_CHUNK_BYTES]))

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        try:
            models = await self._segmenter.served_models()
        except InferenceError as error:
            await self._abort(context, error, "list-models")
            raise  # unreachable: abort raises
        return pb.ListModelsResponse(
            models=[
                pb.Model(
                    name=m.name, version=m.version, is_default=m.name == self._pipeline.default_model,
                    description=m.description,
                )
                for m in models
            ]
        )
