"""Triton Python-backend model: uint8 RGB images in, foreground masks out, computed by an ONNX file.

It depends only on numpy, the chosen runtime (onnxruntime, or openvino) and Triton's
triton_python_backend_utils, so the same directory loads in NVIDIA's Triton container unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value or default


def release_freed_heap() -> bool:
    """Hands the C heap's free pages back to the kernel (glibc's malloc_trim); False where the C library has no
    such call (musl). Loading leaves hundreds of MB freed but kept by the allocator: the ONNX graph OpenVINO read
    and rewrote, the model given to compile_model, and the warm-up's temporaries (ISNet f32, THROUGHPUT,
    2 streams: 1,168 MB held after the warm-up without it, 1,049 MB with it)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


class _InvalidInput(ValueError):
    """The request's input is not what config.pbtxt declares; reported as TritonError.INVALID_ARG."""


class _OnnxRuntimeSession:
    """Runs the ONNX file with ONNX Runtime; CUDA when the instance is on a GPU and onnxruntime-gpu is there."""

    def __init__(self, path: str, threads: int, device: str, device_id: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        providers: list[Any] = ["CPUExecutionProvider"]
        if device == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        self._session = ort.InferenceSession(path, sess_options=options, providers=providers)
        self.input_name = self._session.get_inputs()[0].name
        self.output_name = self._session.get_outputs()[0].name
        batch_dim = self._session.get_inputs()[0].shape[0]
        self.fixed_batch_of_one = batch_dim == 1

    in_flight = 1

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self.output_name], {self.input_name: batch})[0]

    def run_many(self, batches: Iterable[np.ndarray]) -> list[np.ndarray]:
        """Each batch's output, one after the other (one session uses every thread it was given)."""
        return [self.run(batch) for batch in batches]


PRECISIONS = ("auto", "bf16", "f32")


