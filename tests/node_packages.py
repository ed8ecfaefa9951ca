"""The npm packages of tests/grpc_node (the Node.js gRPC client test's @grpc/grpc-js and @grpc/proto-loader, and
buf), installed at the exact versions of its package-lock.json the first time a test needs them."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGES = Path(__file__).resolve().parent / "grpc_node"
BUF = PACKAGES / "node_modules" / ".bin" / "buf"
NPM_TIMEOUT_S = 600


def install_node_packages() -> None:
    """`npm ci` in tests/grpc_node (the exact versions of its package-lock.json) unless node_modules already
    matches the lock; under a file lock, since test workers start together."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed (make setup installs npm with Debian's nodejs)")
    with (PACKAGES / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = PACKAGES / "node_modules" / ".package-lock.json"
        if installed.exists() and installed.stat().st_mtime >= (PACKAGES / "package-lock.json").stat().st_mtime:
            return
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PACKAGES, check=True,
            timeout=NPM_TIMEOUT_S,
        )
