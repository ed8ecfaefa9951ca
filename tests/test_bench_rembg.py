"""bench/rembg.py's pure parts (and bench.stack's side of them): how rembg's server is started and asked (our
weights, nothing downloaded), the p95, the alpha comparison, the ratio lines with their verdicts, and which of
our figures stand beside rembg's. No server runs and nothing is timed."""

from __future__ import annotations

import io
import json
import urllib.parse
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from bench import rembg, stack

WEIGHTS = Path("/repo/triton_models/isnet/1/model.onnx")


def _run(server: str, size: str, concurrency: int, images_per_s: float, latencies_ms: list[float]) -> rembg.Measured:
    requests = len(latencies_ms)
    return rembg.Measured(server, size, concurrency, requests, requests / images_per_s, latencies_ms, 2.0 * requests,
                          900.0, 0.1)


def test_the_server_runs_as_users_start_it_on_loopback() -> None:
    command = rembg.server_command(Path("/venv"), 7123)
    assert command[:2] == ["/venv/bin/rembg", "s"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "7123"


def test_rembg_is_pointed_at_our_weights_and_opens_no_browser() -> None:
    """REMBG_HOME is the weights' folder (rembg refuses a model_path outside its home); U2NET_HOME, which would
    win over it, is gone; the rest of the environment passes through."""
    env = rembg.server_env({"U2NET_HOME": "/elsewhere", "PATH": "/bin"}, WEIGHTS)
    assert env == {"PATH": "/bin", "REMBG_HOME": str(WEIGHTS.parent), "BROWSER": "true"}


def test_each_request_names_the_weights_file_as_model_path() -> None:
    url = rembg.remove_url("http://127.0.0.1:7123", WEIGHTS)
    assert url.startswith("http://127.0.0.1:7123/api/remove?")
    extras = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["extras"]
    assert [json.loads(value) for value in extras] == [{"model_path": str(WEIGHTS)}]
    assert rembg.SESSION == "dis_custom"
    assert rembg.WEIGHTS.parts[-4:] == ("triton_models", "isnet", "1", "model.onnx")


def test_p95_interpolates_like_numpy() -> None:
    values = [float(v) for v in (5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 12, 11)]
    assert rembg.p95(values) == pytest.approx(float(np.percentile(values, 95)))
    assert rembg.p95([42.0]) == 42.0


def _png(alpha: npt.NDArray[np.uint8]) -> bytes:
    rgba = np.zeros((*alpha.shape, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


def test_alpha_difference_is_the_mean_and_the_share_far_apart() -> None:
    ours = np.zeros((10, 10), dtype=np.uint8)
    theirs = ours.copy()
    theirs[0, :] = 255  # 10 pixels of 100 fully apart
    theirs[1, :] = 10  # 10 a little
    mean, share = rembg.alpha_difference(_png(ours), _png(theirs))
    assert mean == pytest.approx((10 * 255 + 10 * 10) / 100)
    assert share == pytest.approx(0.10)
    with pytest.raises(ValueError, match="differ in size"):
        rembg.alpha_difference(_png(ours), _png(np.zeros((5, 10), dtype=np.uint8)))


def test_verdicts_at_and_beyond_the_targets() -> None:
    theirs = _run("rembg", "2MP", 4, 0.2, [10_000.0] * 4)
    exactly = _run("isnet", "2MP", 4, 1.0, [3_000.0] * 4)
    throughput_x, p95_x, cpu_x, line = rembg.verdicts(exactly, theirs)
    assert (throughput_x, p95_x, cpu_x) == pytest.approx((5.0, 0.3, 1.0))
    assert line == ("2MP c=4, isnet: images/s 5.00x rembg's, target >= 5x: met; "
                    "p95 0.30x rembg's, target <= 0.3x: met (CPU s/image 1.00x rembg's)")
    short = _run("isnet_int8", "2MP", 4, 0.5, [4_000.0] * 4)
    short.cpu_s = 0.5 * short.requests
    assert rembg.verdicts(short, theirs)[3] == ("2MP c=4, isnet_int8: images/s 2.50x rembg's, target >= 5x: NOT met; "
                                                "p95 0.40x rembg's, target <= 0.3x: NOT met (CPU s/image 0.25x rembg's)")


def _figures() -> rembg.RembgFigures:
    runs = [_run("rembg", size, c, 0.1, [20_000.0, 30_000.0]) for size in ("2MP", "12MP") for c in (1, 4)]
    return rembg.RembgFigures({"rembg": "2.0.86", "onnxruntime": "1.32.0"}, runs, ("2MP", b""))


def test_report_gives_each_target_phase_a_ratio_and_says_when_int8_is_not_built(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ours = [_run("isnet", size, c, 0.6, [5_000.0, 6_000.0]) for size in ("2MP", "12MP") for c in (1, 4)]
    figures = rembg.report(_figures(), ours, None, (1.5, 0.002))
    out = capsys.readouterr().out
    assert [(r["server"], r["size"], r["concurrency"]) for r in figures["ratios"]] == [
        ("isnet", "2MP", 4), ("isnet", "12MP", 4)]
    assert all(r["throughput_met"] and r["p95_met"] for r in figures["ratios"])  # 6x; 5,950 / 29,500 ms
    assert "2MP c=4, isnet: images/s 6.00x rembg's, target >= 5x: met" in out
    assert "isnet_int8 is not built" in out and "`make int8`" in out
    assert "mean |difference| 1.50 of 255" in out
    assert figures["int8"] is None and len(figures["runs"]) == 4


def test_report_puts_int8_beside_isnet(capsys: pytest.CaptureFixture[str]) -> None:
    ours = [_run("isnet", "12MP", 4, 0.6, [5_000.0])]
    int8 = [_run("isnet_int8", "12MP", 4, 0.9, [4_000.0])]
    figures = rembg.report(_figures(), ours, int8, None)
    out = capsys.readouterr().out
    assert [r["server"] for r in figures["ratios"]] == ["isnet", "isnet_int8"]
    assert "12MP c=4, isnet_int8: images/s 9.00x rembg's" in out
    assert "not built" not in out


def test_the_stack_bench_runs_rembg_by_default_with_its_request_count() -> None:
    assert stack._parse_args(["--requests", "3"]).rembg_requests == 3
    assert stack._parse_args(["--requests", "3", "--rembg-requests", "0"]).rembg_requests == 0


def test_our_figures_leave_out_the_stubs_of_models_the_phase_did_not_use() -> None:
    phase = stack.Phase("2MP", 4, 4, 8.0, [1.0] * 4, 4.0, {}, 2500.0, 0.0,
                        peak_rss_by_role_mb={"triton stub isnet": 1200.0, "triton stub isnet_int8": 700.0,
                                             "inference": 600.0},
                        model="isnet_int8")
    assert stack._measured(phase).peak_rss_mb == 1300.0
    assert stack._measured(phase).server == "isnet_int8"
