"""The architecture's import arrows, checked on the source (ast, nothing imported): callers reach the
inference service only through the contract package, the server never imports its callers, the client never
imports the server, and no shipped code imports the tests."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every folder of Python code in the repository (generated stubs in removai/ excluded).
PACKAGES = ("contract", "common", "inference_service", "gateway", "removai_cli", "examples", "bench", "tools", "tests")

# (importing package, imported package): arrows the architecture forbids, with the reason shown on failure.
FORBIDDEN: dict[tuple[str, str], str] = {
    ("gateway", "inference_service"): "callers use the contract package (contract/), not the server's modules",
    ("removai_cli", "inference_service"): "callers use the contract package (contract/), not the server's modules",
    ("examples", "inference_service"): "callers use the contract package (contract/), not the server's modules",
    ("bench", "inference_service"): "callers use the contract package (contract/), not the server's modules",
    ("inference_service", "gateway"): "the server knows nothing of its callers",
    ("inference_service", "removai_cli"): "the server knows nothing of its callers",
    ("inference_service", "bench"): "the server knows nothing of its callers (its own diagnostics: profile.py)",
    ("inference_service", "tools"): "the server does not depend on development tooling (tools/)",
    ("removai_cli", "gateway"): "the HTTP client does not ship the server (removai-admin is the gateway's)",
    ("contract", "inference_service"): "the contract is the caller's side: it imports only the stubs",
    ("contract", "gateway"): "the contract is the caller's side: it imports only the stubs",
    ("common", "inference_service"): "common code belongs to no part",
    ("common", "gateway"): "common code belongs to no part",
    ("common", "contract"): "common code belongs to no part",
    ("common", "bench"): "common code belongs to no part",
    ("common", "tools"): "common code belongs to no part",
}
# Only tests import tests.
NOT_TESTS = tuple(package for package in PACKAGES if package != "tests")


def python_files() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not path.relative_to(ROOT).as_posix().startswith("tests/models/"):
                yield path


def imported_modules(relative: str, source: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file at `relative` (a repository path), at any
    depth (function-level ones too); `from a import b` yields a and a.b (b may be a module)."""
    tree = ast.parse(source, filename=relative)
    package = relative.rpartition("/")[0].split("/")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's own package
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def violations_in(relative: str, source: str) -> list[str]:
    """One line per forbidden import in the file: path, line, module, the arrow and why it is forbidden."""
    importer = relative.split("/")[0]
    found: list[str] = []
    for line, module in imported_modules(relative, source):
        imported = module.split(".")[0]
        reason = FORBIDDEN.get((importer, imported))
        if reason is None and imported == "tests" and importer in NOT_TESTS:
            reason = "only tests import tests"
        if reason is not None:
            found.append(f"{relative}:{line}: imports {module} ({importer} -> {imported}: {reason})")
    return sorted(set(found))


def test_no_import_crosses_a_forbidden_arrow() -> None:
    """gateway/CLI/examples/bench -> inference_service, inference_service -> its callers, CLI -> gateway, and
    shipped code -> tests are all absent; each offence names the file, the line and the import."""
    found = [
        problem
        for path in python_files()
        for problem in violations_in(path.relative_to(ROOT).as_posix(), path.read_text())
    ]
    assert found == []


def test_each_forbidden_arrow_is_caught_with_its_file_and_import() -> None:
    """Plain, from-, relative and function-level imports across a forbidden arrow are each reported (a walker
    that saw nothing would pass the test above on any code); the bench has no exception, tests import anything."""
    assert violations_in("gateway/net/x.py", "def late():\n    from inference_service.server import create_server\n") == [
        ("gateway/net/x.py:2: imports inference_service.server (gateway -> inference_service: callers use the "
        "contract package (contract/), not the server's modules)"),
        ("gateway/net/x.py:2: imports inference_service.server.create_server (gateway -> inference_service: "
        "callers use the contract package (contract/), not the server's modules)"),
    ]
    assert violations_in("removai_cli/a.py", "from gateway import admin\n")[0].startswith(
        "removai_cli/a.py:1: imports gateway (removai_cli -> gateway:"
    )
    assert violations_in("inference_service/b.py", "import gateway.errors\n") != []
    assert violations_in("gateway/c.py", "from tests.reference import DATA\n") != []
    assert violations_in("bench/hostile.py", "from inference_service.server import create_server\n") != []
    assert violations_in("bench/throughput.py", "def late():\n    import inference_service.imaging\n") != []
    assert violations_in("inference_service/profile.py", "from bench.stack import make_images\n") != []
    assert violations_in("bench/stack.py", "from common.bench_images import make_images\n") == []
    assert violations_in("tests/e.py", "from inference_service.server import create_server\n") == []
