"""`python -m tools.stack`: runs Triton, the inference service and the gateway together until Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import errno
import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import accounts
from gateway.database import default_database_url, open_database
from inference_service.triton_launcher import TritonLaunchError, TritonServer

_LOGGER = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEMO_KEY_FILE = "demo_api_key"
DEMO_ACCOUNT_NAME = "demo"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Loading ISNet into Triton's Python backend takes tens of seconds on a small CPU machine.
TRITON_START_TIMEOUT_S = 180.0
# The inference service only reports SERVING once its first Triton readiness check passes.
PART_START_TIMEOUT_S = 60.0
# The gateway drains in-flight requests on SIGTERM; past this the stack SIGKILLs a part.
PART_STOP_TIMEOUT_S = 20.0
TRITON_STOP_TIMEOUT_S = 30.0
_POLL_S = 0.2
_LOG_TAIL_LINES = 20
_WILDCARD_HOSTS = {"", "0.0.0.0", "::"}


class StackError(Exception):
    """The stack could not start or a part stopped; the message says which part and where its log is."""


class SettingsError(StackError):
    """A flag is invalid or a port is taken; reported before anything starts (exit status 2)."""


class StopRequested(BaseException):
    """SIGINT or SIGTERM arrived while Triton was starting (a BaseException, like KeyboardInterrupt, so that
    no `except Exception` on the way swallows it)."""


@dataclass(frozen=True)
class StackSettings:
    """Where each part listens and where the stack keeps its database, files and logs."""

    host: str
    data_dir: Path
    port: int
    grpc_port: int
    inference_metrics_port: int
    triton_http_port: int
    triton_grpc_port: int
    triton_metrics_port: int
    log_level: str
    model_repository: Path

    @property
    def connect_host(self) -> str:
        """The address the parts use to reach each other (a wildcard bind is reached on loopback)."""
        return "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host

    def address(self, port: int) -> str:
        host = self.connect_host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.address(self.port)}"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def ports(self) -> dict[str, tuple[int, str]]:
        """Each port with the part that binds it and the flag that sets it."""
        return {
            "gateway": (self.port, "--port"),
            "inference service": (self.grpc_port, "--grpc-port"),
            "inference service metrics": (self.inference_metrics_port, "--inference-metrics-port"),
            "Triton HTTP": (self.triton_http_port, "--triton-http-port"),
            "Triton gRPC": (self.triton_grpc_port, "--triton-grpc-port"),
            "Triton metrics": (self.triton_metrics_port, "--triton-metrics-port"),
        }


def parse_settings(argv: Sequence[str] | None = None) -> StackSettings:
    parser = argparse.ArgumentParser(
        prog="python -m tools.stack",
        description="Run the whole service locally: Triton, the gRPC inference service and the HTTP gateway, "
        "with SQLite and file storage in a data directory. Each part's output goes to a log file in the data "
        "directory (logs/inference_service.log, logs/gateway.log, triton/tritonserver.log); the terminal shows "
        "the stack's own progress. Ctrl-C or SIGTERM stops everything.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address every part binds (default: %(default)s)")
    parser.add_argument(
        "--data-dir", type=Path, default=Path("var"),
        help="SQLite database, output files, logs and the demo API key (default: ./%(default)s)",
    )
    parser.add_argument("--port", type=int, default=8080, help="gateway HTTP port (default: %(default)s)")
    parser.add_argument("--grpc-port", type=int, default=50051, help="inference service gRPC port (default: %(default)s)")
    parser.add_argument(
        "--inference-metrics-port", type=int, default=9101,
        help="inference service Prometheus /metrics port (default: %(default)s)",
    )
    parser.add_argument("--triton-http-port", type=int, default=8000, help="(default: %(default)s)")
    parser.add_argument("--triton-grpc-port", type=int, default=8001, help="(default: %(default)s)")
    parser.add_argument("--triton-metrics-port", type=int, default=8002, help="(default: %(default)s)")
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, type=str.upper)
    parser.add_argument(
        "--model-repository", type=Path, default=ROOT / "triton_models", help="Triton model repository"
    )
    arguments = parser.parse_args(argv)
    return StackSettings(
        host=arguments.host,
        data_dir=arguments.data_dir.resolve(),
        port=arguments.port,
        grpc_port=arguments.grpc_port,
        inference_metrics_port=arguments.inference_metrics_port,
        triton_http_port=arguments.triton_http_port,
        triton_grpc_port=arguments.triton_grpc_port,
        triton_metrics_port=arguments.triton_metrics_port,
        log_level=arguments.log_level,
        model_repository=arguments.model_repository.resolve(),
    )


def _port_in_use(host: str, port: int) -> OSError | None:
    """Binds host:port the way the servers will (SO_REUSEADDR); returns the error if that fails."""
    try:
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            return None
    except OSError as exc:
        return exc


def validate(settings: StackSettings) -> None:
    """Raises SettingsError naming the flag at fault, before anything is started."""
    seen: dict[int, str] = {}
    for part, (port, flag) in settings.ports.items():
        if not 1 <= port <= 65535:
            raise SettingsError(f"{flag} {port}: the {part} port must be between 1 and 65535")
        if port in seen:
            raise SettingsError(f"{flag} {port}: the {part} port is also the {seen[port]} port; pick another")
        seen[port] = part
    for part, (port, flag) in settings.ports.items():
        error = _port_in_use(settings.host, port)
        if error is None:
            continue
        if error.errno == errno.EADDRINUSE:
            raise SettingsError(
                f"port {port} on {settings.host} ({part}) is already in use; stop what holds it or pick "
                f"another with {flag}"
            )
        raise SettingsError(f"cannot bind {part} on {settings.host}:{port} ({flag}): {error}")
    weights = settings.model_repository / "isnet" / "1" / "model.onnx"
    if not weights.exists():
        raise SettingsError(f"{weights} is missing: run `make setup` (it fetches the model weights)")
    try:
        settings.logs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"--data-dir {settings.data_dir}: {exc}") from exc
    if not os.access(settings.data_dir, os.W_OK):
        raise SettingsError(f"--data-dir {settings.data_dir} is not writable")


async def _demo_api_key(data_dir: Path) -> tuple[str, str]:
    """Migrates the database and returns (the demo account's API key, what happened), creating the account
    on first start only. The key is kept in clear text in data_dir: a local demo convenience, never how
    production accounts are made (`python -m gateway.admin accounts create`)."""
    key_file = data_dir / DEMO_KEY_FILE
    async with open_database(default_database_url(data_dir)) as sessions:
        if key_file.exists():
            api_key = key_file.read_text().strip()
            account = await accounts.authenticate(sessions, api_key)
            if account is not None:
                return api_key, f"existing demo account {account.id} (plan {account.plan})"
            _LOGGER.warning("%s holds a key the database does not know (revoked, or a new database)", key_file)
        account, api_key = await accounts.create_account(sessions, name=DEMO_ACCOUNT_NAME, plan="pro")
    partial = key_file.with_name(key_file.name + ".tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(api_key + "\n")
    os.chmod(partial, 0o600)  # in case an older file with wider permissions was truncated
    os.replace(partial, key_file)
    return api_key, f"created demo account {account.id} (plan {account.plan})"


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class Part:
    """One child process of the stack, its output appended to its own log file."""

    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} started by tools.stack\n".encode())
            log.flush()
            # A session of its own: Ctrl-C in the terminal reaches only the stack, which then stops the parts
            # in order instead of all at once.
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _LOGGER.info("%s pid %d starting (log %s)", self.name, self.process.pid, self.log_path)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process else None

    def failure(self) -> StackError:
        code = self.exit_code()
        return StackError(
            f"{self.name} (pid {self.pid}) {_describe_exit(code if code is not None else 0)}; "
            f"its log is {self.log_path}; last lines:\n{_log_tail(self.log_path)}"
        )

    def stop(self, timeout: float = PART_STOP_TIMEOUT_S) -> None:
        """SIGTERM to this part's pid, then SIGKILL if it has not exited within `timeout`."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                _LOGGER.warning("%s pid %d still running %.0f s after SIGTERM; killing it", self.name,
                                process.pid, timeout)
                process.kill()
                process.wait()
            _LOGGER.info("%s pid %d stopped (%s)", self.name, process.pid, _describe_exit(process.returncode))
        self.process = None


