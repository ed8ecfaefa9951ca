"""One inference call to a Triton model, plain or over a stream: the one place that knows how a decoupled model
(config.pbtxt's model_transaction_policy { decoupled: true }, as isnet's) is called. Used by the inference
service and by the benchmarks that call Triton directly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import tritonclient.grpc.aio as triton_grpc
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException


def is_decoupled(config: dict[str, Any]) -> bool:
    """Whether a model's config (Triton's JSON form) makes it decoupled: answered over gRPC streaming only."""
    return bool(config.get("model_transaction_policy", {}).get("decoupled", False))


async def infer(
    client: triton_grpc.InferenceServerClient, model: str, tensor: InferInput, *, request_id: str,
    timeout_s: float, decoupled: bool, output: str = "mask",
) -> Any:
    """The InferResult of one inference of `model` within timeout_s; raises InferenceServerException, with
    the gRPC status where the call failed as a whole (a stream's error response carries a message only)."""
    outputs = [InferRequestedOutput(output)]
    if not decoupled:
        return await client.infer(model, [tensor], outputs=outputs, request_id=request_id, client_timeout=timeout_s)
    # A stream of one request, kept open until its one response is in (the model sends it as the final one).
    answered = asyncio.Event()

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": model, "inputs": [tensor], "outputs": outputs, "request_id": request_id}
        await answered.wait()

    responses = client.stream_infer(requests(), stream_timeout=timeout_s)
    answers: list[tuple[Any, InferenceServerException | None]] = []
    ended = False
    try:
        async for answer in responses:
            # One request, one (final) response: the request iterator then ends, closing the stream from this
            # side, and the stream runs out. Cancelling it right after the answer instead sometimes left Triton
            # holding the model at shutdown.
            answers.append(answer)
            answered.set()
        ended = True
    except grpc.aio.AioRpcError as exc:
        ended = True
        # The stream itself failed (Triton gone, the deadline passed): the statuses a plain call raises with.
        raise InferenceServerException(exc.details() or "", status=str(exc.code())) from exc
    finally:
        answered.set()
        if not ended:
            responses.cancel()
    if not answers:
        raise InferenceServerException("Triton ended the stream without an answer", status="StatusCode.UNAVAILABLE")
    result, error = answers[0]
    if error is not None:
        raise error
    return result
