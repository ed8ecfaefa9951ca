"""`make parity`: how far each served model's masks are from a direct ONNX Runtime run of the pinned isnet
weights in float32, on the repository's photos (tests/data): the mean absolute difference over the whole mask,
and over its soft edges (pixels where the reference is strictly between SOFT_LOW and SOFT_HIGH: hair, fur,
motion blur), where quantization shows first. The models run as model.py runs them (OpenVINO, the mask
output only, the config's precision "auto"; masks rounded to 8 bits), at the model's 1024x1024 input.
Figures only, no verdict: tests/inference/test_image_features.py holds the bounds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "triton_models"
PHOTOS = ROOT / "tests" / "data"
REFERENCE = REPOSITORY / "isnet" / "1" / "model.onnx"
# The served models and their weights files (as their config.pbtxt's "onnx_file" names them).
MODELS = {"isnet": REPOSITORY / "isnet" / "1" / "model.onnx", "isnet_int8": REPOSITORY / "isnet_int8" / "1" / "model.xml"}
SOFT_LOW, SOFT_HIGH = 0.05, 0.95
SIDE = 1024

Mask = npt.NDArray[np.float32]


def model_input(photo: Path) -> npt.NDArray[np.float32]:
    """float32 [1, 3, 1024, 1024]: resized bilinear, (pixel - 128) / 256, as the service and model.py do."""
    with Image.open(photo) as opened:
        rgb = ImageOps.exif_transpose(opened).convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    pixels = np.asarray(rgb, dtype=np.float32)
    return ((pixels - 128.0) / 256.0).transpose(2, 0, 1)[np.newaxis].copy()


def _eight_bit(output: npt.NDArray[np.float32]) -> Mask:
    mask: Mask = np.rint(np.clip(output.reshape(SIDE, SIDE), 0.0, 1.0) * 255.0).astype(np.float32) / np.float32(255.0)
    return mask


def reference_masks(inputs: list[npt.NDArray[np.float32]]) -> list[Mask]:
    """Direct ONNX Runtime, float32, on the pinned isnet file: the reference the parity tests use too."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(REFERENCE), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    output = session.get_outputs()[0].name
    return [_eight_bit(np.asarray(session.run([output], {name: x})[0], dtype=np.float32)) for x in inputs]


def openvino_masks(weights: Path, inputs: list[npt.NDArray[np.float32]]) -> list[Mask]:
    import openvino as ov

    core = ov.Core()
    network = core.read_model(str(weights))
    mask_only = ov.Model([network.output(0)], network.get_parameters(), "mask")
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    precision = "bf16" if "amx_bf16" in flags.split() else "f32"
    compiled = core.compile_model(mask_only, "CPU", {"INFERENCE_PRECISION_HINT": precision})
    return [_eight_bit(compiled(x)[compiled.outputs[0]]) for x in inputs]


def errors(mask: Mask, reference: Mask) -> tuple[float, float, int]:
    """(mean absolute difference, the same over the reference's soft edges, how many soft-edge pixels)."""
    difference = np.abs(mask - reference)
    soft = (reference > SOFT_LOW) & (reference < SOFT_HIGH)
    return float(difference.mean()), float(difference[soft].mean()) if soft.any() else 0.0, int(soft.sum())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.parity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: %(default)s)")
    args = parser.parse_args(argv)
    photos = sorted(PHOTOS.glob("*.jpg"))
    inputs = [model_input(photo) for photo in photos]
    reference = reference_masks(inputs)
    print(f"against ONNX Runtime f32 on {REFERENCE.relative_to(ROOT)}; soft edges: reference in "
          f"({SOFT_LOW}, {SOFT_HIGH})")
    print(f"{'model':<12}{'photo':<16}{'mean':>8}{'soft edge':>11}{'soft px':>9}")
    for model in (name.strip() for name in args.models.split(",") if name.strip()):
        weights = MODELS.get(model)
        if weights is None or not weights.exists():
            print(f"{model:<12}(no weights at {weights}: `make weights`, or `make int8` for isnet_int8)")
            continue
        rows = [errors(mask, ref) for mask, ref in zip(openvino_masks(weights, inputs), reference, strict=True)]
        for photo, (mean, soft, count) in zip(photos, rows, strict=True):
            print(f"{model:<12}{photo.name:<16}{mean:8.4f}{soft:11.4f}{count:9d}")
        print(f"{model:<12}{'(mean, worst)':<16}{np.mean([r[0] for r in rows]):8.4f}{np.mean([r[1] for r in rows]):11.4f}"
              f"   worst photo: mean {max(r[0] for r in rows):.4f}, soft edge {max(r[1] for r in rows):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
