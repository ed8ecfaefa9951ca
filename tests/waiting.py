"""One way for tests to wait for something that happens elsewhere: `eventually(condition, timeout_s)`.

Tests wait on events where the code offers one; where it does not (a row written by a background task, a
server's health flipping), they poll through this helper instead of hand-written loops. Timeouts are
generous on purpose: the suite must pass on a loaded 2-core machine, and a condition that holds returns at
once, so a large timeout costs nothing when things work.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

# Long enough for a busy 2-core machine running Triton on the CPU; only a failing test ever waits this long.
DEFAULT_TIMEOUT_S = 60.0
_POLL_INTERVAL_S = 0.05


@overload
async def eventually(
    condition: Callable[[], Awaitable[T]], timeout_s: float = ..., *, message: str = ..., interval_s: float = ...
) -> T: ...


@overload
async def eventually(
    condition: Callable[[], T], timeout_s: float = ..., *, message: str = ..., interval_s: float = ...
) -> T: ...


async def eventually(
    condition: Callable[[], Any],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    message: str = "",
    interval_s: float = _POLL_INTERVAL_S,
) -> Any:
    """Call `condition` (sync or async) until it returns a truthy value, and return that value; fail the test
    with `message` and the last value seen if it is still falsy after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{message or 'condition'} not met within {timeout_s:g} s (last value: {value!r})"
            )
        await asyncio.sleep(interval_s)
