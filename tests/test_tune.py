"""`python -m tools.tune --sweep` without Triton: the config variant writer, the temporary model repository,
and the table and verdict built from perf_analyzer CSVs (fixtures in tests/data/tune/)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tools import tune_analyzer, tune_sweep
from tools.triton_launcher import TritonServer
from tools.tune_sweep import Point, Result, Variant, choose, config_variant, read_points, write_summary

ROOT = Path(__file__).resolve().parent.parent
ISNET = ROOT / "triton_models" / "isnet"
FIXTURES = ROOT / "tests" / "data" / "tune"


def parse(text: str) -> Any:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_variant_sets_instances_threads_and_keeps_the_rest() -> None:
    """Two instances, one thread each, f32: the knobs change and nothing else of the committed config does."""
    committed = parse((ISNET / "config.pbtxt").read_text())
    variant = parse(config_variant((ISNET / "config.pbtxt").read_text(), Variant("two", 2, 1, True, "f32")))
    assert [g.count for g in variant.instance_group] == [2]
    assert variant.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert variant.parameters["intra_op_threads"].string_value == "1"
    assert variant.parameters["precision"].string_value == "f32"
    assert variant.dynamic_batching == committed.dynamic_batching
    for field in ("instance_group", "parameters"):
        variant.ClearField(field)
        committed.ClearField(field)
    assert variant == committed
    assert parse(config_variant((ISNET / "config.pbtxt").read_text(), Variant("same", 1, 0, True)))\
        .parameters["precision"] == parse((ISNET / "config.pbtxt").read_text()).parameters["precision"]


def test_variant_switches_dynamic_batching_off_and_on() -> None:
    """Batching off removes the dynamic_batching block; on adds one to a config that had none."""
    off = config_variant((ISNET / "config.pbtxt").read_text(), Variant("off", 1, 0, False))
    assert not parse(off).HasField("dynamic_batching")
    assert "dynamic_batching" not in off
    on = parse(config_variant(off, Variant("on", 1, 0, True)))
    assert on.HasField("dynamic_batching")
    assert on.dynamic_batching.max_queue_delay_microseconds == 1000
    assert off.startswith("# Written by `python -m tools.tune --sweep`: variant off")


def test_variant_adds_an_instance_group_when_the_config_has_none() -> None:
    """A config relying on Triton's default instance group gets an explicit CPU group of the variant's size."""
    config = parse(config_variant('name: "m"\nbackend: "python"\n', Variant("c2", 2, 1, True)))
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]


def test_model_repository_links_files_and_holds_one_model(tmp_path: Path) -> None:
    """Only the swept model, its version files as links to the originals (weights not copied), the variant config."""
    text = config_variant((ISNET / "config.pbtxt").read_text(), Variant("c2-t1", 2, 1, True))
    model_dir = tune_sweep.write_model_repository(ISNET, tmp_path / "models", text)
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["isnet"]
    originals = sorted(p.name for p in (ISNET / "1").iterdir() if p.name != "__pycache__")
    linked = sorted((model_dir / "1").iterdir())
    assert [p.name for p in linked] == originals
    for link in linked:
        assert link.is_symlink()
        assert link.resolve() == (ISNET / "1" / link.name).resolve()
    assert [g.count for g in parse((model_dir / "config.pbtxt").read_text()).instance_group] == [2]


def fixture_results() -> list[Result]:
    return [
        Result(Variant("c1-t0-batch", 1, 0, True), read_points(FIXTURES / "c1-t0-batch.csv")),
        Result(Variant("c2-t1-batch", 2, 1, True), read_points(FIXTURES / "c2-t1-batch.csv")),
        Result(Variant("c1-t1-batch", 1, 1, True), (), "tritonserver exited with 1"),
    ]


def test_read_points_from_perf_analyzer_csv() -> None:
    """perf_analyzer's CSV (latencies in µs) becomes points sorted by concurrency, p50 in ms."""
    points = read_points(FIXTURES / "c1-t0-batch.csv")
    with (FIXTURES / "c1-t0-batch.csv").open() as stream:
        first = next(csv.DictReader(stream))
    assert [p.concurrency for p in points] == [1, 2, 3, 4]
    assert points[0] == Point(1, float(first["Inferences/Second"]), float(first["p50 latency"]) / 1000)


