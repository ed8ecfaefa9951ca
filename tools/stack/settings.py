"""What a local stack runs and where: StackSettings, its checks before anything starts, the gateways' environment."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from common.credentials import from_environment

ROOT = Path(__file__).resolve().parent.parent.parent
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Replica i (counting from 0) of a part listens on each of that part's ports plus i x this step.
REPLICA_PORT_STEP = 10
WILDCARD_HOSTS = {"", "0.0.0.0", "::"}
# The gateways' settings that may carry a password (the stack's flag, the gateway's variable): read from that
# variable (or the file its _FILE variable names) when the flag is not given, and handed to the gateways and
# the demo account's process in their environment, never in their argv.
GATEWAY_SECRET_URLS = {
    "database_url": "REMOVAI_GATEWAY_DATABASE_URL",
    "redis_url": "REMOVAI_GATEWAY_REDIS_URL",
    "storage_url": "REMOVAI_GATEWAY_STORAGE_URL",
}


# What --allow-local-fetch adds to the gateways' REMOVAI_GATEWAY_FETCH_ALLOW_NETWORKS: this machine's loopback.
FETCH_ALLOW_NETWORKS_VARIABLE = "REMOVAI_GATEWAY_FETCH_ALLOW_NETWORKS"
LOCAL_NETWORKS = ("127.0.0.0/8", "::1/128")

# What the gateway creates its data dir with (gateway/store/database.py); not imported, so the supervisor stays
# free of the gateway's code.
_PRIVATE_DIR_MODE = 0o700


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
    # The models Triton loads at start; the repository's others load when a request first names one (Triton's
    # explicit model control). Empty: every model at start.
    models: tuple[str, ...] = ("isnet",)
    # Development only: let the gateways' URL fetches and webhooks reach this machine (LOCAL_NETWORKS), which
    # production refuses (a caller could otherwise make the gateway fetch from services behind it).
    allow_local_fetch: bool = False

    @property
    def connect_host(self) -> str:
        """The address the parts use to reach each other (a wildcard bind is reached on loopback)."""
        return "127.0.0.1" if self.host in WILDCARD_HOSTS else self.host

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
        # Owner-only from the start, the mode the gateway checks (and warns about) on the folder: it holds the
        # database, the URL-signing secret and the demo key. A folder that already exists is left as it is.
        settings.data_dir.mkdir(mode=_PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        settings.logs_dir.mkdir(mode=_PRIVATE_DIR_MODE, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"--data-dir {settings.data_dir}: {exc}") from exc
    if not os.access(settings.data_dir, os.W_OK):
        raise SettingsError(f"--data-dir {settings.data_dir} is not writable")


def gateway_environment(settings: StackSettings) -> dict[str, str]:
    """This process's environment plus the gateway settings given to the stack as flags, as the gateway's own
    variables: the environment, not the children's argv, where `ps` would show a password. A value the stack read
    from the environment (or a _FILE variable) is already there, and a file's contents stay in the file."""
    env = dict(os.environ)
    for name, variable in GATEWAY_SECRET_URLS.items():
        value: str = getattr(settings, name)
        # from_environment cannot fail here: the CLI read the same variables successfully.
        if value and from_environment(variable, env)[0] != value:
            env[variable] = value
    if settings.allow_local_fetch:
        # Added to what the environment already allows, never replacing it.
        allowed = [cidr.strip() for cidr in env.get(FETCH_ALLOW_NETWORKS_VARIABLE, "").split(",") if cidr.strip()]
        env[FETCH_ALLOW_NETWORKS_VARIABLE] = ",".join([*allowed, *(n for n in LOCAL_NETWORKS if n not in allowed)])
    return env
