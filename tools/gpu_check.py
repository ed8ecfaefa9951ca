"""`python -m tools.gpu_check`: the ISNet file on a GPU, checked against ONNX Runtime on the CPU and timed.

For a GPU host (or the lent GPU machine) with PyTorch and CUDA; needs `onnx` and `onnx2torch` there, not in
the project's environment. It runs the ONNX file (default: the isnet model's) in PyTorch through onnx2torch,
as exported (float16 compute) and widened to float32 (float32 and TF32 convolutions), at batch 1, 4 and 16;
compares each mask with a direct ONNX Runtime CPU run of the same file (uint8 masks, as model.py rounds
them); and, where ONNX Runtime has the CUDA provider (onnxruntime-gpu), runs triton_models/isnet/1/model.py's
own GPU path. Prints one JSON object (docs/operations.md, "On a GPU", has the H200 figures).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg")
SIZE = 1024


def load_images() -> list[npt.NDArray[np.uint8]]:
    """The test photos at the model's input size, uint8 RGB (as the inference service sends them)."""
    images = []
    for name in PHOTOS:
        with Image.open(ROOT / "tests" / "data" / name) as opened:
            resized = opened.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        images.append(np.asarray(resized, dtype=np.uint8))
    return images


def normalise(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """uint8 [H, W, 3] -> float32 [1, 3, H, W], (x - 128) / 256 as config.pbtxt's mean and std say."""
    return ((image.transpose(2, 0, 1)[None].astype(np.float32) - 128.0) / 256.0).astype(np.float32)


def to_mask(output: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    mask: npt.NDArray[np.uint8] = np.rint(np.clip(output.reshape(SIZE, SIZE), 0.0, 1.0) * 255.0).astype(np.uint8)
    return mask


def mask_difference(masks: list[npt.NDArray[np.uint8]], reference: list[npt.NDArray[np.uint8]]) -> dict[str, float]:
    diffs = [np.abs(m.astype(np.int16) - r.astype(np.int16)) for m, r in zip(masks, reference, strict=True)]
    return {
        "mean_abs": round(float(np.mean([d.mean() for d in diffs])), 4),
        "max_abs": int(max(int(d.max()) for d in diffs)),
        "share_over_2": round(float(np.mean([(d > 2).mean() for d in diffs])), 6),
    }


def sorted_graph(model: Any) -> Any:
    """The ONNX model with its nodes in dependency order: the isnet export lists a Cast after the Conv that reads
    it, which ONNX Runtime sorts out itself and onnx2torch does not."""
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending = list(model.graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(x in available for x in n.input)]
        if not ready:
            raise ValueError("the graph has a cycle or an input nothing produces")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model


def widened_to_float32(model: Any) -> Any:
    """The same graph with its float16 weights, constants and casts made float32 (what a float32 export costs)."""
    import onnx
    from onnx import numpy_helper

    float16, float32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    for init in model.graph.initializer:
        if init.data_type == float16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == float16:
                attr.i = float32
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == float16:
                widened = numpy_helper.to_array(attr.t).astype(np.float32)
                attr.t.CopyFrom(numpy_helper.from_array(widened, attr.t.name))
    for info in model.graph.value_info:
        if info.type.tensor_type.elem_type == float16:
            info.type.tensor_type.elem_type = float32
    return model


def per_image_seconds(run: Callable[[], Any], sync: Callable[[], None], repeats: int, warm_up: int, batch: int) -> float:
    for _ in range(warm_up):
        run()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    sync()
    return round((time.perf_counter() - start) / (repeats * batch), 5)


def check_torch(onnx_path: Path, images: list[npt.NDArray[np.uint8]], reference: list[npt.NDArray[np.uint8]],
                repeats: int, warm_up: int) -> dict[str, Any]:
    import onnx
    import torch
    from onnx2torch import convert

    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict[str, Any] = {"torch": torch.__version__, "device": device}
    if device == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    torch.backends.cudnn.benchmark = True
    exported = convert(sorted_graph(onnx.load(str(onnx_path)))).eval().to(device)
    float32 = convert(sorted_graph(widened_to_float32(onnx.load(str(onnx_path))))).eval().to(device)

    def first(net: Any, x: Any) -> Any:
        out = net(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    with torch.inference_mode():
        inputs = [torch.from_numpy(normalise(image)).to(device) for image in images]
        for label, net in (("as_exported", exported), ("float32", float32)):
            torch.backends.cudnn.allow_tf32 = False
            masks = [to_mask(first(net, x).float().cpu().numpy()) for x in inputs]
            results[f"{label}_mask_vs_onnxruntime_cpu"] = mask_difference(masks, reference)
            results[f"{label}_s_per_image_batch1"] = per_image_seconds(
                functools.partial(first, net, inputs[0]), sync, repeats, warm_up, 1
            )
        torch.backends.cudnn.allow_tf32 = True
        results["tf32_s_per_image_batch1"] = per_image_seconds(lambda: first(float32, inputs[0]), sync, repeats,
                                                               warm_up, 1)
        # As model.py feeds a runtime: normalised on the CPU, float32 to the device, the uint8 mask back.
        def served() -> None:
            for image in images:
                out = first(exported, torch.from_numpy(normalise(image)).to(device))
                (out.clamp(0, 1) * 255).round().to(torch.uint8).cpu()

        results["as_exported_with_copies_s_per_image_batch1"] = per_image_seconds(
            served, sync, max(1, repeats // len(images)), 1, len(images)
        )
        # The export's batch dimension says 1, but the converted graph takes more: what a dynamic-batch export
        # would give Triton's dynamic batcher.
        for batch in (4, 16):
            xb = inputs[0].repeat(batch, 1, 1, 1)
            out = first(exported, xb)
            results[f"as_exported_batch{batch}_max_diff_vs_batch1"] = round(
                float((out[:1].float() - first(exported, inputs[0]).float()).abs().max().item()), 5
            )
            results[f"as_exported_s_per_image_batch{batch}"] = per_image_seconds(
                functools.partial(first, exported, xb), sync, max(2, repeats // batch), 1, batch
            )
        if device == "cuda":
            results["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return results


def check_model_py(onnx_path: Path, images: list[npt.NDArray[np.uint8]], reference: list[npt.NDArray[np.uint8]],
                   repeats: int) -> dict[str, Any]:
    """triton_models/isnet/1/model.py with a GPU instance's arguments (needs onnxruntime-gpu)."""
    stub = types.ModuleType("triton_python_backend_utils")
    stub.TritonModelException = RuntimeError  # type: ignore[attr-defined]
    stub.Logger = types.SimpleNamespace(log_info=print)  # type: ignore[attr-defined]
    sys.modules["triton_python_backend_utils"] = stub
    spec = importlib.util.spec_from_file_location("isnet_model", ROOT / "triton_models" / "isnet" / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    repository = Path(tempfile.mkdtemp())
    (repository / "1").mkdir()
    (repository / "1" / "model.onnx").symlink_to(onnx_path.resolve())
    config = {"name": "isnet", "input": [{"dims": [SIZE, SIZE, 3]}],
              "parameters": {"runtime": {"string_value": "onnxruntime"}}}
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(repository),
                      "model_version": "1", "model_instance_kind": "GPU", "model_instance_device_id": "0"})
    masks = [model._masks(image[None])[0] for image in images]
    batch = np.stack(images)
    seconds = per_image_seconds(lambda: model._masks(batch), lambda: None, max(1, repeats // len(images)), 1,
                                len(images))
    return {"mask_vs_onnxruntime_cpu": mask_difference(masks, reference), "s_per_image": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, default=ROOT / "triton_models" / "isnet" / "1" / "model.onnx")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per figure (default 50)")
    parser.add_argument("--warm-up", type=int, default=5, help="untimed runs first (default 5)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    images = load_images()
    cpu = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    name_in, name_out = cpu.get_inputs()[0].name, cpu.get_outputs()[0].name
    start = time.perf_counter()
    reference = [to_mask(cpu.run([name_out], {name_in: normalise(image)})[0]) for image in images]
    results: dict[str, Any] = {
        "onnx": str(args.onnx), "cpu_cores": os.cpu_count(), "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "onnxruntime_cpu_s_per_image": round((time.perf_counter() - start) / len(images), 3),
    }
    print(json.dumps(results), flush=True)
    try:
        results["pytorch"] = check_torch(args.onnx, images, reference, args.repeats, args.warm_up)
    except Exception as exc:  # noqa: BLE001 - a report of what ran: one failing part must not hide the others
        results["pytorch_error"] = repr(exc)[:500]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            results["model_py_onnxruntime_cuda"] = check_model_py(args.onnx, images, reference, args.repeats)
        except Exception as exc:  # noqa: BLE001 - as above
            results["model_py_error"] = repr(exc)[:500]
    report = json.dumps(results, indent=2)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return 0 if "pytorch_error" not in results and "model_py_error" not in results else 1


if __name__ == "__main__":
    raise SystemExit(main())
