"""Environments of their own for tools whose dependencies the service must not carry (NNCF for `make int8`,
rembg for the bench's comparison): a virtual environment under var/tools/, filled once from a hash-pinned
requirements file and filled again when that file changes (a stamp keeps its sha256). Standard library only:
the environments' own Pythons may import it too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools.fetch_weights import sha256_of

ROOT = Path(__file__).resolve().parent.parent


def _shown(path: Path) -> str:
    """path relative to the repository where it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def ensure_environment(venv: Path, requirements: Path, what: str) -> Path:
    """venv's python, the environment made and filled from `requirements` (hashes checked) unless the stamp
    says it already holds exactly that file; `what` names what is installed, for the one line printed."""
    python = venv / "bin" / "python"
    stamp = venv / "requirements.sha256"
    wanted = sha256_of(requirements)
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    print(f"installing {what} into {_shown(venv)} ({_shown(requirements)})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--require-hashes", "-r", str(requirements)],
                   check=True)
    stamp.write_text(wanted + "\n")
    return python
