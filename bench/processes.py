"""What the benches read of the servers they measure, through psutil: a process tree's pids, CPU seconds and
RSS (sampled on a thread, peak kept), the machine's busy CPU seconds (for "other load"), and a free port and a
readiness probe on 127.0.0.1. Shared by bench.stack (our stack) and bench.rembg (rembg's server), so that both
are measured the same way."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Callable
from typing import Self

import psutil


def tree_pids(root: int) -> list[int]:
    """root and every process below it."""
    try:
        return [root, *(child.pid for child in psutil.Process(root).children(recursive=True))]
    except psutil.Error:
        return [root]


def stop_tree(process: subprocess.Popen[bytes], wait_s: float) -> None:
    """SIGTERM to a server started here, SIGKILL after wait_s; then SIGKILL to any of its own descendants that
    outlived it (it should leave none). Only processes of that tree, by pid."""
    descendants = tree_pids(process.pid)[1:]
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(wait_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pid in descendants:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of the process, all its threads; 0 once it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def rss_kb(pid: int) -> int:
    """The process's resident set size in KiB; 0 once it is gone."""
    try:
        return int(psutil.Process(pid).memory_info().rss // 1024)
    except psutil.Error:
        return 0


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has spent: all CPUs' time but idle and iowait."""
    times = psutil.cpu_times()
    return float(times.user + times.nice + times.system + times.irq + times.softirq + times.steal)


class RssSampler:
    """Samples the summed VmRSS of a process tree every `interval_s` on a thread; keeps the peak, and each
    kind of process's share at that moment (`role` names a pid's kind)."""

    def __init__(self, root: int, interval_s: float = 0.05, role: Callable[[int], str] = lambda pid: "process") -> None:
        self._root = root
        self._interval_s = interval_s
        self._role = role
        self._stop = threading.Event()
        self.peak_kb = 0
        self.peak_by_role_kb: dict[str, int] = {}  # each process kind's share at the moment of the peak
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            by_role: dict[str, int] = {}
            for pid in tree_pids(self._root):
                role = self._role(pid)
                by_role[role] = by_role.get(role, 0) + rss_kb(pid)
            if sum(by_role.values()) > self.peak_kb:
                self.peak_kb = sum(by_role.values())
                self.peak_by_role_kb = by_role
            self._stop.wait(self._interval_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
