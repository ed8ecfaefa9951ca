"""Background removal from bytes to bytes; knows nothing of gRPC. CPU work runs in an executor."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from contract.models import retired_model_message
from inference_service import compositing, imaging
from inference_service.compositing import Box
from inference_service.errors import DeadlineExceeded, UnknownModel
from inference_service.imaging import Pixels
from inference_service.options import PngEncoder, RemovalOptions
from inference_service.triton import ModelInput, Segmentation, ServedModel

_T = TypeVar("_T")


class Segmenter(Protocol):
    """Where masks come from (Triton in production; anything with this shape in a unit test)."""

    async def model_input(self, model: str, timeout_s: float = ...) -> ModelInput: ...

    async def segment(self, model: str, image: Pixels, timeout_s: float, request_id: str) -> Segmentation: ...

    async def served_models(self) -> list[ServedModel]: ...


@dataclass
class Timings:
    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    encode_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True)
class Cutout:
    """The encoded result and what a caller needs to know about it."""

    data: bytes
    width: int
    height: int
    original_width: int
    original_height: int
    options: RemovalOptions
    model_name: str
    model_version: str
    timings: Timings = field(compare=False)
    foreground: Box | None = None  # in the result's pixels; None when no pixel is foreground


class RemovalPipeline:
    """decode -> resize to the model input -> Triton -> mask to output size -> alpha/background -> encode."""

    def __init__(
        self,
        segmenter: Segmenter,
        executor: Executor,
        *,
        default_model: str,
        max_pixels: int,
        png_level: int,
        png_encoder: PngEncoder = PngEncoder.ISAL,
        full_size_at_once: int = 0,
    ) -> None:
        self._segmenter = segmenter
        self._executor = executor
        # How many requests may hold full-size pixels after inference (decode, render, encode) at once; 0: no
        # limit. The executor runs only so many stages at a time anyway: without it, requests whose masks came
        # back meanwhile decode their full-size pixels and hold them while they wait for a worker.
        self._full_size = asyncio.Semaphore(full_size_at_once) if full_size_at_once > 0 else None
        self.default_model = default_model
        self._max_pixels = max_pixels
        self._png_level = png_level  # the chosen encoder's own level (Pillow's zlib 0..9, ISA-L 0..3)
        self._png_encoder = png_encoder

    async def _off_loop(self, timings: Timings, stage: str, fn: Callable[..., _T], *args: object) -> _T:
        started = time.perf_counter()
        result = await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        setattr(timings, f"{stage}_ms", (time.perf_counter() - started) * 1000.0)
        return result

    async def _model_input(self, model: str, timeout_s: float) -> ModelInput:
        """The model's input (a model not loaded yet is loaded within timeout_s); an unknown model's error
        names the models served, a retired one's its replacement."""
        try:
            return await self._segmenter.model_input(model, timeout_s)
        except UnknownModel as error:
            retired = retired_model_message(model)
            if retired:
                raise UnknownModel(retired) from error
            try:
                ready = sorted(m.name for m in await self._segmenter.served_models())
            except Exception:  # noqa: BLE001 - the list only improves the message
                raise error from None
            raise UnknownModel(f"unknown model {model!r}; available: {', '.join(ready)}") from error

    async def run(
        self,
        data: bytes | bytearray,
        options: RemovalOptions,
        *,
        timeout_s: float,
        request_id: str,
        background: bytes | bytearray | None = None,
    ) -> Cutout:
        """The cut-out of the image in data (over the background image's bytes, when given), or an
        InferenceError subclass saying why not."""
        started = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        timings = Timings()
        model = options.model or self.default_model
        model_input = await self._model_input(model, timeout_s)
        # A large JPEG is decoded scaled down for the model input, and in full only once the mask is back: requests
        # waiting for the model then hold the compressed bytes, not full-size pixels (36 MB each at 12 MP).
        side = max(model_input.width, model_input.height)
        first, full_size = await self._off_loop(
            timings, "decode", imaging.decode_for_model, data, self._max_pixels, side
        )
        decoded_ms = timings.decode_ms
        pixels = await self._off_loop(
            timings, "preprocess", imaging.model_input, first, model_input.width, model_input.height
        )
        kept = first if full_size else None
        del first
        backdrop = None
        if background:
            backdrop = await self._off_loop(timings, "decode", compositing.decode_background, background, self._max_pixels)
            decoded_ms += timings.decode_ms
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the deadline passed before inference")
        inference_started = time.perf_counter()
        segmentation = await self._segmenter.segment(model, pixels, remaining, request_id)
        timings.inference_ms = (time.perf_counter() - inference_started) * 1000.0
        async with self._full_size or contextlib.nullcontext():
            image = kept
            if image is None:
                image = await self._off_loop(timings, "decode", imaging.decode, data, self._max_pixels)
                decoded_ms += timings.decode_ms
            timings.decode_ms = decoded_ms
            rendered = await self._off_loop(
                timings, "postprocess", compositing.render, image, segmentation.mask, options, backdrop
            )
            result, foreground = rendered.image, rendered.foreground
            width, height = result.size  # before encode: nothing else needs the full-size pixels after it
            original_width, original_height = image.size
            del image, kept, backdrop
            encoded = await self._off_loop(
                timings, "encode", imaging.encode, result, options.output_format, self._png_level,
                self._png_encoder,
            )
            del result, rendered
        timings.total_ms = (time.perf_counter() - started) * 1000.0
        return Cutout(
            data=encoded,
            width=width,
            height=height,
            original_width=original_width,
            original_height=original_height,
            options=options,
            model_name=segmentation.model_name,
            model_version=segmentation.model_version,
            timings=timings,
            foreground=foreground,
        )
