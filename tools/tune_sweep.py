"""`python -m tools.tune --sweep`: perf_analyzer over config variants of one model (instances, threads,
batching), each in a temporary model repository with its own Triton, summed up in one table under var/tune/.

The sweep only reports: the operator reads the table and edits triton_models/<model>/config.pbtxt by hand
(each variant's config.pbtxt is kept in the report folder to diff against it).
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tools.triton_launcher import TritonLaunchError, TritonServer

# measure(grpc_url, report_dir) -> perf_analyzer's CSV for the Triton at grpc_url.
Measure = Callable[[str, Path], Path]


@dataclass(frozen=True)
class Variant:
    """One config to measure: the knobs that split the cores between Triton instances and the runtime."""

    name: str
    instances: int
    intra_op_threads: int
    dynamic_batching: bool
    # OpenVINO's precision parameter; None keeps the config's.
    precision: str | None = None


# The committed config first (one instance using every core, dynamic batching), then the same without
# batching, then the splits of the cores between instances and runtime threads.
VARIANTS = (
    Variant("c1-t0-batch", instances=1, intra_op_threads=0, dynamic_batching=True),
    Variant("c1-t0-nobatch", instances=1, intra_op_threads=0, dynamic_batching=False),
    Variant("c2-t1-batch", instances=2, intra_op_threads=1, dynamic_batching=True),
    Variant("c1-t1-batch", instances=1, intra_op_threads=1, dynamic_batching=True),
    Variant("c2-t0-batch", instances=2, intra_op_threads=0, dynamic_batching=True),
)


@dataclass(frozen=True)
class Point:
    """One perf_analyzer measurement: throughput and median latency at one request concurrency."""

    concurrency: int
    infer_per_s: float
    p50_ms: float


@dataclass(frozen=True)
class Result:
    """A variant's measurements, or why it has none (Triton or perf_analyzer failed on it)."""

    variant: Variant
    points: tuple[Point, ...]
    error: str | None = None

    @property
    def best(self) -> Point:
        """The concurrency with the highest throughput (the lower concurrency on a tie)."""
        return max(self.points, key=lambda p: (p.infer_per_s, -p.concurrency))

    def p50_at(self, concurrency: int) -> float | None:
        return next((p.p50_ms for p in self.points if p.concurrency == concurrency), None)


def config_variant(config_text: str, variant: Variant) -> str:
    """config.pbtxt text with the variant's instance count, intra_op_threads, batching and precision set.

    Parsed and written with protobuf's text format and Triton's ModelConfig message (tritonclient ships it),
    so the knobs are set on the message rather than matched in text; comments are not kept.
    """
    config: Any = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    if not config.instance_group:
        config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
    for group in config.instance_group:
        group.count = variant.instances
    config.parameters["intra_op_threads"].string_value = str(variant.intra_op_threads)
    if variant.precision is not None:
        config.parameters["precision"].string_value = variant.precision
    if variant.dynamic_batching:
        if not config.HasField("dynamic_batching"):
            config.dynamic_batching.max_queue_delay_microseconds = 1000
    else:
        config.ClearField("dynamic_batching")
    header = f"# Written by `python -m tools.tune --sweep`: variant {variant.name}, from the committed config.\n"
    return header + str(text_format.MessageToString(config))


def set_parameter(config_text: str, key: str, value: str) -> str:
    """config.pbtxt text with one string parameter set (comments are not kept)."""
    config: Any = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    config.parameters[key].string_value = value
    return str(text_format.MessageToString(config))


def write_model_repository(source_model: Path, target_repository: Path, config_text: str) -> Path:
    """A model repository holding only source_model, with config_text as its config and its files linked.

    The version folders' files (model.py, weights) are symbolic links to the originals: nothing large is
    copied, and the model loads exactly the code and weights it would load from the project's repository.
    """
    model_dir = target_repository / source_model.name
    model_dir.mkdir(parents=True)
    for version in sorted(p for p in source_model.iterdir() if p.is_dir() and p.name.isdigit()):
        (model_dir / version.name).mkdir()
        for file in version.iterdir():
            if file.name != "__pycache__":
                (model_dir / version.name / file.name).symlink_to(file.resolve())
    (model_dir / "config.pbtxt").write_text(config_text)
    return model_dir


def read_points(csv_path: Path) -> tuple[Point, ...]:
    """The concurrency, throughput and p50 latency rows of a perf_analyzer CSV (latencies there in µs)."""
    with csv_path.open() as stream:
        rows = list(csv.DictReader(stream))
    points = (Point(int(row["Concurrency"]), float(row["Inferences/Second"]), float(row["p50 latency"]) / 1000)
              for row in rows)
    return tuple(sorted(points, key=lambda p: p.concurrency))


