"""Session-wide real servers: one tritonserver on the project's model repository and the gRPC service on it, and
the same on the `held` test model for the tests that need an inference service but not ISNet's masks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from inference_service.server import InferenceServer, create_server
from inference_service.settings import InferenceSettings
from removai.v1 import inference_pb2_grpc as pb_grpc
from tests.held_model import NAME as HELD
from tests.held_model import HeldModel
from tools.fetch_weights import MODELS
from tools.triton_launcher import TritonServer

# Fails the run if any log line of the session carries an API key, a webhook secret or a signature; marks each
# test by what it starts (tests/tiers.py: the tiers of `make test` and `make test-fast`).
pytest_plugins = ["tests.log_secrets", "tests.tiers"]

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "triton_models"


def start_triton(workdir: Path) -> TritonServer:
    for model in MODELS:
        weights = MODEL_REPOSITORY / model / "1" / "model.onnx"
        if not weights.exists():
            pytest.fail(f"{weights} is missing: run `make setup` (it fetches the weights)")
    # As the stack runs it: the default model loaded at start, any other when a request first names it.
    server = TritonServer(MODEL_REPOSITORY, workdir, models=("isnet",))
    server.start()
    return server


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    server = start_triton(tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="session")
async def inference_server(triton: TritonServer) -> AsyncIterator[InferenceServer]:
    running = create_server(InferenceSettings(port=0, metrics_port=0, triton_url=triton.grpc_url, health_interval_s=0.5))
    await running.start()
    yield running
    await running.stop()


@pytest_asyncio.fixture(scope="session")
async def channel(inference_server: InferenceServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{inference_server.port}") as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel: grpc.aio.Channel) -> pb_grpc.BackgroundRemovalAsyncStub:
    return pb_grpc.BackgroundRemovalStub(channel)


# --- The `held` test model (an all-foreground mask in milliseconds; its calls are never held here) -----------------


@pytest.fixture(scope="session")
def held_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A real tritonserver serving only the `held` test model: seconds to start, no ISNet, fast tier."""
    root = tmp_path_factory.mktemp("held")
    server = TritonServer(HeldModel.create(root).repository, root / "triton")
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="session")
async def held_inference_server(held_triton: TritonServer) -> AsyncIterator[InferenceServer]:
    """The real inference service on held_triton, the held model its default: decoding, limits, compositing and
    encoding run for real, only the mask is not ISNet's."""
    running = create_server(InferenceSettings(
        port=0, metrics_port=-1, triton_url=held_triton.grpc_url, health_interval_s=0.5, default_model=HELD,
    ))
    await running.start()
    yield running
    await running.stop()
