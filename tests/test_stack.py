"""`python -m tools.stack` end to end: real Triton, inference service and gateway as the stack's children."""

from __future__ import annotations

import json
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
from pathlib import Path
from typing import Any

import pytest

from inference_service.triton_launcher import free_port
from tests.reference import DATA

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 90.0
KEY_LINE = re.compile(r"demo API key: (rmv_\S+)")
PIDS_LINE = re.compile(r"pids: triton=(\d+) inference_service=(\d+) gateway=(\d+)")
STOPPED_LINE = re.compile(r"(gateway|inference service|tritonserver)(?: pid \d+)? stopped")

pytestmark = pytest.mark.timeout(420)


class StackProcess:
    """`python -m tools.stack` on free ports, its merged stdout/stderr collected line by line."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        command = [
            sys.executable, "-m", "tools.stack", f"--data-dir={data_dir}", f"--port={self.port}",
            f"--grpc-port={self.grpc_port}", f"--inference-metrics-port={free_port()}", f"--triton-http-port={free_port()}",
            f"--triton-grpc-port={free_port()}", f"--triton-metrics-port={free_port()}",
        ]
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.api_key = ""
        self.pids: dict[str, int] = {}

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
        self.api_key = self.wait_for(KEY_LINE, START_TIMEOUT_S).group(1)
        triton, inference, gateway = self.wait_for(PIDS_LINE, 10).groups()
        self.pids = {"triton": int(triton), "inference_service": int(inference), "gateway": int(gateway)}

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
        for pid in self.pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        # A zombie still answers kill(0); only a running process counts.
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@contextmanager
def running_stack(data_dir: Path) -> Iterator[StackProcess]:
    stack = StackProcess(data_dir)
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


@pytest.mark.triton
def test_stack_serves_the_demo_account_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """The stack prints a working pro API key, serves a real cut-out, stops every child on SIGTERM with
    exit 0, and a restart on the same data dir prints the same key without creating a second account."""
    with running_stack(tmp_path) as stack:
        stack.wait_ready()
        base = f"http://127.0.0.1:{stack.port}/v1"
        assert all(alive(pid) for pid in stack.pids.values()), stack.pids
        assert f"http://127.0.0.1:{stack.port}/v1/docs" in stack.output()
        assert f"127.0.0.1:{stack.grpc_port}" in stack.output()
        assert (tmp_path / "demo_api_key").stat().st_mode & 0o777 == 0o600

        status, _, body = request("GET", f"{base}/account")
        assert status == 401, body
        assert body["success"] is False
        status, headers, body = request("GET", f"{base}/account", stack.api_key)
        assert status == 200, body
        assert headers["X-RateLimit-Limit"] == "60"
        assert body["success"] is True
        assert body["data"]["plan"] == "pro"
        assert body["data"]["name"] == "demo"

        form, content_type = multipart_file((DATA / "chelsea.jpg").read_bytes(), "chelsea.jpg")
        status, headers, body = request(
            "POST", f"{base}/remove-background/file", stack.api_key, form, content_type
        )
        assert status == 200, body
        assert headers["Content-Type"].startswith("application/json")
        assert body["success"] is True
        assert body["data"]["status"] == "completed"
        assert body["data"]["output_url"].startswith(f"http://127.0.0.1:{stack.port}/v1/files/")

        stack.process.send_signal(signal.SIGTERM)
        assert stack.wait_exit() == 0, stack.output()
        assert not [name for name, pid in stack.pids.items() if alive(pid)], stack.output()
        assert stop_order(stack.lines) == ["gateway", "inference service", "tritonserver"], stack.output()
        first_key = stack.api_key

    with running_stack(tmp_path) as again:
        again.wait_ready()
        assert again.api_key == first_key
        assert "existing demo account" in again.output()
        assert demo_accounts(tmp_path) == [("demo", "pro")]
        status, _, body = request("GET", f"http://127.0.0.1:{again.port}/v1/account", again.api_key)
        assert status == 200, body
        again.process.send_signal(signal.SIGTERM)
        assert again.wait_exit() == 0, again.output()
        assert not [name for name, pid in again.pids.items() if alive(pid)], again.output()


@pytest.mark.triton
def test_a_child_that_dies_is_reported_and_stops_the_stack(tmp_path: Path) -> None:
    """Killing the inference service makes the stack name it, its exit and its log, stop the gateway and
    Triton, and exit non-zero."""
    with running_stack(tmp_path) as stack:
        stack.wait_ready()
        os.kill(stack.pids["inference_service"], signal.SIGKILL)

        code = stack.wait_exit()
        output = stack.output()
        assert code == 1, output
        assert f"inference service (pid {stack.pids['inference_service']}) was killed by SIGKILL" in output
        assert str(tmp_path / "logs" / "inference_service.log") in output
        assert not [name for name, pid in stack.pids.items() if alive(pid)], output
