"""The inference runtime is a choice of the model's config.pbtxt: both runtimes agree with ONNX Runtime run
directly, and an unknown runtime keeps the model from loading."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio

from contract.client import remove_background
from inference_service.server import create_server
from inference_service.settings import InferenceSettings
from removai.v1 import inference_pb2 as pb
from removai.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import MODEL_REPOSITORY
from tests.reference import DATA, alpha_of, reference_mask, upright_rgb
from tools.triton_launcher import TritonLaunchError, TritonServer

CONFIG = (MODEL_REPOSITORY / "isnet" / "config.pbtxt").read_text()

# Every test here runs ISNet's model.py in a real Triton on the real weights, the session's or one of its own
# (which the unknown runtime and precision keep from loading).
pytestmark = pytest.mark.isnet


def _repository_with(tmp_path: Path, runtime: str, precision: str = "auto") -> Path:
    """A copy of the model repository whose config names `runtime` and `precision` (weights and model.py
    linked)."""
    assert re.search(r'key: "runtime", value: \{ string_value: "openvino" \}', CONFIG)
    assert re.search(r'key: "precision", value: \{ string_value: "auto" \}', CONFIG)
    model_dir = tmp_path / "models" / "isnet"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(
        CONFIG.replace('key: "runtime", value: { string_value: "openvino" }',
                       f'key: "runtime", value: {{ string_value: "{runtime}" }}')
        .replace('key: "precision", value: { string_value: "auto" }',
                 f'key: "precision", value: {{ string_value: "{precision}" }}')
    )
    for name in ("model.py", "model.onnx"):
        (model_dir / "1" / name).symlink_to(MODEL_REPOSITORY / "isnet" / "1" / name)
    return tmp_path / "models"


@pytest_asyncio.fixture
async def onnxruntime_stub(tmp_path: Path) -> AsyncIterator[pb_grpc.BackgroundRemovalAsyncStub]:
    triton = TritonServer(_repository_with(tmp_path, "onnxruntime"), tmp_path / "triton")
    triton.start()
    running = create_server(InferenceSettings(port=0, metrics_port=-1, triton_url=triton.grpc_url))
    await running.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield pb_grpc.BackgroundRemovalStub(channel)
    finally:
        await running.stop()
        triton.stop()


async def test_both_runtimes_agree_with_direct_onnxruntime(
    stub: pb_grpc.BackgroundRemovalAsyncStub, onnxruntime_stub: pb_grpc.BackgroundRemovalAsyncStub
) -> None:
    """The default config (OpenVINO, bf16 where the CPU has it) and runtime "onnxruntime" both give masks
    within 0.005 of a direct ONNX Runtime run, and within 0.005 of each other."""
    data = (DATA / "coffee.jpg").read_bytes()
    default = alpha_of((await remove_background(stub, data, pb.RemovalOptions(), timeout_s=120)).data)
    onnx = alpha_of((await remove_background(onnxruntime_stub, data, pb.RemovalOptions(), timeout_s=120)).data)
    reference = reference_mask(upright_rgb(data))
    assert float(np.abs(onnx - reference).mean()) < 0.002  # same runtime: only the 8-bit alpha differs
    assert float(np.abs(default - reference).mean()) < 0.005
    assert float(np.abs(default - onnx).mean()) < 0.005


def test_unknown_runtime_keeps_the_model_from_loading(tmp_path: Path) -> None:
    """A runtime name model.py does not know fails the model's load, so Triton does not start serving."""
    triton = TritonServer(_repository_with(tmp_path, "tensorflow-lite"), tmp_path / "triton")
    try:
        with pytest.raises(TritonLaunchError):
            triton.start(timeout=120)
        assert "unknown runtime 'tensorflow-lite'" in triton.log_path.read_text()
    finally:
        triton.stop()
    shutil.rmtree(tmp_path / "models")


def test_auto_precision_is_bf16_only_where_the_cpu_has_amx(triton: TritonServer) -> None:
    """The configs' precision "auto" compiles bf16 only on CPUs with AMX (without it bf16 is emulated: 2.41 s
    against f32's 1.4 s per image, measured), and model.py logs which it chose for each model."""
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    expected = "bf16" if "amx_bf16" in flags.split() else "f32"
    log = triton.log_path.read_text()
    for model in ("isnet",):
        assert f'"{model}: OpenVINO precision {expected} (auto: the CPU has ' in log, log[-3000:]


def test_unknown_precision_keeps_the_model_from_loading(tmp_path: Path) -> None:
    """A precision model.py does not know fails the model's load instead of falling back silently."""
    triton = TritonServer(_repository_with(tmp_path, "openvino", "int3"), tmp_path / "triton")
    try:
        with pytest.raises(TritonLaunchError):
            triton.start(timeout=120)
        assert "unknown precision 'int3'; use one of auto, bf16, f32" in triton.log_path.read_text()
    finally:
        triton.stop()
    shutil.rmtree(tmp_path / "models")
