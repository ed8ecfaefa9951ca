"""The test tiers hold: every test that reaches ISNet is marked `isnet`, so `make test-fast` (`-m "not isnet ..."`)
never starts it, and an unmarked test that tries is stopped before Triton starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.held_model import HeldModel
from tests.tiers import serves_real_weights
from tools.triton_launcher import TritonServer


def test_every_test_on_the_isnet_triton_is_marked_isnet(request: pytest.FixtureRequest) -> None:
    """Of the tests this run selected, each whose fixtures lead to the session's ISNet Triton (`triton`, through
    `inference_server`, `stub`, `inference_url`, `gw`...) carries `isnet`; so a run with `-m "not isnet"` selects
    none of them and never sets the fixture up."""
    selected = request.session.items
    assert request.node in selected
    unmarked = [
        item.nodeid for item in selected
        if "triton" in getattr(item, "fixturenames", ()) and item.get_closest_marker("isnet") is None
    ]
    assert unmarked == []
    if "not isnet" in (request.config.getoption("markexpr") or ""):
        assert [item.nodeid for item in selected if item.get_closest_marker("isnet") is not None] == []


def test_only_a_repository_with_onnx_weights_counts_as_the_real_model(tmp_path: Path) -> None:
    """The guard tells the real model (a model with ONNX weights) from the `held` test model (Python only)."""
    held = HeldModel.create(tmp_path / "held")
    assert not serves_real_weights(held.repository)
    weights = tmp_path / "real" / "isnet" / "1" / "model.onnx"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert serves_real_weights(tmp_path / "real")


def test_an_unmarked_test_cannot_start_triton_on_the_real_weights(tmp_path: Path) -> None:
    """TritonServer.start on a repository with ONNX weights, from a test without `isnet`, fails that test naming
    it and the marker, before any process starts."""
    weights = tmp_path / "models" / "isnet" / "1" / "model.onnx"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    server = TritonServer(tmp_path / "models", tmp_path / "triton")
    with pytest.raises(pytest.fail.Exception) as caught:
        server.start(timeout=5)
    message = str(caught.value)
    assert "test_an_unmarked_test_cannot_start_triton_on_the_real_weights" in message
    assert "is not marked isnet" in message
    assert server.pid is None