def _inference_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _gateway_answers(host: str, port: int) -> bool:
    """Any HTTP answer counts: GET /v1/account without a key is a 401 once the gateway serves."""
    connection = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        connection.request("GET", "/v1/account")
        connection.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        connection.close()


class Stack:
    """Triton, then the inference service, then the gateway; stopped in the reverse order."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.stop_signal: int | None = None
        self._interruptible = False
        self.triton = TritonServer(
            settings.model_repository, settings.data_dir / "triton", settings.host, settings.triton_grpc_port,
            settings.triton_http_port, settings.triton_metrics_port,
            log_verbose=1 if settings.log_level == "DEBUG" else 0,
        )
        python = sys.executable
        self.inference = Part(
            "inference service",
            [python, "-m", "inference_service", f"--host={settings.host}", f"--port={settings.grpc_port}",
             f"--metrics-port={settings.inference_metrics_port}",
             f"--triton-url={settings.address(settings.triton_grpc_port)}", f"--log-level={settings.log_level}"],
            settings.logs_dir / "inference_service.log",
        )
        gateway_command = [
            python, "-m", "gateway", f"--host={settings.host}", f"--port={settings.port}",
            f"--inference-url={settings.address(settings.grpc_port)}", f"--data-dir={settings.data_dir}",
            f"--log-level={settings.log_level}",
        ]
        if settings.host in _WILDCARD_HOSTS:
            # output_url links must name an address clients can reach, not 0.0.0.0.
            gateway_command.append(f"--public-url={settings.gateway_url}")
        self.gateway = Part("gateway", gateway_command, settings.logs_dir / "gateway.log")

    def handle_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is not None:
            _LOGGER.info("already stopping")
            return
        self.stop_signal = signum
        _LOGGER.info("%s received: stopping", signal.Signals(signum).name)
        if self._interruptible:
            raise StopRequested(signum)

    @property
    def stopping(self) -> bool:
        return self.stop_signal is not None

    def _check_parts(self) -> None:
        process = self.triton._process  # the launcher exposes no exit status of its own
        if process is not None and process.poll() is not None:
            raise StackError(
                f"Triton (pid {process.pid}) {_describe_exit(process.returncode)}; its log is "
                f"{self.triton.log_path}; last lines:\n{_log_tail(self.triton.log_path)}"
            )
        for part in (self.inference, self.gateway):
            if part.process is not None and part.exit_code() is not None:
                raise part.failure()

    def _wait_until(self, part: Part, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + PART_START_TIMEOUT_S
        while not self.stopping:
            self._check_parts()
            if ready():
                _LOGGER.info("%s ready", part.name)
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"{part.name} (pid {part.pid}) not ready after {PART_START_TIMEOUT_S:.0f} s; its log is "
                    f"{part.log_path}; last lines:\n{_log_tail(part.log_path)}"
                )
            time.sleep(_POLL_S)

    def start(self) -> None:
        """Starts each part and waits for it; returns early (all started parts running) if asked to stop."""
        _LOGGER.info("starting Triton (log %s)", self.triton.log_path)
        self._interruptible = True
        try:
            if self.stopping:
                return
            self.triton.start(TRITON_START_TIMEOUT_S)
        except StopRequested:
            return
        except TritonLaunchError as exc:
            raise StackError(f"Triton did not start: {exc}") from exc
        finally:
            self._interruptible = False
        if self.stopping:
            return
        self.inference.start()
        self._wait_until(
            self.inference, lambda: _inference_serving(self.settings.address(self.settings.grpc_port))
        )
        if self.stopping:
            return
        self.gateway.start()
        self._wait_until(self.gateway, lambda: _gateway_answers(self.settings.connect_host, self.settings.port))

    def watch(self) -> None:
        """Blocks until a stop signal (returns) or until a part exits on its own (raises StackError)."""
        while not self.stopping:
            self._check_parts()
            time.sleep(_POLL_S)

    def stop(self) -> None:
        """The gateway first (no new requests), then the inference service, then Triton."""
        self.gateway.stop()
        self.inference.stop()
        if self.triton.pid is not None:
            self.triton.stop(TRITON_STOP_TIMEOUT_S)


def banner(settings: StackSettings, stack: Stack, api_key: str, account_note: str) -> str:
    gateway = settings.gateway_url
    key_file = settings.data_dir / DEMO_KEY_FILE
    return "\n".join([
        "",
        "RemovAI is running. Ctrl-C stops it.",
        f"  try-it page:     {gateway}/",
        f"  API base:        {gateway}/v1",
        f"  API docs:        {gateway}/v1/docs",
        f"  gRPC:            {settings.address(settings.grpc_port)}",
        f"  Triton metrics:  http://{settings.address(settings.triton_metrics_port)}/metrics",
        f"  gateway metrics: {gateway}/metrics",
        f"  inference service metrics: http://{settings.address(settings.inference_metrics_port)}/metrics",
        f"  demo API key: {api_key}",
        f"    {account_note}; kept in {key_file} (mode 0600) so later starts show it again.",
        "    A local demo convenience only: in production create accounts and keys with `removai admin`.",
        f"  pids: triton={stack.triton.pid} inference_service={stack.inference.pid} gateway={stack.gateway.pid}",
        f"  logs: {stack.triton.log_path}, {stack.inference.log_path}, {stack.gateway.log_path}",
        f"  data: {settings.data_dir} (SQLite database removai.db, output files in files/)",
        "",
    ])


def run(settings: StackSettings) -> int:
    """Runs the stack to the end; 0 after a requested stop, 1 when a part failed."""
    validate(settings)
    api_key, account_note = asyncio.run(_demo_api_key(settings.data_dir))
    stack = Stack(settings)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stack.handle_signal)
    status = 0
    try:
        stack.start()
        if not stack.stopping:
            print(banner(settings, stack, api_key, account_note), flush=True)
            stack.watch()
    except StackError as exc:
        _LOGGER.error("%s", exc)
        _LOGGER.error("stopping the other parts")
        status = 1
    finally:
        # A second Ctrl-C must not cut the orderly shutdown short: each step is bounded by its own timeout.
        stack.stop_signal = stack.stop_signal or signal.SIGTERM
        stack.stop()
    _LOGGER.info("stopped")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(settings)
    except SettingsError as exc:
        print(f"tools.stack: {exc}", file=sys.stderr)
        return 2
    except StackError as exc:
        _LOGGER.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C before any part was started (while migrating the database): nothing to stop.
        return 130


if __name__ == "__main__":
    sys.exit(main())
