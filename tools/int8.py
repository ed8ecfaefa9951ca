"""`make int8`: the model isnet_int8, made from the sha256-pinned isnet weights by NNCF post-training
quantization (OpenVINO's own tool), calibrated on images generated here from the repository's photos.

NNCF and its dependencies (scipy, scikit-learn, ...) serve only this step, so they get an environment of their
own, var/tools/int8/ (tools/int8-requirements.txt, hash-pinned at the main lock's versions of what both share,
OpenVINO included, so the file it writes is one the serving OpenVINO reads). The result is an OpenVINO IR
(model.xml + model.bin) in triton_models/isnet_int8/1/, beside the committed config.pbtxt; its sha256 is
compared with the one recorded below, made on this project's machines (statistics are collected by running
the network, so a CPU of another kind may round a few scales differently: a difference is reported, not fatal).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tools.fetch_weights import VARIANTS, sha256_of
from tools.tool_venv import ensure_environment

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "triton_models" / "isnet" / "1" / "model.onnx"
TARGET_DIR = ROOT / "triton_models" / "isnet_int8" / "1"
PHOTOS = ROOT / "tests" / "data"
REQUIREMENTS = Path(__file__).resolve().parent / "int8-requirements.txt"
VENV = ROOT / "var" / "tools" / "int8"
MODEL_SIDE = 1024
# The "mean"/"std" parameters of both models' config.pbtxt: (pixel - 128) / 256.
MEAN, STD = 128.0, 256.0

# sha256 of model.xml and model.bin as `make int8` wrote them on this project's machines, OpenVINO and NNCF at
# the pinned versions: one per kind of CPU, since the statistics come from running the network and the CPU's
# kernels round differently. The same machine makes the same files every time (two builds compared on the AMD
# EPYC); model.xml is the same on both kinds.
RECORDED_SHA256: dict[str, dict[str, str]] = {
    "model.xml": {
        "Intel Xeon with AMX": "d5882c8344abeb72f2f90fd06fe4410141f47c72722533f70c1517ecc0add443",
        "AMD EPYC with AVX-512 BF16, no AMX": "d5882c8344abeb72f2f90fd06fe4410141f47c72722533f70c1517ecc0add443",
    },
    "model.bin": {
        "Intel Xeon with AMX": "5498ad5243fadf360abad01c77b3d3c66384868b7ca66b0d7af07192c243de4b",
        "AMD EPYC with AVX-512 BF16, no AMX": "dcb3100e11ea241f4f446e2d816880ab47226f449bb512cff6fdaaa3152fba7c",
    },
}

# Each photo of tests/data is cut into these boxes (left, top, right, bottom as fractions of the photo), each
# used as it is and mirrored: 4 photos x 7 boxes x 2 = 56 calibration images, the same on every run.
BOXES = (
    (0.0, 0.0, 1.0, 1.0),
    (0.1, 0.1, 0.9, 0.9),
    (0.2, 0.2, 0.8, 0.8),
    (0.0, 0.0, 0.7, 0.7),
    (0.3, 0.0, 1.0, 0.7),
    (0.0, 0.3, 0.7, 1.0),
    (0.3, 0.3, 1.0, 1.0),
)


def calibration_inputs() -> Iterator[object]:
    """The calibration set as the model sees it: float32 [1, 3, 1024, 1024], normalised as config.pbtxt says."""
    import numpy as np
    from PIL import Image, ImageOps

    for photo in sorted(PHOTOS.glob("*.jpg")):
        with Image.open(photo) as opened:
            rgb = ImageOps.exif_transpose(opened).convert("RGB")
        for left, top, right, bottom in BOXES:
            box = (round(left * rgb.width), round(top * rgb.height), round(right * rgb.width), round(bottom * rgb.height))
            crop = rgb.crop(box).resize((MODEL_SIDE, MODEL_SIDE), Image.Resampling.BILINEAR)
            for image in (crop, ImageOps.mirror(crop)):
                pixels = np.asarray(image, dtype=np.float32)
                yield ((pixels - MEAN) / STD).transpose(2, 0, 1)[np.newaxis].copy()


def quantize(source: Path, target_dir: Path) -> None:
    """Runs inside var/tools/int8 (NNCF there): the network's mask output only, quantized, saved as IR."""
    import nncf
    import openvino as ov

    core = ov.Core()
    network = core.read_model(str(source))
    # The service reads the first output only; the eleven others would only be calibrated for nothing.
    mask_only = ov.Model([network.output(0)], network.get_parameters(), "isnet-int8")
    # Written and read back, so that NNCF sees a graph with nothing of the dropped outputs left in it (it failed
    # on a node of side output 6 otherwise).
    target_dir.mkdir(parents=True, exist_ok=True)
    pruned = target_dir / "mask-only.partial.xml"
    ov.save_model(mask_only, str(pruned), compress_to_fp16=False)
    mask_only = core.read_model(str(pruned))
    inputs = list(calibration_inputs())
    print(f"calibrating on {len(inputs)} images generated from {PHOTOS.relative_to(ROOT)}", flush=True)
    quantized = nncf.quantize(
        mask_only, nncf.Dataset(inputs), subset_size=len(inputs), preset=nncf.QuantizationPreset.MIXED,
    )
    partial = target_dir / "model.partial.xml"
    ov.save_model(quantized, str(partial), compress_to_fp16=False)
    os.replace(partial.with_suffix(".bin"), target_dir / "model.bin")
    os.replace(partial, target_dir / "model.xml")
    pruned.unlink()
    pruned.with_suffix(".bin").unlink()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.int8", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="quantize again even where the model is there")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)  # the step run in the int8 venv
    args = parser.parse_args(argv)
    if args.inside:
        quantize(SOURCE, TARGET_DIR)
        return 0
    if not SOURCE.exists() or sha256_of(SOURCE) != VARIANTS["medium"].sha256:
        print(f"{SOURCE.relative_to(ROOT)} is missing or not the pinned file: run `make weights` first", file=sys.stderr)
        return 1
    files = [TARGET_DIR / name for name in RECORDED_SHA256]
    if all(path.exists() for path in files) and not args.force:
        print(f"{TARGET_DIR.relative_to(ROOT)} already has the INT8 model (--force to make it again)")
    else:
        python = ensure_environment(VENV, REQUIREMENTS, "NNCF")
        started = time.monotonic()
        subprocess.run([str(python), "-m", "tools.int8", "--inside"], cwd=ROOT, check=True)
        print(f"quantized in {time.monotonic() - started:.0f} s", flush=True)
    for path in files:
        actual = sha256_of(path)
        recorded = RECORDED_SHA256[path.name]
        kinds = [kind for kind, digest in recorded.items() if digest == actual]
        verdict = (f"as recorded on: {', '.join(kinds)}" if kinds
                   else f"differs from every recorded one ({', '.join(f'{k}: {d}' for k, d in recorded.items())})")
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes, sha256 {actual} ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
