"""`python -m tools.stack`: runs N Tritons, inference services and gateways, supervised, until Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import errno
import http.client
import ipaddress
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.credentials import (
    FILE_SUFFIX,
    SecretFileError,
    from_environment,
    mask_url,
    mask_urls_in,
    secret_flags,
)
from common.logs import masking_handler
from tools.triton_launcher import TritonLaunchError, TritonServer, free_port, prepare_backend_directory

_LOGGER = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEMO_KEY_FILE = "demo_api_key"
URL_SIGNING_SECRET_FILE = "url_signing_secret"  # as gateway.domain.links names it
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Replica i (counting from 0) of a part listens on each of that part's ports plus i x this step.
REPLICA_PORT_STEP = 10
# Loading ISNet into Triton's Python backend takes tens of seconds on a small CPU machine.
TRITON_START_TIMEOUT_S = 180.0
# The inference service only reports SERVING once its first Triton readiness check passes.
PART_START_TIMEOUT_S = 60.0
# The gateway drains in-flight requests on SIGTERM; past this the stack SIGKILLs a part.
PART_STOP_TIMEOUT_S = 20.0
TRITON_STOP_TIMEOUT_S = 30.0
# A part that dies is restarted after 0.5 s, 1 s, 2 s... (at most BACKOFF_MAX_S); one that dies GIVE_UP_DEATHS
# times within GIVE_UP_WINDOW_S is broken, not unlucky, and the stack stops rather than restart it forever.
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 10.0
GIVE_UP_DEATHS = 5
GIVE_UP_WINDOW_S = 60.0
_POLL_S = 0.2
_LOG_TAIL_LINES = 20
_WILDCARD_HOSTS = {"", "0.0.0.0", "::"}
# The gateways' settings that may carry a password (the stack's flag, the gateway's variable): read from that
# variable (or the file its _FILE variable names) when the flag is not given, and handed to the gateways and
# the demo account's process in their environment, never in their argv.
_GATEWAY_SECRET_URLS = {
    "database_url": "REMOVAI_GATEWAY_DATABASE_URL",
    "redis_url": "REMOVAI_GATEWAY_REDIS_URL",
    "storage_url": "REMOVAI_GATEWAY_STORAGE_URL",
}


class StackError(Exception):
    """The stack could not start or a part keeps dying; the message says which part and where its log is."""


class SettingsError(StackError):
    """A flag is invalid or a port is taken; reported before anything starts (exit status 2)."""


@dataclass(frozen=True)
class StackSettings:
    """How many of each part, where the first replica of each listens, and the shared backends."""

    host: str
    data_dir: Path
    port: int
    grpc_port: int
    inference_metrics_port: int
    gateway_metrics_port: int
    triton_http_port: int
    triton_grpc_port: int
    triton_metrics_port: int
    log_level: str
    model_repository: Path
    gateways: int = 1
    inference_services: int = 1
    tritons: int = 1
    database_url: str = ""
    redis_url: str = ""
    storage_url: str = ""
    models: tuple[str, ...] = ()  # the models Triton loads; empty: every model in the repository

    @property
    def connect_host(self) -> str:
        """The address the parts use to reach each other (a wildcard bind is reached on loopback)."""
        return "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host

    def address(self, port: int) -> str:
        host = self.connect_host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def gateway_url(self, replica: int = 0) -> str:
        return f"http://{self.address(self.port + replica * REPLICA_PORT_STEP)}"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def ports(self) -> dict[str, tuple[int, str]]:
        """Each port of each replica with the part that binds it and the flag that sets it."""
        step = REPLICA_PORT_STEP
        ports: dict[str, tuple[int, str]] = {}
        for i in range(self.gateways):
            ports[f"gateway-{i + 1}"] = (self.port + i * step, "--port")
            ports[f"gateway-{i + 1} metrics"] = (self.gateway_metrics_port + i * step, "--gateway-metrics-port")
        for i in range(self.inference_services):
            ports[f"inference-{i + 1}"] = (self.grpc_port + i * step, "--grpc-port")
            ports[f"inference-{i + 1} metrics"] = (self.inference_metrics_port + i * step, "--inference-metrics-port")
        for i in range(self.tritons):
            ports[f"triton-{i + 1} HTTP"] = (self.triton_http_port + i * step, "--triton-http-port")
            ports[f"triton-{i + 1} gRPC"] = (self.triton_grpc_port + i * step, "--triton-grpc-port")
            ports[f"triton-{i + 1} metrics"] = (self.triton_metrics_port + i * step, "--triton-metrics-port")
        return ports


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 8:
        raise argparse.ArgumentTypeError("must be between 1 and 8")
    return value


def parse_settings(argv: Sequence[str] | None = None) -> StackSettings:
    parser = argparse.ArgumentParser(
        prog="python -m tools.stack",
        description="Run the whole service locally: Triton, the gRPC inference service and the HTTP gateway "
        "(one of each by default, on SQLite and files in a data directory), supervised: a part that dies is "
        "restarted with backoff while the others keep serving; the stack stops on Ctrl-C/SIGTERM or when a part "
        f"dies {GIVE_UP_DEATHS} times within {GIVE_UP_WINDOW_S:.0f} s. Each part logs to data-dir/logs/<part>.log; "
        f"the terminal shows the stack's own progress. Replica i of a part listens on each port flag + "
        f"{REPLICA_PORT_STEP} x (i - 1).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address every part binds (default: %(default)s)")
    parser.add_argument(
        "--data-dir", type=Path, default=Path("var"),
        help="SQLite database, output files, logs and the demo API key (default: ./%(default)s)",
    )
    parser.add_argument("--gateways", type=_count, default=1, help="gateway replicas (default: %(default)s)")
    parser.add_argument(
        "--inference-services", type=_count, default=1, help="inference service replicas (default: %(default)s)"
    )
    parser.add_argument("--tritons", type=_count, default=1, help="Triton replicas (default: %(default)s)")
    def secret_url_help(what: str, name: str, otherwise: str) -> str:
        variable = _GATEWAY_SECRET_URLS[name]
        return (f"{what} (default: ${variable} or the file ${variable}{FILE_SUFFIX} names, else {otherwise}); "
                f"prefer those to this flag: a password on the command line is visible to every user in `ps`")

    parser.add_argument("--database-url", default=None, help=secret_url_help(
        "the gateways' database, e.g. postgresql+asyncpg://user@host/db", "database_url", "SQLite in the data dir"))
    parser.add_argument("--redis-url", default=None, help=secret_url_help(
        "redis://... shared rate limits", "redis_url", "in-memory"))
    parser.add_argument("--storage-url", default=None, help=secret_url_help(
        "the gateways' object storage, e.g. s3://bucket?endpoint=...", "storage_url", "files in the data dir"))
    parser.add_argument("--port", type=int, default=8080, help="gateway HTTP port (default: %(default)s)")
    parser.add_argument("--grpc-port", type=int, default=50051, help="inference service gRPC port (default: %(default)s)")
    parser.add_argument(
        "--inference-metrics-port", type=int, default=9101,
        help="inference service Prometheus /metrics port (default: %(default)s)",
    )
    parser.add_argument(
        "--gateway-metrics-port", type=int, default=9102,
        help="gateway Prometheus /metrics port, never the API's (default: %(default)s)",
    )
    parser.add_argument("--triton-http-port", type=int, default=8000, help="(default: %(default)s)")
    parser.add_argument("--triton-grpc-port", type=int, default=8001, help="(default: %(default)s)")
    parser.add_argument("--triton-metrics-port", type=int, default=8002, help="(default: %(default)s)")
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, type=str.upper)
    parser.add_argument(
        "--model-repository", type=Path, default=ROOT / "triton_models", help="Triton model repository"
    )
    parser.add_argument(
        "--models", default="",
        help="models Triton loads, comma-separated, e.g. isnet (default: every model in --model-repository; each "
        "is a process holding its own weights and runtime, about 1.1 GB for ISNet)",
    )
    arguments = parser.parse_args(argv)
    secret_urls: dict[str, str] = {}
    for name, variable in _GATEWAY_SECRET_URLS.items():
        given = getattr(arguments, name)
        try:
            secret_urls[name] = given if given is not None else from_environment(variable)[0]
        except SecretFileError as exc:
            parser.error(str(exc))
    return StackSettings(
        host=arguments.host,
        data_dir=arguments.data_dir.resolve(),
        port=arguments.port,
        grpc_port=arguments.grpc_port,
        inference_metrics_port=arguments.inference_metrics_port,
        gateway_metrics_port=arguments.gateway_metrics_port,
        triton_http_port=arguments.triton_http_port,
        triton_grpc_port=arguments.triton_grpc_port,
        triton_metrics_port=arguments.triton_metrics_port,
        log_level=arguments.log_level,
        model_repository=arguments.model_repository.resolve(),
        gateways=arguments.gateways,
        inference_services=arguments.inference_services,
        tritons=arguments.tritons,
        database_url=secret_urls["database_url"],
        redis_url=secret_urls["redis_url"],
        storage_url=secret_urls["storage_url"],
        models=tuple(name.strip() for name in arguments.models.split(",") if name.strip()),
    )


def _port_in_use(host: str, port: int) -> OSError | None:
    """Binds host:port the way the servers will (SO_REUSEADDR); returns the error if that fails."""
    try:
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            return None
    except OSError as exc:
        return exc


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def validate(settings: StackSettings) -> None:
    """Raises SettingsError naming the flag at fault, before anything is started."""
    seen: dict[int, str] = {}
    for part, (port, flag) in settings.ports.items():
        if not 1 <= port <= 65535:
            raise SettingsError(f"{flag}: the {part} port {port} must be between 1 and 65535")
        if port in seen:
            raise SettingsError(f"{flag}: the {part} port {port} is also the {seen[port]} port; pick another")
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
    if settings.inference_services > 1 and not _is_ip(settings.connect_host):
        raise SettingsError(
            f"--inference-services {settings.inference_services} needs --host to be an IP address: the gateways "
            "balance over a list of IP:port"
        )
    available = sorted(config.parent.name for config in settings.model_repository.glob("*/config.pbtxt"))
    unknown = [name for name in settings.models if name not in available]
    if unknown:
        raise SettingsError(
            f"--models: {', '.join(unknown)} not in {settings.model_repository}; it has {', '.join(available)}"
        )
    for name in settings.models or available:
        weights = settings.model_repository / name / "1" / "model.onnx"
        if not weights.exists():
            raise SettingsError(f"{weights} is missing: run `make setup` (it fetches the model weights)")
    try:
        settings.logs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"--data-dir {settings.data_dir}: {exc}") from exc
    if not os.access(settings.data_dir, os.W_OK):
        raise SettingsError(f"--data-dir {settings.data_dir} is not writable")


def gateway_environment(settings: StackSettings) -> dict[str, str]:
    """This process's environment plus the gateway settings given to the stack as flags, as the gateway's own
    variables: the environment, not the children's argv, where `ps` would show a password. A value the stack read
    from the environment (or a _FILE variable) is already there, and a file's contents stay in the file."""
    env = dict(os.environ)
    for name, variable in _GATEWAY_SECRET_URLS.items():
        value: str = getattr(settings, name)
        # from_environment cannot fail here: parse_settings read the same variables successfully.
        if value and from_environment(variable, env)[0] != value:
            env[variable] = value
    return env