def test_table_and_verdict_from_fixtures(tmp_path: Path) -> None:
    """One line per variant (best infer/s, its concurrency, p50 at c=1), a failed variant says so, and the
    verdict names the fastest variant and the config.pbtxt edits; summary.csv has one row per measurement."""
    results = fixture_results()
    text = write_summary(results, "isnet", tmp_path)
    lines = text.splitlines()
    assert lines[0].split() == ["variant", "instances", "threads", "batching", "best", "infer/s", "at", "c",
                                "p50", "c=1", "ms"]
    assert lines[1].split() == ["c1-t0-batch", "1", "0", "on", "0.722", "1", "1390"]
    assert lines[2].split() == ["c2-t1-batch", "2", "1", "on", "0.905", "3", "2200"]
    assert lines[3].split()[:3] == ["c1-t1-batch", "failed:", "tritonserver"]
    assert ("best: c2-t1-batch (0.905 infer/s at concurrency 3). To adopt it, edit "
            "triton_models/isnet/config.pbtxt: instance_group count 2, intra_op_threads \"1\", "
            "dynamic_batching on.") in text
    assert (tmp_path / "summary.txt").read_text() == text
    with (tmp_path / "summary.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 8
    assert rows[4] == {"variant": "c2-t1-batch", "instances": "2", "intra_op_threads": "1", "dynamic_batching": "1",
                       "precision": "", "concurrency": "1", "infer_per_s": "0.4530", "p50_ms": "2200.0"}
    assert tune_sweep.table(results[2:]).splitlines()[1].startswith("c1-t1-batch")


def test_choose_prefers_lower_latency_within_tolerance() -> None:
    """Throughputs within 3% count as a tie, broken by the lower p50 at concurrency 1; beyond it the faster wins."""
    fast = Result(Variant("fast", 2, 1, True), (Point(1, 0.50, 2000.0), Point(2, 1.00, 2000.0)))
    near = Result(Variant("near", 1, 0, True), (Point(1, 0.98, 1020.0),))
    slow = Result(Variant("slow", 1, 0, False), (Point(1, 0.90, 1000.0),))
    assert choose([fast, near, slow]).variant.name == "near"
    assert choose([fast, slow]).variant.name == "fast"
    with pytest.raises(ValueError):
        choose([Result(Variant("none", 1, 0, True), (), "failed")])
    assert tune_sweep.verdict([Result(Variant("none", 1, 0, True), (), "failed")], "isnet").startswith("no variant")


def test_perf_analyzer_wrapper_puts_its_library_first(tmp_path: Path) -> None:
    """Model Analyzer runs perf_analyzer without our LD_LIBRARY_PATH: the wrapper adds the unpacked lib/ before
    whatever the caller had and passes every argument through."""
    binary = tmp_path / "bin" / "perf_analyzer"
    binary.parent.mkdir()
    binary.write_text('#!/bin/sh\necho "$LD_LIBRARY_PATH"\nprintf "%s\\n" "$@"\n')
    binary.chmod(0o755)
    wrapper = tune_analyzer.perf_analyzer_wrapper(binary, tmp_path / "wrapper")
    result = subprocess.run([str(wrapper), "-m", "isnet", "two words"], capture_output=True, text=True, check=True,
                            env={"PATH": os.environ["PATH"], "LD_LIBRARY_PATH": "/elsewhere"})
    assert result.stdout.splitlines() == [f"{tmp_path / 'lib'}:/elsewhere", "-m", "isnet", "two words"]


def test_analyzer_config_launches_the_bundled_triton_like_the_launcher(tmp_path: Path) -> None:
    """Local launch of the binary tools/triton_launcher.py runs, with its environment and backend directory, and
    a manual search over instance count x intra_op_threads (strings, as the config's parameters are)."""
    config = tune_analyzer.analyzer_config(tmp_path, "isnet", tmp_path / "wrapper", [1, 2], 4, [1, 2], [0, 1],
                                           {"stability_percentage": 50, "max_trials": 5})
    launcher = TritonServer(tmp_path / "models", tmp_path)
    assert config["triton_launch_mode"] == "local"
    assert config["triton_server_path"] == launcher.command()[0]
    assert config["triton_server_flags"] == {"backend-directory": str(tmp_path / "backends")}
    assert config["triton_server_environment"]["PATH"] == launcher.environment()["PATH"]
    assert config["triton_server_environment"]["LD_LIBRARY_PATH"] == launcher.environment()["LD_LIBRARY_PATH"]
    assert config["perf_analyzer_path"] == str(tmp_path / "wrapper")
    assert config["perf_analyzer_flags"]["measurement-request-count"] == 4
    assert config["profile_models"]["isnet"]["parameters"] == {"concurrency": [1, 2]}
    assert config["profile_models"]["isnet"]["model_config_parameters"] == {
        "instance_group": [{"kind": "KIND_CPU", "count": [1, 2]}],
        "parameters": {"intra_op_threads": {"string_value": ["0", "1"]}},
    }
    assert json.loads(json.dumps(config)) == config


def test_set_parameter_changes_one_parameter_only() -> None:
    """Model Analyzer's starting config with --precision: that parameter set, every other field as committed."""
    committed = parse((ISNET / "config.pbtxt").read_text())
    changed = parse(tune_sweep.set_parameter((ISNET / "config.pbtxt").read_text(), "precision", "f32"))
    assert changed.parameters["precision"].string_value == "f32"
    del changed.parameters["precision"]
    del committed.parameters["precision"]
    assert changed == committed