def choose(results: Sequence[Result], tolerance: float = 0.03) -> Result:
    """The variant with the highest throughput; within `tolerance` of it, the lowest p50 at concurrency 1.

    The tolerance keeps measurement noise from picking a config that is no faster but slower per request.
    """
    measured = [r for r in results if r.points]
    if not measured:
        raise ValueError("no variant was measured")
    top = max(r.best.infer_per_s for r in measured)
    close = [r for r in measured if r.best.infer_per_s >= top * (1 - tolerance)]
    return min(close, key=lambda r: (r.p50_at(1) if r.p50_at(1) is not None else float("inf"),
                                     -r.best.infer_per_s))


def table(results: Sequence[Result]) -> str:
    """One line per variant: its knobs, best throughput, the concurrency giving it, p50 at concurrency 1."""
    lines = [(f"{'variant':<16}{'instances':>10}{'threads':>8}{'batching':>9}{'best infer/s':>13}{'at c':>6}"
              f"{'p50 c=1 ms':>11}")]
    for result in results:
        v = result.variant
        if not result.points:
            lines.append(f"{v.name:<16}  failed: {(result.error or 'no measurements').splitlines()[0][:80]}")
            continue
        best, p50 = result.best, result.p50_at(1)
        lines.append(f"{v.name:<16}{v.instances:>10}{v.intra_op_threads:>8}{'on' if v.dynamic_batching else 'off':>9}"
                     f"{best.infer_per_s:13.3f}{best.concurrency:>6}{'-' if p50 is None else f'{p50:.0f}':>11}")
    return "\n".join(lines)


def verdict(results: Sequence[Result], model: str) -> str:
    """Which variant is best and what to edit in config.pbtxt to adopt it (the sweep never edits it)."""
    if not any(r.points for r in results):
        return "no variant was measured: see each variant's folder (tritonserver.log, perf_analyzer output)"
    best = choose(results)
    v = best.variant
    precision = "" if v.precision is None else f', precision "{v.precision}"'
    return (f"best: {v.name} ({best.best.infer_per_s:.3f} infer/s at concurrency {best.best.concurrency}). "
            f"To adopt it, edit triton_models/{model}/config.pbtxt: instance_group count {v.instances}, "
            f"intra_op_threads \"{v.intra_op_threads}\", dynamic_batching {'on' if v.dynamic_batching else 'off'}"
            f"{precision}.")


def write_summary(results: Sequence[Result], model: str, out_dir: Path) -> str:
    """summary.csv (one row per variant and concurrency) and summary.txt (the table and verdict); the text."""
    with (out_dir / "summary.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["variant", "instances", "intra_op_threads", "dynamic_batching", "precision",
                         "concurrency", "infer_per_s", "p50_ms"])
        for result in results:
            v = result.variant
            for p in result.points:
                writer.writerow([v.name, v.instances, v.intra_op_threads, int(v.dynamic_batching),
                                 v.precision or "", p.concurrency, f"{p.infer_per_s:.4f}", f"{p.p50_ms:.1f}"])
    text = f"{table(results)}\n\n{verdict(results, model)}\n"
    (out_dir / "summary.txt").write_text(text)
    return text


def sweep(model_repository: Path, model: str, variants: Sequence[Variant], measure: Measure,
          out_root: Path, errors: tuple[type[Exception], ...] = ()) -> str:
    """Each variant in its own repository and Triton, measured by measure(url, variant_dir) -> CSV path.

    A variant whose Triton does not start, or whose measurement raises one of `errors`, is reported as failed
    and the sweep goes on (a long sweep is not lost to one bad variant). Returns the summary text; the report
    folder is out_root/sweep-<UTC time>/, with Triton's log in each variant's folder.
    """
    out_dir = out_root / f"sweep-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    out_dir.mkdir(parents=True)
    results = []
    caught: tuple[type[Exception], ...] = (TritonLaunchError, *errors)
    for variant in variants:
        variant_dir = out_dir / variant.name
        with tempfile.TemporaryDirectory(prefix="removai-tune-sweep-") as workdir:
            repository = Path(workdir) / "models"
            text = config_variant((model_repository / model / "config.pbtxt").read_text(), variant)
            model_dir = write_model_repository(model_repository / model, repository, text)
            variant_dir.mkdir()
            (variant_dir / "config.pbtxt").write_text((model_dir / "config.pbtxt").read_text())
            print(f"\n== {variant.name}: starting Triton on {repository}", flush=True)
            try:
                with TritonServer(repository, variant_dir / "triton") as triton:
                    csv_path = measure(triton.grpc_url, variant_dir)
                results.append(Result(variant, read_points(csv_path)))
            except caught as exc:
                print(f"{variant.name} failed: {exc}", flush=True)
                results.append(Result(variant, (), str(exc)))
        print(table(results[-1:]), flush=True)
    text = write_summary(results, model, out_dir)
    return f"{text}\nreport: {out_dir}{os.sep} (summary.csv, summary.txt, one folder per variant)"
