"""Starts the tritonserver binary bundled in the nvidia-pytriton wheel on a model repository, and stops it.

There is no Docker engine on the development machines, so Triton runs from the wheel. It needs three things
arranged (each found by hand): a backend directory holding the Python backend's library, its utils module and
the stub built for this Python; the wheel's bundled libraries on LD_LIBRARY_PATH; and this environment's bin/
first on PATH, so that the stub imports this environment's packages (numpy, onnxruntime).
"""

from __future__ import annotations

import collections
import http.client
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

_LOGGER = logging.getLogger(__name__)


class TritonLaunchError(RuntimeError):
    """tritonserver could not be found, did not become ready in time, or exited while starting."""


# Ports handed out lately by free_port in this process: a new one keeps clear of each by more than a replica
# stride (tools.stack's replica i listens on port + 10 x (i - 1)), so two of them never meet.
_RECENT_PORTS: collections.deque[int] = collections.deque(maxlen=64)
_LOWEST_PORT = 10000
_REPLICA_ROOM = 100


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _binds(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (tritonserver cannot bind port 0 and report it back).

    Chosen below the kernel's ephemeral range: ports in that range also go to every outgoing connection and to
    other servers' port-0 binds, which took a replica's port (port + 10) before the stack bound it in one test
    run on a loaded machine ("port 40489 ... is already in use"). Falls back to port 0 where there is no room.
    """
    low, _ = _ephemeral_range()
    top = low - _REPLICA_ROOM
    for _ in range(200 if top - _LOWEST_PORT > 1000 else 0):
        port = random.randrange(_LOWEST_PORT, top)
        if all(abs(port - taken) > _REPLICA_ROOM for taken in _RECENT_PORTS) and _binds(host, port):
            _RECENT_PORTS.append(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def _pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise TritonLaunchError("nvidia-pytriton is not installed; run the set-up step") from exc
    return Path(pytriton.__file__).resolve().parent


def prepare_backend_directory(target: Path) -> Path:
    """Lays out <target>/python/ with the Python backend and the stub for the running Python version."""
    server_dir = _pytriton_dir() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = [
        server_dir / "backends" / "python" / "libtriton_python.so",
        server_dir / "backends" / "python" / "triton_python_backend_utils.py",
        server_dir / "python_backend_stubs" / version / "triton_python_backend_stub",
    ]
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in sources:
        if not source.exists():
            raise TritonLaunchError(f"{source} is missing from the nvidia-pytriton wheel")
        link = python_dir / source.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    return target


@dataclass
class TritonServer:
    """One tritonserver process. Ports stay fixed across stop()/start() so clients can reconnect."""

    model_repository: Path
    workdir: Path
    host: str = "127.0.0.1"
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    log_verbose: int = 0
    # The models to load (Triton's explicit model control); empty: every model in the repository. Each model
    # loaded is a Python stub process holding its own runtime and weights (about 1.1 GB for ISNet in OpenVINO).
    models: tuple[str, ...] = ()
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def exit_code(self) -> int | None:
        """None while tritonserver runs (or was never started), else its exit status (negative: killed)."""
        return self._process.poll() if self._process else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "tritonserver.log"

    def environment(self) -> dict[str, str]:
        """The environment tritonserver needs (bundled libraries, this venv's Python for the backend stub)."""
        env = dict(os.environ)
        libs = _pytriton_dir().parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        return env

    def command(self) -> list[str]:
        binary = _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
        return [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.workdir / 'backends'}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            f"--log-verbose={self.log_verbose}",
            *(["--model-control-mode=explicit", *(f"--load-model={name}" for name in self.models)]
              if self.models else []),
        ]

    def start(self, timeout: float = 180.0) -> None:
        """Starts tritonserver and blocks until it reports ready; raises TritonLaunchError otherwise."""
        if self._process and self._process.poll() is None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        prepare_backend_directory(self.workdir / "backends")
        with self.log_path.open("ab") as log:
            # A session of its own, so stop() can end the Python stubs Triton started along with it.
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment(),
                start_new_session=True,
            )
        _LOGGER.info("tritonserver pid %d starting (grpc %s, log %s)", self._process.pid, self.grpc_url, self.log_path)
        self.wait_ready(timeout)

    def is_ready(self) -> bool:
        """Every model loaded at start is ready (with no models named, Triton's own readiness: all of them). Not
        /v2/health/ready once models are named: a later failed load of another model turns that false for good
        under --strict-readiness, while these models still serve."""
        paths = [f"/v2/models/{name}/ready" for name in self.models] or ["/v2/health/ready"]
        for path in paths:
            try:
                with urllib.request.urlopen(f"{self.http_url}{path}", timeout=2) as response:
                    if response.status != 200:
                        return False
            except (urllib.error.URLError, OSError, http.client.HTTPException):  # e.g. another server on the port
                return False
        return True

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = self._process.returncode if self._process else None
                raise TritonLaunchError(f"tritonserver exited with {code}; see {self.log_path}:\n{self._log_tail()}")
            if self.is_ready():
                _LOGGER.info("tritonserver ready on %s", self.grpc_url)
                return
            time.sleep(0.2)
        self.stop()
        raise TritonLaunchError(f"tritonserver not ready after {timeout:.0f} s; see {self.log_path}")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL when kill=True) to Triton's process group, then waits for it to exit."""
        process = self._process
        if process is None or process.poll() is not None:
            self._process = None
            return
        sig = signal.SIGKILL if kill else signal.SIGTERM
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _LOGGER.warning("tritonserver pid %d ignored SIGTERM; killing it", process.pid)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self._process = None
        _LOGGER.info("tritonserver stopped")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main() -> int:
    """`python -m tools.triton_launcher`: runs Triton in the foreground until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description="Run the bundled tritonserver on a model repository.")
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--model-repository", type=Path, default=root / "triton_models")
    parser.add_argument("--workdir", type=Path, default=root / "var" / "triton")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument(
        "--model", action="append", default=[], dest="models",
        help="a model to load (repeatable; default: every model in the repository)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = TritonServer(
        args.model_repository.resolve(), args.workdir.resolve(), args.host, args.grpc_port, args.http_port,
        args.metrics_port, models=tuple(args.models),
    )
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        server.start()
    except TritonLaunchError as exc:
        _LOGGER.error("%s", exc)
        return 1
    try:
        while not stop and server.pid is not None and server.exit_code() is None:
            time.sleep(0.5)
        if not stop:
            _LOGGER.error("tritonserver exited unexpectedly; see %s", server.log_path)
            return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
