"""The gateway's layers: every import between its folders follows the arrows docs/development.md "Layout" draws."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"

# Modules at the top of gateway/ that every layer shares (the public error and body contract, settings,
# metrics, strict parsing of public inputs): they may import store and net, never a layer above.
SHARED = {"gateway.errors", "gateway.metrics", "gateway.settings", "gateway.schemas", "gateway.parsing"}
# Entry points: they may import anything, and nothing in the gateway imports them.
ENTRY_POINTS = {"gateway.__main__", "gateway.admin"}

# layer -> the layers its modules may import (besides the shared modules and their own layer).
ALLOWED = {
    "http": {"domain", "jobs", "store", "net"},
    "jobs": {"domain", "store", "net"},
    "domain": {"store", "net"},
    "store": set(),
    "net": set(),
    "shared": {"store", "net"},
    "entry": {"http", "domain", "jobs", "store", "net"},
}
# Handlers parse and answer: storage and tables are reached through the domain, never directly.
HANDLERS_FORBIDDEN = {"store"}


def layer_of(module: str) -> str | None:
    """The layer of a `gateway...` module name; None for a module outside the gateway."""
    if module in SHARED or module == "gateway":
        return "shared"
    if module in ENTRY_POINTS:
        return "entry"
    parts = module.split(".")
    if parts[0] != "gateway":
        return None
    if len(parts) >= 2 and parts[1] in ALLOWED and parts[1] not in {"shared", "entry"}:
        return parts[1]
    raise AssertionError(f"{module} is in no layer: put it in a layer folder or name it in SHARED")


def module_name(path: Path, root: Path) -> str:
    """gateway/http/app.py -> gateway.http.app; a package's __init__.py is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def gateway_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) for every import of a gateway module, `from gateway.x import y` naming gateway.x.y
    when y is itself a module of the real tree (`from gateway.domain import quota`)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "gateway"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            if node.module.split(".")[0] != "gateway":
                continue
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (GATEWAY.parent / candidate.replace(".", "/")).with_suffix(".py").exists() or (
                    GATEWAY.parent / candidate.replace(".", "/") / "__init__.py"
                ).exists()
                found.append((node.lineno, candidate if is_module else node.module))
    return found


def violations(root: Path = GATEWAY) -> list[str]:
    """One line per forbidden arrow: the file, the line, the import and the rule it breaks."""
    problems: list[str] = []
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path, root)
        if ".migrations." in f".{importer}.":
            continue  # Alembic's scripts, loaded by path; env.py reads the tables, as the store may
        source_layer = layer_of(importer)
        assert source_layer is not None
        is_handler = importer.startswith("gateway.http.handlers")
        for line, imported in gateway_imports(ast.parse(path.read_text(), filename=str(path))):
            target_layer = layer_of(imported)
            where = f"{path.relative_to(root.parent)}:{line} imports {imported}"
            if imported in ENTRY_POINTS:
                problems.append(f"{where}: nothing in the gateway imports an entry point")
            elif target_layer in (source_layer, "shared") and not (is_handler and target_layer == "store"):
                continue
            elif is_handler and target_layer in HANDLERS_FORBIDDEN:
                problems.append(f"{where}: handlers reach the store through the domain")
            elif target_layer not in ALLOWED[source_layer]:
                problems.append(f"{where}: {source_layer} may not import {target_layer}")
    return problems


def test_gateway_imports_follow_the_layers() -> None:
    """No gateway module imports a layer above its own (e.g. store/net/domain/jobs -> http, domain -> jobs)."""
    assert violations() == []


@pytest.mark.parametrize(
    ("folder", "source", "message"),
    [
        ("domain", "from gateway.http.appkeys import SESSIONS\n", "domain may not import http"),
        ("store", "from gateway.domain import quota\n", "store may not import domain"),
        ("net", "import gateway.jobs.webhook_outbox\n", "net may not import jobs"),
        ("domain", "from gateway.jobs import webhook_outbox\n", "domain may not import jobs"),
        ("http/handlers", "from gateway.store.tables import Account\n", "handlers reach the store through"),
        ("jobs", "from gateway import admin\n", "nothing in the gateway imports an entry point"),
    ],
)
def test_a_forbidden_arrow_is_named(tmp_path: Path, folder: str, source: str, message: str) -> None:
    """The check fails on each kind of forbidden import, naming the file, the line and the import."""
    fake_root = tmp_path / "gateway"
    (fake_root / folder).mkdir(parents=True)
    offender = fake_root / folder / "offender.py"
    offender.write_text('"""An offending module."""\n' + source)
    found = violations(fake_root)
    assert len(found) == 1, found
    assert found[0].startswith(f"gateway/{folder}/offender.py:2 imports ")
    assert message in found[0]
