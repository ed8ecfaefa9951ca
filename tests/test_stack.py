"""`python -m tools.stack` end to end: real Tritons, inference services and gateways as the stack's supervised children."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from gateway.store.database import create_private_file, make_private_dir
from tests.gateway.harness import POSTGRES_ADMIN_DSN
from tests.gateway.s3server import REGION, S3Server
from tests.reference import DATA
from tools.stack.cli import banner, parse_settings
from tools.stack.parts import compose
from tools.stack.settings import SettingsError, StackSettings, gateway_environment, validate
from tools.stack.supervisor import Part, Supervisor
from tools.triton_launcher import free_port

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 90.0
KEY_LINE = re.compile(r"demo API key: (rmv_\S+)")
PART_LINE = re.compile(r"^    ((?:triton|inference|gateway)-\d+)\s+pid (\d+)\s")
BASE_LINE = re.compile(r"API base:\s+(\S+)$")
STORAGE_LINE = re.compile(r"  storage: ")
STOPPED_LINE = re.compile(r"((?:triton|inference|gateway)-\d+) pid \d+ stopped")

pytestmark = pytest.mark.timeout(420)


class StackProcess:
    """`python -m tools.stack` on free ports, its merged stdout/stderr collected line by line."""

    def __init__(self, data_dir: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        self.gateway_metrics_port = free_port()
        command = [
            sys.executable, "-m", "tools.stack", f"--data-dir={data_dir}", f"--port={self.port}",
            f"--grpc-port={self.grpc_port}", f"--inference-metrics-port={free_port()}",
            f"--gateway-metrics-port={self.gateway_metrics_port}", f"--triton-http-port={free_port()}",
            f"--triton-grpc-port={free_port()}", f"--triton-metrics-port={free_port()}", *flags,
        ]
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.api_key = ""
        self.base_url = ""
        self.pids: dict[str, int] = {}
        self.all_pids: set[int] = set()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if match := pattern.search(line):
                return match
        pytest.fail(f"no line matching {pattern.pattern!r}; the stack printed:\n" + "\n".join(self.lines))

    def wait_ready(self) -> None:
        """Reads the banner: the API base, the demo key and every part's pid."""
        self.base_url = self.wait_for(BASE_LINE, START_TIMEOUT_S).group(1)
        self.api_key = self.wait_for(KEY_LINE, 10).group(1)
        while not (match := self.wait_for(re.compile(f"{PART_LINE.pattern}|{STORAGE_LINE.pattern}"), 10))[0].startswith(
            "  storage"
        ):
            self.pids[match.group(1)] = int(match.group(2))
        self.all_pids |= set(self.pids.values())

    def wait_restarted(self, part: str, timeout: float) -> int:
        """The pid of `part`'s next start, from the stack's `<part> pid N started` line."""
        pid = int(self.wait_for(re.compile(rf"{part} pid (\d+) started"), timeout).group(1))
        self.all_pids.add(pid)
        return pid

    def wait_exit(self) -> int:
        """Waits (bounded) for the stack to exit and collects the rest of its output."""
        code = self.process.wait(STOP_TIMEOUT_S)
        while True:
            try:
                line = self._queue.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return code

    def output(self) -> str:
        return "\n".join(self.lines)

    def kill_everything(self) -> None:
        """Cleanup whatever happened: the stack and each child it reported, by pid."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for pid in self.all_pids:
            if alive(pid):
                # Each part leads a process group of its own (Triton's backend stubs are in it).
                os.killpg(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        # A zombie still exists; only a running process counts.
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@contextmanager
def running_stack(data_dir: Path, *flags: str, env: dict[str, str] | None = None) -> Iterator[StackProcess]:
    stack = StackProcess(data_dir, *flags, env=env)
    try:
        yield stack
    finally:
        stack.kill_everything()


def request(method: str, url: str, api_key: str = "", body: bytes | None = None,
            content_type: str = "") -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"X-API-Key": api_key} if api_key else {}
    if content_type:
        headers["Content-Type"] = content_type
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers, method=method), timeout=60) as reply:
            return reply.status, dict(reply.headers), json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def multipart_file(content: bytes, filename: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def stop_order(lines: list[str]) -> list[str]:
    return [match[1] for line in lines if (match := STOPPED_LINE.search(line))]


def demo_accounts(data_dir: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(data_dir / "removai.db") as database:
        return database.execute("SELECT name, plan FROM accounts").fetchall()


def removal(stack: StackProcess, base: str = "") -> tuple[int, dict[str, str], dict[str, Any]]:
    form, content_type = multipart_file((DATA / "chelsea.jpg").read_bytes(), "chelsea.jpg")
    return request(
        "POST", f"{base or stack.base_url}/v1/remove-background/file", stack.api_key, form, content_type
    )


@pytest.mark.isnet
@pytest.mark.stack
def test_stack_serves_the_demo_account_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """With two gateways and two inference services, the banner names every part with its pid and the API base
    without /v1; each gateway serves a real cut-out with the demo pro key; SIGTERM stops every child (gateways,
    then inference services, then Triton) with exit 0; a restart on the same data dir prints the same key
    without creating a second account."""
    with running_stack(tmp_path, "--gateways=2", "--inference-services=2") as stack:
        stack.wait_ready()
        assert stack.base_url == f"http://127.0.0.1:{stack.port}"
        assert sorted(stack.pids) == ["gateway-1", "gateway-2", "inference-1", "inference-2", "triton-1"]
        assert all(alive(pid) for pid in stack.pids.values()), stack.pids
        assert f"http://127.0.0.1:{stack.port}/v1/docs" in stack.output()
        assert f"127.0.0.1:{stack.grpc_port}" in stack.output()
        assert f"127.0.0.1:{stack.grpc_port + 10}" in stack.output()
        assert f"http://127.0.0.1:{stack.port + 10}" in stack.output()
        assert (tmp_path / "demo_api_key").stat().st_mode & 0o777 == 0o600

        status, _, body = request("GET", f"{stack.base_url}/v1/account")
        assert status == 401, body
        assert body["success"] is False
        status, headers, body = request("GET", f"{stack.base_url}/v1/account", stack.api_key)
        assert status == 200, body
        assert headers["X-RateLimit-Limit"] == "60"
        assert body["success"] is True
        assert body["data"]["plan"] == "pro"
        assert body["data"]["name"] == "demo"

        for gateway_port in (stack.port, stack.port + 10):
            base = f"http://127.0.0.1:{gateway_port}"
            for _ in range(2):  # two calls: round robin sends one to each inference service
                status, headers, body = removal(stack, base)
                assert status == 200, body
                assert headers["Content-Type"].startswith("application/json")
                assert body["success"] is True
                assert body["data"]["status"] == "completed"
                assert body["data"]["output_url"].startswith(f"{base}/v1/files/")

        stack.process.send_signal(signal.SIGTERM)
        assert stack.wait_exit() == 0, stack.output()
        assert not [name for name, pid in stack.pids.items() if alive(pid)], stack.output()
        order = [name.split("-")[0] for name in stop_order(stack.lines)]
        assert order == ["gateway", "gateway", "inference", "inference", "triton"], stack.output()
        first_key = stack.api_key

    with running_stack(tmp_path) as again:
        again.wait_ready()
        assert again.api_key == first_key
        assert "existing demo account" in again.output()
        assert demo_accounts(tmp_path) == [("demo", "pro")]
        status, _, body = request("GET", f"{again.base_url}/v1/account", again.api_key)
        assert status == 200, body
        again.process.send_signal(signal.SIGTERM)
        assert again.wait_exit() == 0, again.output()
        assert not [name for name, pid in again.pids.items() if alive(pid)], again.output()


@pytest.mark.isnet
@pytest.mark.stack
def test_a_killed_part_is_restarted_and_one_that_keeps_dying_ends_the_stack(tmp_path: Path) -> None:
    """kill -9 of Triton: the gateway keeps answering (503 with Retry-After, never a hang), the other parts keep
    their pids, Triton is restarted and removal works again. Then the inference service killed every time it
    starts: after 5 deaths in a minute the stack exits 1 naming it, its exit and its log, and stops the rest."""
    with running_stack(tmp_path) as stack:
        stack.wait_ready()
        status, _, body = removal(stack)
        assert status == 200, body

        triton = stack.pids["triton-1"]
        os.kill(triton, signal.SIGKILL)
        stack.wait_for(re.compile(rf"triton-1 \(pid {triton}\) was killed by SIGKILL; restarting"), 30)
        status, headers, body = removal(stack)
        assert status in (HTTPStatus.OK, HTTPStatus.SERVICE_UNAVAILABLE), body
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            assert int(headers["Retry-After"]) >= 1
            assert body["success"] is False
            assert body["error"]["code"] == "server_error"
        status, _, body = request("GET", f"{stack.base_url}/v1/account", stack.api_key)
        assert status == 200, body
        new_triton = stack.wait_restarted("triton-1", 30)
        assert new_triton != triton
        stack.wait_for(re.compile(rf"triton-1 pid {new_triton} ready"), START_TIMEOUT_S)
        assert alive(stack.pids["inference-1"]) and alive(stack.pids["gateway-1"]), stack.output()

        # The inference service sees Triton again within its health interval (1 s); allow a few of those.
        deadline = time.monotonic() + 60
        while (result := removal(stack))[0] != HTTPStatus.OK and time.monotonic() < deadline:
            assert result[0] == HTTPStatus.SERVICE_UNAVAILABLE, result
            assert int(result[1]["Retry-After"]) >= 1
        status, headers, body = result
        assert status == 200, body
        assert body["data"]["status"] == "completed"

        pid = stack.pids["inference-1"]
        for death in range(1, 6):
            os.kill(pid, signal.SIGKILL)
            if death < 5:
                pid = stack.wait_restarted("inference-1", 30)
        code = stack.wait_exit()
        output = stack.output()
        assert code == 1, output
        assert f"giving up: inference-1 died 5 times within 60 s (last: pid {pid} was killed by SIGKILL)" in output
        assert str(tmp_path / "logs" / "inference-1.log") in output
        assert not [pid for pid in stack.all_pids if alive(pid)], output


def _settings(data_dir: Path, **overrides: Any) -> StackSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1", "data_dir": data_dir, "port": free_port(), "grpc_port": free_port(),
        "inference_metrics_port": free_port(), "gateway_metrics_port": free_port(), "triton_http_port": free_port(), "triton_grpc_port": free_port(),
        "triton_metrics_port": free_port(), "log_level": "INFO", "model_repository": ROOT / "triton_models",
        **overrides,
    }
    return StackSettings(**values)


def _stub_models(triton_pid: int) -> list[str]:
    """The model of each Triton Python stub process under triton_pid (argv[1] is <repo>/<model>/1/model.py)."""
    models = []
    for child in psutil.Process(triton_pid).children():
        try:
            argv = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if argv and argv[0].endswith("triton_python_backend_stub"):
            models.append(Path(argv[1]).parent.parent.name)
    return sorted(models)


@pytest.mark.isnet
@pytest.mark.stack
def test_models_flag_loads_only_the_named_models(tmp_path: Path) -> None:
    """--models=isnet: Triton starts one stub process (isnet's), not one per model in the repository, and
    GET /v1/models lists every model of the repository (the others load when first named); removal works; the
    banner says what is loaded."""
    with running_stack(tmp_path, "--models=isnet") as stack:
        stack.wait_ready()
        assert "  models: isnet" in stack.output()
        assert _stub_models(stack.pids["triton-1"]) == ["isnet"]
        status, _, body = request("GET", f"{stack.base_url}/v1/models")
        assert status == 200, body
        assert [model["name"] for model in body["data"]["models"]] == ["isnet", "isnet_int8"]
        status, _, body = removal(stack)
        assert status == 200, body
        stack.process.send_signal(signal.SIGTERM)
        assert stack.wait_exit() == 0, stack.output()


def test_models_flag_refuses_a_model_the_repository_lacks(tmp_path: Path) -> None:
    """An unknown name in --models is a settings error (exit 2) naming the models the repository has."""
    assert parse_settings(["--models=isnet, isnet_int8"]).models == ("isnet", "isnet_int8")
    assert parse_settings([]).models == ("isnet",)
    assert parse_settings(["--models="]).models == ()
    with pytest.raises(SettingsError, match=r"--models: u2net not in .*triton_models; it has isnet, isnet_int8"):
        validate(_settings(tmp_path, models=("isnet", "u2net")))


def test_the_inference_service_runs_one_post_process_at_a_time_on_huge_pages_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stack's inference services get postprocess_at_once 1 and glibc's huge-page tunable (measured smaller and
    no slower at 12 MP); a value the caller's environment sets wins, and no other part gets them."""
    monkeypatch.delenv("REMOVAI_INFERENCE_POSTPROCESS_AT_ONCE", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    parts = compose(_settings(tmp_path, inference_services=2)).all
    inference = [part for part in parts if part.name.startswith("inference-")]
    assert len(inference) == 2
    for part in inference:
        assert part.env is not None
        assert part.env["REMOVAI_INFERENCE_POSTPROCESS_AT_ONCE"] == "1"
        assert part.env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert all("GLIBC_TUNABLES" not in (part.env or {}) for part in parts if part not in inference)

    monkeypatch.setenv("REMOVAI_INFERENCE_POSTPROCESS_AT_ONCE", "2")
    part = next(p for p in compose(_settings(tmp_path)).all if p.name.startswith("inference-"))
    assert part.env is not None and part.env["REMOVAI_INFERENCE_POSTPROCESS_AT_ONCE"] == "2"


def test_the_supervisor_does_not_import_the_gateway() -> None:
    """tools.stack stays a small process while the stack runs: the demo account is made by tools.demo_account
    in a short-lived child, so neither the gateway's modules nor SQLAlchemy are loaded by the supervisor
    (they cost it about 100 MB of RSS, measured)."""
    check = ("import sys, tools.stack.cli; print(sorted(m for m in sys.modules "
             "if m.split('.')[0] in ('gateway', 'sqlalchemy', 'aiohttp', 'asyncpg', 'alembic')))")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_the_stack_creates_its_data_dir_as_private_as_the_gateway_wants_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A data dir that does not exist yet (./var on a fresh clone) is created owner-only, its logs folder too, so
    the gateway's check of the folder finds nothing to warn about; a folder that exists is left as it is."""
    data_dir = tmp_path / "fresh" / "var"

    validate(_settings(data_dir))

    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert (data_dir / "logs").stat().st_mode & 0o777 == 0o700
    with caplog.at_level(logging.WARNING, logger="gateway.store.database"):
        make_private_dir(data_dir)
        create_private_file(data_dir / "removai.db")
    assert [record.getMessage() for record in caplog.records] == []

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    validate(_settings(shared))
    assert shared.stat().st_mode & 0o777 == 0o755
    with caplog.at_level(logging.WARNING, logger="gateway.store.database"):
        make_private_dir(shared)
    assert [record.getMessage() for record in caplog.records] == [
        f"{shared} is readable by every user of this machine; chmod o-rwx it"
    ]


def test_replica_ports_that_collide_are_refused_naming_the_flag(tmp_path: Path) -> None:
    """Replica i listens on each port + 10 x (i - 1); a collision between parts is a settings error (exit 2)."""
    settings = _settings(tmp_path, port=18080, triton_http_port=18070, tritons=2)
    with pytest.raises(SettingsError, match=r"--triton-http-port: the triton-2 HTTP port 18080 is also the gateway-1"):
        validate(settings)
    assert parse_settings(["--gateways=2", "--tritons=3"]).gateways == 2
    assert parse_settings(["--database-url=postgresql+asyncpg://db/x"]).database_url == "postgresql+asyncpg://db/x"


async def test_a_part_that_keeps_dying_makes_the_supervisor_give_up_naming_it(tmp_path: Path) -> None:
    """A part that exits at once is restarted with growing backoff; the fifth death within a minute ends the
    stack with an error naming the part, its last exit status and its log; the other parts are stopped."""
    settings = _settings(tmp_path)
    settings.logs_dir.mkdir(parents=True)
    flaky = Part("flaky-1", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                 settings.logs_dir / "flaky-1.log", "nowhere", lambda: False)
    steady = Part("steady-1", [sys.executable, "-c", "import time; time.sleep(600)"],
                  settings.logs_dir / "steady-1.log", "nowhere", lambda: True)
    supervisor = Supervisor([[steady, flaky]])

    assert await asyncio.wait_for(supervisor.start(), 120) is False
    steady_pid = steady.pid
    assert steady_pid is not None and alive(steady_pid)
    await supervisor.stop()
    assert supervisor.failure is not None
    message = str(supervisor.failure)
    assert message.startswith(f"giving up: flaky-1 died 5 times within 60 s (last: pid {flaky.pid} exited with "
                               "status 3); its log is ")
    assert str(settings.logs_dir / "flaky-1.log") in message
    assert "boom" in message
    assert len(flaky.deaths) == 5
    gaps = [later - earlier for earlier, later in itertools.pairwise(flaky.deaths)]
    assert all(gap >= backoff for gap, backoff in zip(gaps, (0.5, 1.0, 2.0, 4.0), strict=True)), gaps
    assert not alive(steady_pid)


# Distinctive, so that finding one anywhere is a leak and nothing else: PostgreSQL (trust auth) ignores the
# password, moto takes any key, and Redis' default user (nopass) accepts any password.
DATABASE_PASSWORD = "pg-Pw-3b9e51d7"
STORAGE_SECRET = "s3-Sk-a04c77e2"
REDIS_PASSWORD = "rd-Pw-19f6c0b4"
SECRETS = (DATABASE_PASSWORD, STORAGE_SECRET, REDIS_PASSWORD)


def test_secret_urls_come_from_the_environment_and_are_masked_in_the_banner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without flags the stack reads the gateways' URLs from REMOVAI_GATEWAY_* or the file their _FILE names, and
    leaves them there for its children (a file's contents are not copied into the environment); a flag's value
    is handed over as the variable. The banner shows every URL with its password and credentials as ***."""
    for name in list(os.environ):
        if name.upper().startswith("REMOVAI_GATEWAY_"):
            monkeypatch.delenv(name)
    storage_file = tmp_path / "storage_url"
    storage_file.write_text(f"s3://files?region=eu-west-1&access_key_id=AKID&secret_access_key={STORAGE_SECRET}\n")
    monkeypatch.setenv("REMOVAI_GATEWAY_STORAGE_URL_FILE", str(storage_file))
    monkeypatch.setenv("REMOVAI_GATEWAY_REDIS_URL", f"redis://default:{REDIS_PASSWORD}@127.0.0.1:6379/0")
    flag_url = f"postgresql+asyncpg://postgres:{DATABASE_PASSWORD}@127.0.0.1:5432/test"
    parsed = parse_settings([f"--data-dir={tmp_path}", f"--database-url={flag_url}"])
    assert parsed.database_url == flag_url
    assert parsed.storage_url == storage_file.read_text().strip()
    assert parsed.redis_url == f"redis://default:{REDIS_PASSWORD}@127.0.0.1:6379/0"

    env = gateway_environment(parsed)
    assert env["REMOVAI_GATEWAY_DATABASE_URL"] == flag_url
    assert "REMOVAI_GATEWAY_STORAGE_URL" not in env and env["REMOVAI_GATEWAY_STORAGE_URL_FILE"] == str(storage_file)
    assert env["REMOVAI_GATEWAY_REDIS_URL"] == parsed.redis_url

    settings = _settings(tmp_path, database_url=parsed.database_url, storage_url=parsed.storage_url,
                         redis_url=parsed.redis_url, gateways=2)
    parts = compose(settings).all
    assert all(not any(secret in word for secret in SECRETS for word in part.command) for part in parts)
    shown = banner(settings, parts, "rmv_demo", "created demo account acct_x (plan pro)")
    assert "  database: postgresql+asyncpg://postgres:***@127.0.0.1:5432/test\n" in shown
    assert "  rate limits: Redis redis://default:***@127.0.0.1:6379/0\n" in shown
    assert "  storage: s3://files?region=eu-west-1&access_key_id=***&secret_access_key=***\n" in shown
    assert f"metrics http://127.0.0.1:{settings.gateway_metrics_port + 10}/metrics" in shown
    assert not [secret for secret in SECRETS if secret in shown]

    monkeypatch.setenv("REMOVAI_GATEWAY_STORAGE_URL_FILE", str(tmp_path / "absent"))
    with pytest.raises(SystemExit) as exited:
        parse_settings([])
    assert exited.value.code == 2


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new database on the local PostgreSQL (trust auth), its URL without a password; dropped afterwards."""
    name = f"removai_test_{uuid.uuid4().hex[:12]}"

    async def execute(statement: str) -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _get(url: str, api_key: str = "") -> tuple[int, str, str]:
    """(status, Content-Type, body text) of a GET, errors included."""
    request_ = urllib.request.Request(url, headers={"X-API-Key": api_key} if api_key else {})
    try:
        with urllib.request.urlopen(request_, timeout=30) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.mark.isnet
@pytest.mark.stack
def test_a_password_given_to_the_stack_appears_in_no_output_log_or_child_argv(tmp_path: Path) -> None:
    """The database password as --database-url, the Redis password in REMOVAI_GATEWAY_REDIS_URL and the storage
    secret in the file REMOVAI_GATEWAY_STORAGE_URL_FILE names: the stack serves with all three (the demo account
    read through PostgreSQL and Redis), warns that the flag puts the password in `ps`, shows each URL with ***
    in the banner, and after SIGTERM none of the secrets is in any line it printed, any file under its log
    directory or any part's command line. Each gateway's metrics are on its metrics port, never the API port."""
    s3 = S3Server.start()
    try:
        storage_file = tmp_path / "storage_url"
        storage_file.write_text(f"s3://{s3.create_bucket()}?endpoint={s3.endpoint}&region={REGION}"
                                f"&access_key_id=AKIDTEST&secret_access_key={STORAGE_SECRET}\n")
        env = {key: value for key, value in os.environ.items() if not key.upper().startswith("REMOVAI_")}
        env |= {"REMOVAI_GATEWAY_REDIS_URL": f"redis://default:{REDIS_PASSWORD}@127.0.0.1:6379/0",
                "REMOVAI_GATEWAY_STORAGE_URL_FILE": str(storage_file)}
        data_dir = tmp_path / "stack"
        with fresh_postgres_database() as database_url:
            with_password = database_url.replace("postgres@", f"postgres:{DATABASE_PASSWORD}@")
            with running_stack(data_dir, "--models=isnet", f"--database-url={with_password}", env=env) as stack:
                stack.wait_ready()
                output = stack.output()
                masked = database_url.replace("postgres@", "postgres:***@")
                assert f"  database: {masked}" in stack.lines, output
                assert "  rate limits: Redis redis://default:***@127.0.0.1:6379/0" in stack.lines, output
                assert "&access_key_id=***&secret_access_key=***" in output
                assert ("--database-url puts a password on the command line, where every user of this machine "
                        "reads it (ps); set REMOVAI_GATEWAY_DATABASE_URL, or REMOVAI_GATEWAY_DATABASE_URL_FILE"
                        ) in output
                metrics_url = f"http://127.0.0.1:{stack.gateway_metrics_port}/metrics"
                assert metrics_url in output

                for name, pid in stack.pids.items():
                    argv = " ".join(psutil.Process(pid).cmdline())
                    assert not [secret for secret in SECRETS if secret in argv], name
                status, _, body = _get(f"{stack.base_url}/v1/account", stack.api_key)
                assert status == 200, body
                assert json.loads(body)["data"]["name"] == "demo"
                status, content_type, body = _get(f"{stack.base_url}/metrics")
                assert (status, content_type) == (404, "application/json; charset=utf-8"), body
                assert json.loads(body)["error"]["code"] == "not_found"
                status, content_type, body = _get(metrics_url)
                assert status == 200 and content_type.startswith("text/plain"), body
                assert 'removai_gateway_requests_total{method="GET",route="/v1/account",status="200"}' in body

                stack.process.send_signal(signal.SIGTERM)
                assert stack.wait_exit() == 0, stack.output()
    finally:
        s3.stop()
    gateway_log = (data_dir / "logs" / "gateway-1.log").read_text()
    assert f"migrating database {masked} to head" in gateway_log
    assert "storing files in bucket" in gateway_log and "rate limiting through Redis" in gateway_log
    leaks = [line for line in stack.lines if any(secret in line for secret in SECRETS)]
    leaks += [str(path) for path in (data_dir / "logs").rglob("*")
              if path.is_file() and any(secret.encode() in path.read_bytes() for secret in SECRETS)]
    assert leaks == []
