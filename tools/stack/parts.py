"""Which processes make a stack and how each is started and told ready: the Tritons, the inference services
and the gateways (in that order of tiers), the demo account's one-off process, and a lone inference service."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tools.stack.settings import (
    REPLICA_PORT_STEP,
    ROOT,
    WILDCARD_HOSTS,
    StackError,
    StackSettings,
    gateway_environment,
)
from tools.stack.supervisor import Part, describe_exit, wait_until_ready
from tools.triton_launcher import TritonLaunchError, TritonServer, free_port, prepare_backend_directory

_LOGGER = logging.getLogger(__name__)

DEMO_KEY_FILE = "demo_api_key"
URL_SIGNING_SECRET_FILE = "url_signing_secret"  # as gateway.domain.links names it
# Loading ISNet into Triton's Python backend takes tens of seconds on a small CPU machine.
TRITON_START_TIMEOUT_S = 180.0
TRITON_STOP_TIMEOUT_S = 30.0


@dataclass
class StackParts:
    """Every replica of every part, by tier: each tier needs the one before it ready."""

    tritons: list[Part]
    inference_services: list[Part]
    gateways: list[Part]

    @property
    def tiers(self) -> list[list[Part]]:
        return [self.tritons, self.inference_services, self.gateways]

    @property
    def all(self) -> list[Part]:
        return [part for tier in self.tiers for part in tier]


def compose(settings: StackSettings) -> StackParts:
    """The stack's parts for these settings: replica i of each on its ports + i x REPLICA_PORT_STEP, the
    inference services balancing over every Triton and the gateways over every inference service."""
    python = sys.executable
    step = REPLICA_PORT_STEP
    log_verbose = 1 if settings.log_level == "DEBUG" else 0
    tritons: list[Part] = []
    for i in range(settings.tritons):
        triton = TritonServer(
            settings.model_repository, settings.data_dir / f"triton-{i + 1}", settings.host,
            settings.triton_grpc_port + i * step, settings.triton_http_port + i * step,
            settings.triton_metrics_port + i * step, log_verbose=log_verbose, models=settings.models,
        )
        tritons.append(Part(
            f"triton-{i + 1}", triton.command(), settings.logs_dir / f"triton-{i + 1}.log",
            f"gRPC {settings.address(triton.grpc_port)}, HTTP http://{settings.address(triton.http_port)}, "
            f"metrics http://{settings.address(triton.metrics_port)}/metrics",
            _triton_ready_probe(settings, triton.http_port), start_timeout_s=TRITON_START_TIMEOUT_S,
            stop_timeout_s=TRITON_STOP_TIMEOUT_S, env=triton.environment(),
            before_start=_backend_preparer(triton.workdir),
        ))
    triton_urls = ",".join(settings.address(settings.triton_grpc_port + i * step) for i in range(settings.tritons))
    inference_services: list[Part] = []
    # One full-size post-process at a time, on a C heap that asks for transparent huge pages: at 12 MP c=4 on
    # 2 cores the service peaked 200-290 MB lower and used 0.1 CPU s/image less than with two at a time
    # (docs/benchmarks.md, "Memory at 12 MP"); one at a time on 4 KiB pages was 7% slower. What the caller set
    # wins.
    inference_env = {"REMOVAI_INFERENCE_POSTPROCESS_AT_ONCE": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
                     **os.environ}
    for i in range(settings.inference_services):
        grpc_address = settings.address(settings.grpc_port + i * step)
        metrics_port = settings.inference_metrics_port + i * step
        inference_services.append(Part(
            f"inference-{i + 1}",
            [python, "-m", "inference_service", f"--host={settings.host}", f"--port={settings.grpc_port + i * step}",
             f"--metrics-port={metrics_port}", f"--triton-url={triton_urls}", f"--log-level={settings.log_level}"],
            settings.logs_dir / f"inference-{i + 1}.log",
            f"gRPC {grpc_address}, metrics http://{settings.address(metrics_port)}/metrics",
            _inference_ready_probe(grpc_address), env=inference_env,
        ))
    inference_url = ",".join(
        settings.address(settings.grpc_port + i * step) for i in range(settings.inference_services)
    )
    gateway_env = gateway_environment(settings)
    if "REMOVAI_GATEWAY_URL_SIGNING_SECRET" not in gateway_env:
        gateway_env["REMOVAI_GATEWAY_URL_SIGNING_SECRET"] = _url_signing_secret(settings.data_dir)
    gateways: list[Part] = []
    for i in range(settings.gateways):
        port = settings.port + i * step
        metrics_port = settings.gateway_metrics_port + i * step
        command = [
            python, "-m", "gateway", f"--host={settings.host}", f"--port={port}", f"--metrics-port={metrics_port}",
            f"--inference-url={inference_url}", f"--data-dir={settings.data_dir}",
            f"--log-level={settings.log_level}",
        ]
        if settings.host in WILDCARD_HOSTS:
            # output_url links must name an address clients can reach, not 0.0.0.0.
            command.append(f"--public-url={settings.gateway_url(i)}")
        gateways.append(Part(
            f"gateway-{i + 1}", command, settings.logs_dir / f"gateway-{i + 1}.log",
            f"{settings.gateway_url(i)}, metrics http://{settings.address(metrics_port)}/metrics",
            _gateway_ready_probe(settings.connect_host, port), env=gateway_env,
        ))
    return StackParts(tritons, inference_services, gateways)


async def demo_api_key(data_dir: Path, env: dict[str, str]) -> tuple[str, str]:
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
        raise StackError(f"the demo account could not be made (tools.demo_account {describe_exit(child.returncode or 0)}):"
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


def _triton_ready(host: str, port: int, models: tuple[str, ...]) -> bool:
    """The models Triton loads at start are ready (none named: Triton's own readiness, every model loaded, as it
    runs with --strict-readiness; not used with models named, as a failed load of a model asked for later turns
    it false for good while these still serve)."""
    for path in [f"/v2/models/{name}/ready" for name in models] or ["/v2/health/ready"]:
        connection = http.client.HTTPConnection(host, port, timeout=2.0)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status != HTTPStatus.OK:
                return False
        except OSError:
            return False
        finally:
            connection.close()
    return True


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


def _triton_ready_probe(settings: StackSettings, http_port: int) -> Callable[[], bool]:
    return lambda: _triton_ready(settings.connect_host, http_port, settings.models)


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