def _cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The first CPU's feature flags (empty where /proc/cpuinfo is missing or unreadable)."""
    try:
        with open(cpuinfo) as stream:
            for line in stream:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_precision(requested: str, flags: set[str]) -> tuple[str, str]:
    """(OpenVINO precision, why). "auto" is bf16 only on CPUs with AMX: measured on ISNet 1024x1024, 2 cores,
    bf16 takes 0.34 s where AMX runs it but 2.41 s against f32's 1.35-1.5 s on AVX-512 BF16 without AMX."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested, "as config.pbtxt asks"
    if "amx_bf16" in flags:
        return "bf16", "auto: the CPU has AMX (amx_bf16)"
    return "f32", "auto: the CPU has no AMX (no amx_bf16 flag), where bf16 is slower than f32"


HINTS = ("THROUGHPUT", "LATENCY")


class _OpenVinoSession:
    """Runs the network's first output only, with OpenVINO on the CPU in precision "bf16" or "f32"
    (choose_precision picks), as many inferences at once as the compiled model has streams.

    ISNet's file computes eleven more outputs (five side masks at full size, six decoder feature maps) that
    nothing reads; a model built of the first result alone leaves them out, which took one image from 0.56 s to
    0.2 s here. The hint "THROUGHPUT" gives the CPU's cores to several streams (one image each, an async infer
    queue keeps them all busy); "LATENCY" gives every core to one image at a time.
    """

    def __init__(self, path: str, threads: int, precision: str, hint: str) -> None:
        import openvino as ov

        if hint not in HINTS:
            raise ValueError(f"unknown performance_hint {hint!r}; use one of {', '.join(HINTS)}")
        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        network = core.read_model(path)
        batch_dim = network.inputs[0].get_partial_shape()[0]
        self.fixed_batch_of_one = batch_dim.is_static and batch_dim.get_length() == 1
        mask_only = ov.Model([network.output(0)], network.get_parameters(), f"{network.get_friendly_name()}-mask")
        self._compiled = core.compile_model(mask_only, "CPU", config)
        # The compiled model keeps what it needs: the graph read from the file (its weights included) is freed here,
        # and its memory returned by release_freed_heap() once the model is warm.
        del network, mask_only
        self.streams = int(self._compiled.get_property("NUM_STREAMS"))
        self._queue = ov.AsyncInferQueue(
            self._compiled, int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        )
        self._queue.set_callback(self._done)
        self.in_flight = len(self._queue)

    @staticmethod
    def _done(request: Any, deliver: Callable[[np.ndarray], None]) -> None:
        # The request's tensor is reused by the next job on that request: copied out here. Nothing may escape
        # this callback: OpenVINO would keep the exception and raise it at a later, unrelated start_async.
        try:
            deliver(request.get_output_tensor(0).data.copy())
        except Exception as exc:  # noqa: BLE001 - logged; the request's answer is _Answer's to send
            _warn(f"an inference's output could not be delivered: {exc}")

    def submit(self, batch: np.ndarray, deliver: Callable[[np.ndarray], None]) -> None:
        """Starts one inference; `deliver` gets its output on one of OpenVINO's threads. Blocks while every
        stream is busy, until one is free."""
        self._queue.start_async({0: batch}, deliver)

    def wait_all(self) -> None:
        self._queue.wait_all()

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.run_many([batch])[0]

    def run_many(self, batches: Iterable[np.ndarray]) -> list[np.ndarray]:
        """Each batch's output, the batches run side by side on the compiled model's streams. Each is started
        as soon as the iterable yields it, so preparing the next input overlaps the inferences under way."""
        results: dict[int, np.ndarray] = {}
        count = 0
        for index, batch in enumerate(batches):
            self.submit(batch, lambda output, index=index: results.__setitem__(index, output))
            count += 1
        self._queue.wait_all()
        if len(results) != count:
            raise RuntimeError(f"OpenVINO returned {len(results)} of {count} outputs")
        return [results[index] for index in range(count)]


class _Answer:
    """One decoupled request's answer: its images' masks gathered as the inferences finish (on OpenVINO's
    threads), sent when the last is in; a failure is sent instead, once."""

    def __init__(self, sender: Any, count: int, name: str, to_mask: Callable[[np.ndarray, int], np.ndarray]) -> None:
        self._sender = sender
        self._outputs: list[np.ndarray | None] = [None] * count
        self._left = count
        self._lock = threading.Lock()
        self._name = name
        self._to_mask = to_mask

    def deliver(self, index: int, output: np.ndarray) -> None:
        with self._lock:
            self._outputs[index] = output
            self._left -= 1
            if self._left:
                return
        try:
            masks = self._to_mask(np.concatenate([o for o in self._outputs if o is not None], axis=0),
                                  len(self._outputs))
            response = pb_utils.InferenceResponse([pb_utils.Tensor("mask", masks)])
        except Exception as exc:  # noqa: BLE001 - reported to this request's caller only
            self.fail(exc)
            return
        self._send(response)

    def fail(self, exc: Exception) -> None:
        with self._lock:
            if self._left < 0:
                return
            self._left = -1
        error = pb_utils.TritonError(f"{self._name}: {exc}", pb_utils.TritonError.INTERNAL)
        self._send(pb_utils.InferenceResponse(output_tensors=[], error=error))

    def _send(self, response: Any) -> None:
        try:
            self._sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # noqa: BLE001 - its caller is gone (stream cancelled, client killed)
            _warn(f"{self._name}: an answer could not be sent, its caller is gone: {exc}")


def _warn(message: str) -> None:
    logger = getattr(pb_utils, "Logger", None)  # Triton's; absent where model.py is tested without Triton
    if logger is not None:
        logger.log_warn(message)


class TritonPythonModel:
    """Normalises each image, runs the segmentation network and returns its first output as the mask."""

    _name = "isnet"
    _decoupled = False

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self._name = config["name"]
        # config.pbtxt's model_transaction_policy: decoupled answers requests from OpenVINO's threads (_start).
        self._decoupled = bool(pb_utils.using_decoupled_model_transaction_policy(config))
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(version_dir, _parameter(config, "onnx_file", "model.onnx"))
        if not os.path.exists(path):
            # Weights are never committed: fetched (`make weights`) or, for the INT8 model, made (`make int8`).
            raise pb_utils.TritonModelException(
                f"{config['name']}: weights file {path} is missing; `make weights` fetches isnet's, `make int8` "
                "makes isnet_int8's"
            )
        runtime = _parameter(config, "runtime", "onnxruntime")
        threads = int(_parameter(config, "intra_op_threads", "0"))
        if runtime == "onnxruntime":
            self._session: _OnnxRuntimeSession | _OpenVinoSession = _OnnxRuntimeSession(
                path, threads, args.get("model_instance_kind", "CPU"), int(args.get("model_instance_device_id", 0))
            )
        elif runtime == "openvino":
            try:
                precision, why = choose_precision(_parameter(config, "precision", "auto"), _cpu_flags())
            except ValueError as exc:
                raise pb_utils.TritonModelException(str(exc)) from exc
            try:
                self._session = _OpenVinoSession(
                    path, threads, precision, _parameter(config, "performance_hint", "THROUGHPUT")
                )
            except ValueError as exc:
                raise pb_utils.TritonModelException(str(exc)) from exc
            pb_utils.Logger.log_info(
                f"{config['name']}: OpenVINO precision {precision} ({why}), "
                f"{self._session.streams} stream(s), {self._session.in_flight} inference(s) in flight"
            )
        else:
            raise pb_utils.TritonModelException(f"unknown runtime {runtime!r}; use onnxruntime or openvino")
        mean = [float(v) for v in _parameter(config, "mean", "128,128,128").split(",")]
        std = [float(v) for v in _parameter(config, "std", "256,256,256").split(",")]
        # Shaped to broadcast over NCHW.
        self._mean = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
        self._scale = (1.0 / np.asarray(std, dtype=np.float32)).reshape(1, 3, 1, 1)
        # Two runs on every inference request before Triton reports the model ready: ONNX Runtime's first and
        # second runs are both slow (measured 1.4 s and 2.3 s against 1.25 s steady), and OpenVINO's first run
        # on each stream too; the first callers should not pay for them.
        height, width, _ = config["input"][0]["dims"]
        self._shape = (int(height), int(width), 3)
        for _ in range(2):
            self._masks(np.zeros((self._session.in_flight, int(height), int(width), 3), dtype=np.uint8))
        release_freed_heap()

    def _masks(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] -> uint8 [N, H, W]: probability x 255, rounded."""
        if self._session.fixed_batch_of_one:
            # One image per inference, all of them in flight at once (as many run as there are streams).
            outputs = self._session.run_many(self._normalised(images[i : i + 1]) for i in range(images.shape[0]))
            output = np.concatenate(outputs, axis=0)
        else:
            output = self._session.run(self._normalised(images))
        return self._to_mask(output, images.shape[0])

    def _to_mask(self, output: np.ndarray, count: int) -> np.ndarray:
        """The network's output for `count` images -> uint8 [count, H, W]: probability x 255, rounded. In place on
        the output (a copy of the runtime's own): no float32 temporaries of the batch's size."""
        probability = output.reshape(count, self._shape[0], self._shape[1])
        np.clip(probability, 0.0, 1.0, out=probability)
        probability *= 255.0
        return np.rint(probability, out=probability).astype(np.uint8)

    def _normalised(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] -> float32 [N, 3, H, W], (pixel - mean) / std per channel (one float32 array)."""
        normalised = images.transpose(0, 3, 1, 2).astype(np.float32)
        normalised -= self._mean
        normalised *= self._scale
        return normalised

    def _images(self, request: Any) -> np.ndarray:
        """The request's "image" tensor, checked: a bad one raises _InvalidInput (the caller's mistake)."""
        tensor = pb_utils.get_input_tensor_by_name(request, "image")
        if tensor is None:
            raise _InvalidInput('the request has no "image" input')
        images = tensor.as_numpy()
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != self._shape:
            raise _InvalidInput(
                f'"image" must be uint8 [N, {self._shape[0]}, {self._shape[1]}, 3], got {images.dtype} '
                f"{list(images.shape)}"
            )
        return images

    def execute(self, requests: list[Any]) -> list[Any] | None:
        if self._decoupled:
            self._start(requests)
            return None
        return self._answer(requests)

    def _start(self, requests: list[Any]) -> None:
        """Decoupled: each request's images are started on the streams as they come (blocking only while every
        stream is busy) and answered from OpenVINO's threads when done, so that this returns and Triton hands
        over the next requests while these run: no stream waits for a batch to finish. A runtime without an
        async queue (ONNX Runtime) answers each request here, in turn."""
        for request in requests:
            sender = request.get_response_sender()
            try:
                images = self._images(request)
            except _InvalidInput as exc:
                error = pb_utils.TritonError(f"{self._name}: invalid input: {exc}", pb_utils.TritonError.INVALID_ARG)
                sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            answer = _Answer(sender, images.shape[0], self._name, self._to_mask)
            try:
                if isinstance(self._session, _OpenVinoSession) and self._session.fixed_batch_of_one:
                    for index in range(images.shape[0]):
                        self._session.submit(self._normalised(images[index : index + 1]),
                                             lambda output, index=index, answer=answer: answer.deliver(index, output))
                else:
                    answer.deliver(0, self._session.run(self._normalised(images)))
            except Exception as exc:  # noqa: BLE001 - reported to this request's caller only
                answer.fail(exc)

    def finalize(self) -> None:
        # Unloading: the inferences under way finish and are answered first.
        if isinstance(self._session, _OpenVinoSession):
            self._session.wait_all()

    def _answer(self, requests: list[Any]) -> list[Any]:
        # Each request is answered on its own: a bad input never fails the others in the batch, and is
        # INVALID_ARG, so callers know a retry cannot help. The good requests' images run together, so that a
        # batch from the dynamic batcher keeps every stream busy; a failure there (the runtime's, not the
        # caller's) is INTERNAL for each of them.
        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, np.ndarray]] = []
        for index, request in enumerate(requests):
            try:
                good.append((index, self._images(request)))
            except _InvalidInput as exc:
                error = pb_utils.TritonError(f"{self._name}: invalid input: {exc}", pb_utils.TritonError.INVALID_ARG)
                responses[index] = pb_utils.InferenceResponse(output_tensors=[], error=error)
        if good:
            try:
                masks = self._masks(np.concatenate([images for _, images in good], axis=0))
                start = 0
                for index, images in good:
                    mask = masks[start : start + images.shape[0]]
                    start += images.shape[0]
                    responses[index] = pb_utils.InferenceResponse([pb_utils.Tensor("mask", mask)])
            except Exception as exc:  # noqa: BLE001 - reported to the callers of these requests only
                error = pb_utils.TritonError(f"{self._name}: {exc}", pb_utils.TritonError.INTERNAL)
                for index, _ in good:
                    responses[index] = pb_utils.InferenceResponse(output_tensors=[], error=error)
        return responses
