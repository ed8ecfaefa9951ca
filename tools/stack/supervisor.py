"""Child processes kept running: a Part is one process with its readiness probe; the Supervisor starts tiers of
them in order, restarts any that dies (with backoff, giving up on one that keeps dying) and stops them in reverse."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tools.stack.settings import StackError

_LOGGER = logging.getLogger(__name__)

# The inference service only reports SERVING once its first Triton readiness check passes.
PART_START_TIMEOUT_S = 60.0
# The gateway drains in-flight requests on SIGTERM; past this the stack SIGKILLs a part.
PART_STOP_TIMEOUT_S = 20.0
# A part that dies is restarted after 0.5 s, 1 s, 2 s... (at most BACKOFF_MAX_S); one that dies GIVE_UP_DEATHS
# times within GIVE_UP_WINDOW_S is broken, not unlucky, and the stack stops rather than restart it forever.
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 10.0
GIVE_UP_DEATHS = 5
GIVE_UP_WINDOW_S = 60.0
_POLL_S = 0.2
_LOG_TAIL_LINES = 20


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


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
            _LOGGER.info("%s pid %d stopped (%s)", self.name, process.pid, describe_exit(process.returncode or 0))
        self.kill_group()

    def backoff_s(self) -> float:
        return float(min(BACKOFF_BASE_S * 2 ** (len(self.deaths) - 1), BACKOFF_MAX_S))


async def wait_until_ready(part: Part) -> None:
    """Polls the part's readiness probe until it passes; StackError (with its log's last lines) if the part
    exits first or is not ready within its start_timeout_s."""
    deadline = time.monotonic() + part.start_timeout_s
    while not await asyncio.to_thread(part.ready_probe):
        if part.process is None or part.process.returncode is not None:
            how = describe_exit(part.process.returncode or 0) if part.process else "was never started"
            raise StackError(f"{part.name} {how} before it was ready; last lines of {part.log_path}:\n"
                             f"{log_tail(part.log_path)}")
        if time.monotonic() > deadline:
            raise StackError(f"{part.name} not ready after {part.start_timeout_s:.0f} s; last lines of "
                             f"{part.log_path}:\n{log_tail(part.log_path)}")
        await asyncio.sleep(_POLL_S)
    part.ready.set()


class Supervisor:
    """Starts its tiers in order, each once the one before is ready; restarts any part that dies (with backoff)
    while the others keep serving; stops them in reverse."""

    def __init__(self, tiers: Sequence[Sequence[Part]]) -> None:
        self.tiers = [list(tier) for tier in tiers]
        self.failure: StackError | None = None
        self.finished = asyncio.Event()  # a stop was asked for, or a part keeps dying
        self._tasks: list[asyncio.Task[None]] = []

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
            how = describe_exit(code)
            if len(part.deaths) >= GIVE_UP_DEATHS:
                self._give_up(StackError(
                    f"giving up: {part.name} died {len(part.deaths)} times within {GIVE_UP_WINDOW_S:.0f} s "
                    f"(last: pid {part.pid} {how}); its log is {part.log_path}; last lines:\n"
                    f"{log_tail(part.log_path)}"
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
                    f"last lines:\n{log_tail(part.log_path)}"
                ))
                return False
        return True

    async def stop(self) -> None:
        """No more restarts; then the last tier first (the gateways: no new requests), down to the first."""
        self.finished.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for tier in reversed(self.tiers):
            await asyncio.gather(*(part.stop() for part in tier))
