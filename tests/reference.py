"""An independent reference: a model's mask computed by a direct ONNX Runtime run of its own weights, as
@imgly's pipeline does (ISNet's preprocessing; both shipped models are ISNet)."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
MODEL_PATH = ROOT / "triton_models" / "isnet" / "1" / "model.onnx"
DATA = Path(__file__).resolve().parent / "data"


@lru_cache(maxsize=2)
def _session(model: str = "isnet") -> ort.InferenceSession:
    path = ROOT / "triton_models" / model / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def upright_rgb(data: bytes) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def reference_mask(
    rgb: Image.Image, size: tuple[int, int] | None = None, model: str = "isnet"
) -> npt.NDArray[np.float32]:
    """float32 [H, W] in [0, 1] at `size` (default: the image's size): resize 1024 bilinear, (x-128)/256,
    run through triton_models/<model>/1/model.onnx."""
    x = np.asarray(rgb.resize((1024, 1024), Image.Resampling.BILINEAR), dtype=np.float32)
    x = ((x - 128.0) / 256.0).transpose(2, 0, 1)[np.newaxis]
    mask = _session(model).run(["output"], {"input": x})[0][0, 0]
    mask = np.clip(mask, 0.0, 1.0)
    out = Image.fromarray(mask.astype(np.float32), "F").resize(size or rgb.size, Image.Resampling.BILINEAR)
    return np.asarray(out)


def alpha_of(png_bytes: bytes) -> npt.NDArray[np.float32]:
    image = Image.open(io.BytesIO(png_bytes))
    assert image.mode == "RGBA", image.mode
    return np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
