"""The architecture's import arrows hold: import-linter's contracts ([tool.importlinter] in pyproject.toml) are
checked in every test run, as `make lint` checks them, and every module at the top of gateway/ is in a layer or
named by the contracts, so none escapes them."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _contract(contract_id: str) -> dict[str, Any]:
    return next(contract for contract in CONFIG["contracts"] if contract["id"] == contract_id)


def test_every_import_contract_is_kept() -> None:
    """lint-imports over the repository's packages (function-level imports included) reports each contract in
    pyproject.toml kept and none broken."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    if not lint_imports.exists():
        pytest.fail(f"{lint_imports} is missing: run `make setup` (requirements.lock has import-linter)")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(CONFIG['contracts'])} kept, 0 broken." in result.stdout


def test_every_gateway_module_is_under_a_contract() -> None:
    """A module or folder at the top of gateway/ is a layer, a shared module or an entry point; a new one must be
    placed in a layer folder or named in the contracts (otherwise its imports would go unchecked)."""
    layers = {
        name.strip() for layer in _contract("gateway-layers")["layers"] for name in layer.split("|")
    }
    shared = set(_contract("gateway-shared-modules")["source_modules"])
    entry_points = set(_contract("gateway-entry-points")["forbidden_modules"])
    gateway = ROOT / "gateway"
    top = {
        f"gateway.{path.stem}" for path in gateway.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()
    }
    assert top - layers - shared - entry_points == set()
