"""Each part validates its settings (flags or REMOVAI_* environment variables) at start, with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _start(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize(
    ("module", "args", "env", "field"),
    [
        ("gateway", ["--port", "99999"], {}, "port"),
        ("gateway", [], {"REMOVAI_GATEWAY_INFERENCE_URL": "no-port-here"}, "inference_url"),
        ("gateway", ["--max-batch-images", "0"], {}, "max_batch_images"),
        ("inference_service", ["--pipeline-workers", "0"], {}, "pipeline_workers"),
        ("inference_service", [], {"REMOVAI_INFERENCE_PNG_COMPRESS_LEVEL": "12"}, "png_compress_level"),
        ("inference_service", ["--log-level", "LOUD"], {}, "log_level"),
    ],
)
def test_invalid_settings_stop_the_part_with_exit_2(
    module: str, args: list[str], env: dict[str, str], field: str
) -> None:
    """An invalid value exits with status 2 and names the setting, before anything is bound or started."""
    result = _start(module, *args, env=env)
    assert result.returncode == 2, result.stderr
    assert field in result.stderr


def test_help_lists_every_setting() -> None:
    """--help documents the settings the docs point to (ports, Triton URL, data dir, database, Redis)."""
    gateway_help = _start("gateway", "--help").stdout
    for flag in ("--port", "--metrics-port", "--inference-url", "--data-dir", "--database-url", "--redis-url",
                 "--log-level"):
        assert flag in gateway_help
    inference_help = _start("inference_service", "--help").stdout
    for flag in ("--port", "--triton-url", "--max-pixels", "--metrics-port", "--log-json"):
        assert flag in inference_help
