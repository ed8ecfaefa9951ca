"""Test tiers: every test is marked by what it starts, so `make test-fast` can leave out the real model, whole
stacks, the browser, fuzzing and the generated clients (code generators and a TypeScript compiler), and a guard
fails any test that starts Triton on the real weights unmarked.

The markers are registered in pyproject.toml (`--strict-markers`). Most are added here from the fixtures a test
asks for, directly or through other fixtures, so a new test that uses `gw`, `stub` or `inference_url` is in the
right tier without a decorator; a module whose tests start such servers in a subprocess marks itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from tools.triton_launcher import TritonServer

# A fixture in a test's closure -> the marker the test gets. `triton` is the session's Triton on the project's
# model repository (ISNet): `inference_server`, `channel`, `stub`, `inference_url` and `gw` all sit on it.
FIXTURE_MARKERS: dict[str, str] = {
    "triton": "isnet",
    "browser": "browser",
    "fuzz_gateway": "fuzz",
    "client_generators": "clients",
}

_current: pytest.Item | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the fixtures in its closure, before `-m` deselects (tryfirst: pytest's own hook,
    which applies `-m`, runs after this one)."""
    for item in items:
        closure = set(getattr(item, "fixturenames", ()))
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in closure:
                item.add_marker(marker)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """Remember which test is running: session and module fixtures are set up inside the first test that asks
    for them, so the guard below can name it."""
    global _current
    _current = item
    try:
        return (yield)
    finally:
        _current = None


def serves_real_weights(repository: Path) -> bool:
    """Whether a model repository holds a model with ONNX weights (ISNet's; the test models have none)."""
    return any(weights.exists() for weights in repository.glob("*/1/model.onnx"))


def refuse_unmarked_real_model(repository: Path) -> None:
    """Fail the running test if it is about to start Triton on the real weights without the `isnet` marker:
    such a test would slow the fast tier down by minutes, silently."""
    if _current is None or not serves_real_weights(repository):
        return
    if _current.get_closest_marker("isnet") is None:
        pytest.fail(
            f"{_current.nodeid} starts Triton on the real model ({repository}) but is not marked isnet: ask for "
            "the `triton` fixture (marked automatically) or mark it with @pytest.mark.isnet",
            pytrace=False,
        )


def _guarded(start: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(start)
    def guarded_start(self: TritonServer, *args: Any, **kwargs: Any) -> None:
        refuse_unmarked_real_model(self.model_repository)
        start(self, *args, **kwargs)

    return guarded_start


def pytest_configure(config: pytest.Config) -> None:
    # Every in-process Triton start goes through TritonServer.start; tools.stack's children are in processes of
    # their own, so the modules that run tools.stack are marked `stack` and `isnet` themselves.
    patch = pytest.MonkeyPatch()
    patch.setattr(TritonServer, "start", _guarded(TritonServer.start))
    config.add_cleanup(patch.undo)
