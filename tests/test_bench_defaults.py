"""bench.throughput's copies of the inference service's defaults (it may not import the service) still equal
the service's own, and it reads REMOVAI_INFERENCE_* overrides as the service does."""

from __future__ import annotations

import pytest

from bench import throughput
from inference_service.settings import InferenceSettings


def test_the_bench_copies_equal_the_service_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """max_pixels and png_compress_level: the bench's constants are the settings' defaults (no variable set)."""
    monkeypatch.delenv("REMOVAI_INFERENCE_MAX_PIXELS", raising=False)
    monkeypatch.delenv("REMOVAI_INFERENCE_PNG_COMPRESS_LEVEL", raising=False)
    defaults = InferenceSettings()
    assert throughput.service_setting("max_pixels", throughput.SERVICE_MAX_PIXELS) == defaults.max_pixels
    assert (
        throughput.service_setting("png_compress_level", throughput.SERVICE_PNG_COMPRESS_LEVEL)
        == defaults.png_compress_level
    )


def test_the_bench_reads_an_override_as_the_service_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """REMOVAI_INFERENCE_PNG_COMPRESS_LEVEL=7 is 7 for both."""
    monkeypatch.setenv("REMOVAI_INFERENCE_PNG_COMPRESS_LEVEL", "7")
    assert throughput.service_setting("png_compress_level", throughput.SERVICE_PNG_COMPRESS_LEVEL) == 7
    assert InferenceSettings().png_compress_level == 7