async def _demo_api_key(data_dir: Path, env: dict[str, str]) -> tuple[str, str]:
    """(the demo account's API key, what happened), by `python -m tools.demo_account` in a process of its own:
    the supervisor never imports the gateway's database code, so it stays small while the stack runs. `env` is
    the gateways' environment (gateway_environment): the account goes into the database they use."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.demo_account", f"--data-dir={data_dir}", f"--key-file={data_dir / DEMO_KEY_FILE}",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        cwd=ROOT,  # this checkout's code, not an editable install's (as Part.cwd)
    )
    out, err = await child.communicate()
    if child.returncode != 0:
        raise StackError(f"the demo account could not be made (tools.demo_account {_describe_exit(child.returncode or 0)}):"
                         f"\n{err.decode(errors='replace')[-3000:]}")
    for line in err.decode(errors="replace").splitlines():
        _LOGGER.warning("tools.demo_account: %s", line)
    return (data_dir / DEMO_KEY_FILE).read_text().strip(), out.decode().strip()


def _url_signing_secret(data_dir: Path) -> str:
    """The gateways' shared URL-signing secret, generated once into data_dir (the file a lone gateway would
    create itself). Made here, before any gateway starts, so that replicas starting together cannot race to
    create it and end up signing with different keys."""
    path = data_dir / URL_SIGNING_SECRET_FILE
    with contextlib.suppress(FileExistsError):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


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


@dataclass
class Part:
    """One supervised child process: how to start it, how to tell it is ready, and its recent deaths."""

    name: str
    command: list[str]
    log_path: Path
    address: str
    ready_probe: Callable[[], bool]
    start_timeout_s: float = PART_START_TIMEOUT_S
    stop_timeout_s: float = PART_STOP_TIMEOUT_S
    env: dict[str, str] | None = None
    before_start: Callable[[], None] | None = None
    cwd: Path | None = None  # None: the stack's own working directory
    process: asyncio.subprocess.Process | None = field(default=None, init=False)
    ready: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    deaths: collections.deque[float] = field(default_factory=collections.deque, init=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def spawn(self) -> None:
        if self.before_start is not None:
            self.before_start()
        log: IO[bytes]
        with self.log_path.open("ab") as log:
            log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} started by tools.stack\n".encode())
            log.flush()
            # A session of its own: Ctrl-C in the terminal reaches only the stack, which then stops the parts
            # in order; and the part's own children (Triton's Python backend stubs) share its process group.
            self.process = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                env=self.env, cwd=self.cwd, start_new_session=True,
            )
        _LOGGER.info("%s pid %d started (%s, log %s)", self.name, self.process.pid, self.address, self.log_path)

    def kill_group(self) -> None:
        """SIGKILL to what is left of the part's process group (children orphaned by a killed leader)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """SIGTERM to the part's process group, then SIGKILL if it has not exited within stop_timeout_s."""
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.stop_timeout_s)
            except TimeoutError:
                _LOGGER.warning("%s pid %d still running %.0f s after SIGTERM; killing it", self.name,
                                process.pid, self.stop_timeout_s)
                self.kill_group()
                await process.wait()
            _LOGGER.info("%s pid %d stopped (%s)", self.name, process.pid, _describe_exit(process.returncode or 0))
        self.kill_group()

    def backoff_s(self) -> float:
        return float(min(BACKOFF_BASE_S * 2 ** (len(self.deaths) - 1), BACKOFF_MAX_S))


async def wait_until_ready(part: Part) -> None:
    """Polls the part's readiness probe until it passes; StackError (with its log's last lines) if the part
    exits first or is not ready within its start_timeout_s."""
    deadline = time.monotonic() + part.start_timeout_s
    while not await asyncio.to_thread(part.ready_probe):
        if part.process is None or part.process.returncode is not None:
            how = _describe_exit(part.process.returncode or 0) if part.process else "was never started"
            raise StackError(f"{part.name} {how} before it was ready; last lines of {part.log_path}:\n"
                             f"{_log_tail(part.log_path)}")
        if time.monotonic() > deadline:
            raise StackError(f"{part.name} not ready after {part.start_timeout_s:.0f} s; last lines of "
                             f"{part.log_path}:\n{_log_tail(part.log_path)}")
        await asyncio.sleep(_POLL_S)
    part.ready.set()


@contextlib.asynccontextmanager
async def inference_service(
    triton_url: str, log_path: Path, *, host: str = "127.0.0.1", log_level: str = "WARNING"
) -> AsyncIterator[Part]:
    """One `python -m inference_service` (this checkout's) on a free port of host, unsupervised, for callers
    that must not import the service (the bench): its settings are its defaults and the REMOVAI_INFERENCE_*
    variables of this environment, except the address, Triton's and no metrics port. Yields once its gRPC
    health check says SERVING (which waits for Triton); part.address is its gRPC host:port. Stopped at the end
    (SIGTERM to its process group, SIGKILL after stop_timeout_s)."""
    port = free_port(host)
    address = f"{host}:{port}"
    part = Part(
        "inference_service",
        [sys.executable, "-m", "inference_service", f"--host={host}", f"--port={port}", "--metrics-port=-1",
         f"--triton-url={triton_url}", f"--log-level={log_level}"],
        log_path, address, _inference_ready_probe(address), cwd=ROOT,
    )
    try:
        await part.spawn()
        await wait_until_ready(part)
        yield part
    finally:
        await part.stop()


class Supervisor:
    """Starts the Tritons, then the inference services, then the gateways, each tier once the one it needs is
    ready; restarts any part that dies (with backoff) while the others keep serving; stops them in reverse."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.failure: StackError | None = None
        self.finished = asyncio.Event()  # a stop was asked for, or a part keeps dying
        self._tasks: list[asyncio.Task[None]] = []
        python = sys.executable
        step = REPLICA_PORT_STEP
        log_verbose = 1 if settings.log_level == "DEBUG" else 0
        self.tritons: list[Part] = []
        for i in range(settings.tritons):
            triton = TritonServer(
                settings.model_repository, settings.data_dir / f"triton-{i + 1}", settings.host,
                settings.triton_grpc_port + i * step, settings.triton_http_port + i * step,
                settings.triton_metrics_port + i * step, log_verbose=log_verbose, models=settings.models,
            )
            self.tritons.append(Part(
                f"triton-{i + 1}", triton.command(), settings.logs_dir / f"triton-{i + 1}.log",
                f"gRPC {settings.address(triton.grpc_port)}, HTTP http://{settings.address(triton.http_port)}, "
                f"metrics http://{settings.address(triton.metrics_port)}/metrics",
                _triton_ready_probe(settings, triton.http_port), start_timeout_s=TRITON_START_TIMEOUT_S,
                stop_timeout_s=TRITON_STOP_TIMEOUT_S, env=triton.environment(),
                before_start=_backend_preparer(triton.workdir),
            ))
        triton_urls = ",".join(settings.address(settings.triton_grpc_port + i * step) for i in range(settings.tritons))
        self.inference_services: list[Part] = []
        for i in range(settings.inference_services):
            grpc_address = settings.address(settings.grpc_port + i * step)
            metrics_port = settings.inference_metrics_port + i * step
            self.inference_services.append(Part(
                f"inference-{i + 1}",
                [python, "-m", "inference_service", f"--host={settings.host}", f"--port={settings.grpc_port + i * step}",
                 f"--metrics-port={metrics_port}", f"--triton-url={triton_urls}", f"--log-level={settings.log_level}"],
                settings.logs_dir / f"inference-{i + 1}.log",
                f"gRPC {grpc_address}, metrics http://{settings.address(metrics_port)}/metrics",
                _inference_ready_probe(grpc_address),
            ))
        inference_url = ",".join(
            settings.address(settings.grpc_port + i * step) for i in range(settings.inference_services)
        )
        gateway_env = gateway_environment(settings)
        if "REMOVAI_GATEWAY_URL_SIGNING_SECRET" not in gateway_env:
            gateway_env["REMOVAI_GATEWAY_URL_SIGNING_SECRET"] = _url_signing_secret(settings.data_dir)
        self.gateways: list[Part] = []
        for i in range(settings.gateways):
            port = settings.port + i * step
            metrics_port = settings.gateway_metrics_port + i * step
            command = [
                python, "-m", "gateway", f"--host={settings.host}", f"--port={port}", f"--metrics-port={metrics_port}",
                f"--inference-url={inference_url}", f"--data-dir={settings.data_dir}",
                f"--log-level={settings.log_level}",
            ]
            if settings.host in _WILDCARD_HOSTS:
                # output_url links must name an address clients can reach, not 0.0.0.0.
                command.append(f"--public-url={settings.gateway_url(i)}")
            self.gateways.append(Part(
                f"gateway-{i + 1}", command, settings.logs_dir / f"gateway-{i + 1}.log",
                f"{settings.gateway_url(i)}, metrics http://{settings.address(metrics_port)}/metrics",
                _gateway_ready_probe(settings.connect_host, port), env=gateway_env,
            ))

    @property
    def tiers(self) -> list[list[Part]]:
        return [self.tritons, self.inference_services, self.gateways]

    @property
    def parts(self) -> list[Part]:
        return [part for tier in self.tiers for part in tier]

    def request_stop(self, signum: int) -> None:
        if self.finished.is_set():
            _LOGGER.info("already stopping")
            return
        _LOGGER.info("%s received: stopping", signal.Signals(signum).name)
        self.finished.set()

    def _give_up(self, error: StackError) -> None:
        if not self.finished.is_set():
            self.failure = error
            self.finished.set()

    async def _watch_ready(self, part: Part) -> None:
        """Polls the part's readiness probe until it passes; logs it (starts and restarts alike)."""
        while not await asyncio.to_thread(part.ready_probe):
            await asyncio.sleep(_POLL_S)
        _LOGGER.info("%s pid %s ready", part.name, part.pid)
        part.ready.set()

    async def _supervise(self, part: Part) -> None:
        """Runs the part, restarting it with backoff whenever it dies, until the stack finishes."""
        while not self.finished.is_set():
            try:
                await part.spawn()
            except OSError as exc:
                self._give_up(StackError(f"{part.name} could not be started: {exc}"))
                return
            assert part.process is not None
            readiness = asyncio.create_task(self._watch_ready(part))
            try:
                code = await part.process.wait()
            finally:
                readiness.cancel()
            part.kill_group()
            if self.finished.is_set():
                return
            now = time.monotonic()
            part.deaths.append(now)
            while part.deaths and part.deaths[0] < now - GIVE_UP_WINDOW_S:
                part.deaths.popleft()
            how = _describe_exit(code)
            if len(part.deaths) >= GIVE_UP_DEATHS:
                self._give_up(StackError(
                    f"giving up: {part.name} died {len(part.deaths)} times within {GIVE_UP_WINDOW_S:.0f} s "
                    f"(last: pid {part.pid} {how}); its log is {part.log_path}; last lines:\n"
                    f"{_log_tail(part.log_path)}"
                ))
                return
            delay = part.backoff_s()
            _LOGGER.error(
                "%s (pid %d) %s; restarting in %.1f s (%d deaths in the last %.0f s; the stack gives up at %d); "
                "its log is %s", part.name, part.pid, how, delay, len(part.deaths), GIVE_UP_WINDOW_S,
                GIVE_UP_DEATHS, part.log_path,
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.finished.wait(), delay)

    async def start(self) -> bool:
        """Starts every tier and waits until it is ready; False if the stack finished first."""
        for tier in self.tiers:
            for part in tier:
                self._tasks.append(asyncio.create_task(self._supervise(part), name=f"supervise {part.name}"))
            timeout = max(part.start_timeout_s for part in tier)
            all_ready: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*(p.ready.wait() for p in tier)))
            finished: asyncio.Future[Any] = asyncio.ensure_future(self.finished.wait())
            await asyncio.wait({all_ready, finished}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            all_ready.cancel()
            finished.cancel()
            if self.finished.is_set():
                return False
            late = [part for part in tier if not part.ready.is_set()]
            if late:
                part = late[0]
                self._give_up(StackError(
                    f"{part.name} (pid {part.pid}) not ready after {timeout:.0f} s; its log is {part.log_path}; "
                    f"last lines:\n{_log_tail(part.log_path)}"
                ))
                return False
        return True

    async def stop(self) -> None:
        """No more restarts; then the gateways (no new requests), the inference services, the Tritons."""
        self.finished.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for tier in reversed(self.tiers):
            await asyncio.gather(*(part.stop() for part in tier))


def _triton_ready(host: str, port: int) -> bool:
    """Triton's own readiness (server up, every model loaded: it runs with --strict-readiness)."""
    connection = http.client.HTTPConnection(host, port, timeout=2.0)
    try:
        connection.request("GET", "/v2/health/ready")
        response = connection.getresponse()
        response.read()
        return response.status == HTTPStatus.OK
    except OSError:
        return False
    finally:
        connection.close()


def _triton_ready_probe(settings: StackSettings, http_port: int) -> Callable[[], bool]:
    return lambda: _triton_ready(settings.connect_host, http_port)


def _inference_ready_probe(address: str) -> Callable[[], bool]:
    return lambda: _inference_serving(address)


def _gateway_ready_probe(host: str, port: int) -> Callable[[], bool]:
    return lambda: _gateway_answers(host, port)


def _backend_preparer(workdir: Path) -> Callable[[], None]:
    def prepare() -> None:
        try:
            prepare_backend_directory(workdir / "backends")
        except TritonLaunchError as exc:
            raise OSError(str(exc)) from exc

    return prepare


def banner(settings: StackSettings, supervisor: Supervisor, api_key: str, account_note: str) -> str:
    base = settings.gateway_url(0)
    key_file = settings.data_dir / DEMO_KEY_FILE
    width = max(len(part.name) for part in supervisor.parts)
    lines = [
        "",
        "RemovAI is running. Ctrl-C stops it.",
        f"  API base:     {base}",
        f"  API docs:     {base}/v1/docs   (every endpoint is under /v1)",
        f"  try-it page:  {base}/",
        f"  demo API key: {api_key}",
        f"    {account_note}; kept in {key_file} (mode 0600) so later starts show it again.",
        "    A local demo convenience only: in production create accounts and keys with `removai-admin --data-dir DATA_DIR` (`removai-admin --help`).",
        "  parts (a part that dies is restarted; pids change then, see the lines logged):",
    ]
    for part in supervisor.parts:
        lines.append(f"    {part.name:<{width}}  pid {part.pid}  {part.address}  log {part.log_path}")
    database = mask_url(settings.database_url) if settings.database_url else f"SQLite {settings.data_dir / 'removai.db'}"
    storage = mask_url(settings.storage_url) if settings.storage_url else f"files in {settings.data_dir / 'files'}"
    limits = f"Redis {mask_url(settings.redis_url)}" if settings.redis_url else "in-memory, per gateway"
    models = ", ".join(settings.models) if settings.models else f"every model in {settings.model_repository}"
    lines += [f"  models: {models}", f"  database: {database}", f"  rate limits: {limits}", f"  storage: {storage}",
              ""]
    if settings.gateways > 1 and not settings.database_url:
        lines.insert(-1, "  note: several gateways share one SQLite file; set REMOVAI_GATEWAY_DATABASE_URL for PostgreSQL")
    return "\n".join(lines)


async def run_supervised(settings: StackSettings) -> int:
    """Runs the stack to the end; 0 after a requested stop, 1 when a part failed."""
    supervisor = Supervisor(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.request_stop, sig)
    try:
        api_key, account_note = await _demo_api_key(settings.data_dir, gateway_environment(settings))
        if await supervisor.start():
            print(banner(settings, supervisor, api_key, account_note), flush=True)
            await supervisor.finished.wait()
    finally:
        # A second Ctrl-C must not cut the orderly shutdown short: each step is bounded by its own timeout.
        if supervisor.failure is not None:
            _LOGGER.error("%s", supervisor.failure)
            _LOGGER.error("stopping the other parts")
        await supervisor.stop()
    _LOGGER.info("stopped")
    return 1 if supervisor.failure is not None else 0


def run(settings: StackSettings) -> int:
    validate(settings)
    return asyncio.run(run_supervised(settings))


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    settings = parse_settings(arguments)
    # Masked: the stack's own lines quote its parts' errors and logs, which may name a URL with its password.
    logging.basicConfig(
        level=settings.log_level, handlers=[masking_handler("%(asctime)s %(levelname)s %(name)s: %(message)s")]
    )
    for flag in secret_flags(arguments):
        variable = _GATEWAY_SECRET_URLS.get(flag[2:].replace("-", "_"), "the gateway's variable")
        _LOGGER.warning("%s puts a password on the command line, where every user of this machine reads it (ps); "
                        "set %s, or %s%s naming a file that holds it, instead", flag, variable, variable, FILE_SUFFIX)
    try:
        return run(settings)
    except SettingsError as exc:
        print(f"tools.stack: {mask_urls_in(str(exc))}", file=sys.stderr)
        return 2
    except StackError as exc:
        _LOGGER.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C before the signal handlers were installed: nothing was started.
        return 130


if __name__ == "__main__":
    sys.exit(main())
