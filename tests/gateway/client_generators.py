"""The OpenAPI client generators the generated-client tests run: openapi-python-client from the venv, and the npm
packages pinned in tests/clients/package-lock.json (@hey-api/openapi-ts, openapi-typescript, openapi-fetch,
typescript), installed with `npm ci` into tests/clients/node_modules (git-ignored) once per lock: a rerun with the
same lock reuses it."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CLIENTS = Path(__file__).resolve().parent.parent / "clients"
NODE_MODULES = CLIENTS / "node_modules"
# Written after a complete install: the sha256 of the lock it installed.
_STAMP = NODE_MODULES / ".removai-lock-sha256"


@dataclass(frozen=True)
class ClientGenerators:
    """Where the programs and the installed packages are."""

    sources: Path
    node_modules: Path

    def bin(self, name: str) -> str:
        return str(self.node_modules / ".bin" / name)


def install() -> ClientGenerators:
    """`npm ci` unless node_modules already holds this lock's packages; one installer at a time (xdist workers
    share the folder), so a worker never sees a half-written node_modules."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is missing: apt-get install -y npm (make setup does)")
    wanted = hashlib.sha256((CLIENTS / "package-lock.json").read_bytes()).hexdigest()
    with open(CLIENTS / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (_STAMP.exists() and _STAMP.read_text() == wanted):
            done = subprocess.run(
                [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=CLIENTS, capture_output=True, text=True, timeout=600, check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"npm ci failed in {CLIENTS}:\n{done.stdout}{done.stderr}")
            _STAMP.write_text(wanted)
    return ClientGenerators(CLIENTS, NODE_MODULES)
