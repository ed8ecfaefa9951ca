"""Generates the Python gRPC stubs (with .pyi type stubs) for every .proto under protos/ into removai/."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

_LOGGER = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Runs protoc once over all protos; returns the .proto files compiled. Raises on a protoc error."""
    sources = sorted(PROTOS.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    # mypy-protobuf's plugins write typed .pyi stubs for the messages and for the gRPC stubs/servicers.
    plugins = Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(s) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    # Packages need __init__.py to be importable from an editable install.
    for source in sources:
        package_dir = out_dir / source.parent.relative_to(PROTOS)
        while package_dir != out_dir:
            (package_dir / "__init__.py").touch()
            package_dir = package_dir.parent
    return sources


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for source in generate():
        _LOGGER.info("generated stubs for %s", source.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
