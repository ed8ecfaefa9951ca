"""`make tune-analyzer`: NVIDIA's Model Analyzer sweeps instance count and intra_op_threads of one model, in
its local launch mode with the pytriton-bundled tritonserver; reports (CSV, HTML, plots) under var/tune/.

Model Analyzer gets its own environment, var/tools/model-analyzer/ (tools/analyzer-requirements.txt), and the
perf_analyzer binary tools/tune.py unpacks. Two things it cannot do alone here: it runs perf_analyzer without
our LD_LIBRARY_PATH (so a small wrapper script sets it), and it launches tritonserver with only the flags and
environment its config names (so the config carries the backend directory, the bundled libraries and this
environment's bin/ for the Python backend stub, as tools/triton_launcher.py arranges them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools import tune, tune_sweep
from tools.triton_launcher import TritonServer, free_port, prepare_backend_directory

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = Path(__file__).resolve().parent / "analyzer-requirements.txt"
VENV = ROOT / "var" / "tools" / "model-analyzer"


def ensure_model_analyzer(venv: Path = VENV) -> Path:
    """The model-analyzer command, installed once into its own virtual environment."""
    command = venv / "bin" / "model-analyzer"
    if command.exists():
        return command
    print(f"installing Model Analyzer into {venv} (tools/analyzer-requirements.txt)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "-r",
                    str(REQUIREMENTS)], check=True)
    return command


def perf_analyzer_wrapper(binary: Path, target: Path) -> Path:
    """A script that runs perf_analyzer with its libcudart.so.12 found: Model Analyzer drops LD_LIBRARY_PATH."""
    lib = binary.parent.parent / "lib"
    target.write_text(f'#!/bin/sh\nLD_LIBRARY_PATH="{lib}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" '
                      f'exec "{binary}" "$@"\n')
    target.chmod(0o755)
    return target


def analyzer_config(run_dir: Path, model: str, perf_analyzer: Path, concurrency: Sequence[int], requests: int,
                    instances: Sequence[int], threads: Sequence[int], window: dict[str, int]) -> dict[str, Any]:
    """Model Analyzer's profile config: a manual brute search over instance count x intra_op_threads."""
    # The binary and the environment tools/triton_launcher.py starts it with (bundled libraries, this venv first
    # on PATH for the Python backend stub); the backend directory is laid out in run_dir/backends.
    triton = TritonServer(run_dir / "models", run_dir)
    environment = triton.environment()
    return {
        "model_repository": str(run_dir / "models"),
        "output_model_repository_path": str(run_dir / "output_models"),
        "override_output_model_repository": True,
        "export_path": str(run_dir / "results"),
        "checkpoint_directory": str(run_dir / "checkpoints"),
        "triton_launch_mode": "local",
        "triton_server_path": triton.command()[0],
        "triton_server_flags": {"backend-directory": str(run_dir / "backends")},
        "triton_server_environment": {key: environment[key] for key in ("LD_LIBRARY_PATH", "PATH")},
        "triton_http_endpoint": f"127.0.0.1:{free_port()}",
        "triton_grpc_endpoint": f"127.0.0.1:{free_port()}",
        "triton_metrics_url": f"http://127.0.0.1:{free_port()}/metrics",
        "perf_analyzer_path": str(perf_analyzer),
        "client_protocol": "grpc",
        # Triton's CPU use and memory per config: the model runs on the CPU (off by default, it warns otherwise).
        "collect_cpu_metrics": True,
        "run_config_search_disable": True,
        # Windows of a request count, as tools/tune.py: one CPU inference takes seconds.
        "perf_analyzer_flags": {"measurement-mode": "count_windows", "measurement-request-count": requests,
                                "stability-percentage": window["stability_percentage"],
                                "max-trials": window["max_trials"],
                                # isnet is decoupled: gRPC streaming only (tools/tune.py passes the same).
                                "streaming": True},
        "profile_models": {model: {
            "cpu_only": True,
            "parameters": {"concurrency": list(concurrency)},
            "model_config_parameters": {
                "instance_group": [{"kind": "KIND_CPU", "count": list(instances)}],
                "parameters": {"intra_op_threads": {"string_value": [str(t) for t in threads]}},
            },
        }},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.tune_analyzer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="isnet")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "triton_models")
    parser.add_argument("--concurrency", default="1,2,3,4", help="comma-separated request concurrencies")
    parser.add_argument("--instances", default="1,2", help="comma-separated instance_group counts")
    parser.add_argument("--threads", default="0,1", help="comma-separated intra_op_threads values")
    parser.add_argument("--requests", type=int, default=8, help="requests per measurement window (default 8)")
    parser.add_argument("--stability-percentage", type=int, default=50)
    parser.add_argument("--max-trials", type=int, default=5)
    parser.add_argument("--precision", help="OpenVINO's precision parameter in every config (default: the config's)")
    parser.add_argument("--out", type=Path, default=tune.REPORT_DIR, help="report folder (default var/tune)")
    args = parser.parse_args(argv)
    run_dir = (args.out / f"analyzer-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}").resolve()
    run_dir.mkdir(parents=True)
    try:
        tune.ensure_libb64()
        wrapper = perf_analyzer_wrapper(tune.ensure_perf_analyzer(), run_dir / "perf_analyzer")
        analyzer = ensure_model_analyzer()
    except (tune.TuneError, subprocess.CalledProcessError) as exc:
        print(f"tools.tune_analyzer: {exc}", file=sys.stderr)
        return 1
    # The committed config (with the precision asked for) is Model Analyzer's "<model>_config_default".
    source = (args.model_repository / args.model).resolve()
    committed = (source / "config.pbtxt").read_text()
    text = committed if args.precision is None else tune_sweep.set_parameter(committed, "precision", args.precision)
    tune_sweep.write_model_repository(source, run_dir / "models", text)
    prepare_backend_directory(run_dir / "backends")
    config = analyzer_config(run_dir, args.model, wrapper, [int(c) for c in args.concurrency.split(",")],
                             args.requests, [int(i) for i in args.instances.split(",")],
                             [int(t) for t in args.threads.split(",")],
                             {"stability_percentage": args.stability_percentage, "max_trials": args.max_trials})
    # JSON is YAML: no YAML library needed in the project's environment.
    (run_dir / "config.yaml").write_text(json.dumps(config, indent=2) + "\n")
    command = [str(analyzer), "profile", "-f", str(run_dir / "config.yaml")]
    print("$ " + " ".join(command), flush=True)
    result = subprocess.run(command, cwd=run_dir, check=False)
    summary = run_dir / "results" / "results" / "metrics-model-inference.csv"
    if result.returncode == 0 and summary.exists():
        print(f"\n{summary.read_text().rstrip()}\n\nreport: {run_dir / 'results'} (reports/summaries/{args.model}/"
              "result_summary.html; the configs it tried are in output_models/)")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
