"""Per-account requests-per-minute limiting: exact under concurrency, in memory or shared through Redis.

Algorithm: a fixed window of `window_s` seconds (60) that opens at an account's first hit and closes
`window_s` later; the window's remaining lifetime is the key's TTL. We chose a first-hit window over
windows aligned to the clock minute because the whole state is then one counter with an expiry: Redis
alone decides both the count and the reset (one clock, whatever the replicas' clocks say), and the
`X-RateLimit-Reset` header is derived from the very TTL that governs the decision. Like any fixed window
it allows up to 2x the limit across a window boundary; that is the documented trade for O(1) state.

Refused hits do not increment the counter, so a client hammering a closed window is never punished
beyond that window's end: budget returns exactly at `reset_epoch`.
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

_LOGGER = logging.getLogger(__name__)

WINDOW_S = 60
DEFAULT_REDIS_PREFIX = "removai:ratelimit:"

# KEYS[1]: the account's counter. ARGV[1]: limit, ARGV[2]: window in ms.
# Count only allowed hits; set the expiry on the hit that opens the window (and repair a key that
# somehow lost its TTL, so it cannot block an account forever). Returns {allowed, count, pttl_ms}
# from one atomic step, so the headers describe exactly the state the decision was made on.
_HIT_SCRIPT = """
local limit = tonumber(ARGV[1])
local window_ms = tonumber(ARGV[2])
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local allowed = 0
if count < limit then
  count = redis.call('INCR', KEYS[1])
  allowed = 1
end
local ttl = redis.call('PTTL', KEYS[1])
if count > 0 and ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], window_ms)
  ttl = window_ms
end
if ttl < 0 then
  ttl = window_ms
end
return {allowed, count, ttl}
"""


class RateLimiterUnavailable(Exception):
    """The shared rate-limit store (Redis) failed: unreachable (its cause a redis ConnectionError or
    TimeoutError) becomes 503 server_error with Retry-After (gateway.store.outage); any other failure, 500."""


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    """The outcome of one hit, carrying everything the X-RateLimit-* and Retry-After headers need."""

    allowed: bool
    limit: int
    remaining: int
    # UTC epoch seconds at which the current window closes and the full limit is available again.
    reset_epoch: int
    # Seconds a refused client should wait (>= 1); 0 when the hit was allowed.
    retry_after_s: int


class RateLimiter(Protocol):
    """Counts hits per key in the current window and decides whether one more is allowed."""

    async def hit(self, key: str, limit: int) -> RateLimitDecision:
        """Record one request for `key` if it fits in `limit` per window, and report the decision."""
        ...

    async def peek(self, key: str, limit: int) -> RateLimitDecision:
        """The window's state for `key` without counting a request (whether to answer `Expect: 100-continue`:
        the request itself is counted by hit()); always allowed."""
        ...

    async def aclose(self) -> None:
        """Release connections; the limiter is unusable afterwards."""
        ...


def _decision(allowed: bool, limit: int, count: int, ttl_s: float, now_epoch: float) -> RateLimitDecision:
    """Build a decision from the window's count and remaining lifetime."""
    ttl_s = max(ttl_s, 0.0)
    return RateLimitDecision(
        allowed=allowed,
        limit=limit,
        remaining=max(limit - count, 0),
        reset_epoch=math.ceil(now_epoch + ttl_s),
        retry_after_s=0 if allowed else max(1, math.ceil(ttl_s)),
    )


@dataclass(slots=True)
class _Window:
    closes_at: float  # monotonic seconds
    count: int


class MemoryRateLimiter:
    """Single-process limiter for the embedded deployment; exact because no await splits read and write."""

    def __init__(
        self,
        *,
        window_s: float = WINDOW_S,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self._window_s = window_s
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._windows: dict[str, _Window] = {}
        self._next_sweep = monotonic() + window_s

    async def hit(self, key: str, limit: int) -> RateLimitDecision:
        """Record one request for `key` if it fits in `limit` per window, and report the decision."""
        # Everything below runs without yielding to the loop, so concurrent hits serialise exactly.
        now = self._monotonic()
        self._sweep(now)
        window = self._windows.get(key)
        if window is None or window.closes_at <= now:
            window = _Window(closes_at=now + self._window_s, count=0)
            if limit > 0:
                self._windows[key] = window
        allowed = window.count < limit
        if allowed:
            window.count += 1
        return _decision(allowed, limit, window.count, window.closes_at - now, self._wall_clock())

    async def peek(self, key: str, limit: int) -> RateLimitDecision:
        """The window's state for `key` without counting a request; always allowed."""
        now = self._monotonic()
        window = self._windows.get(key)
        if window is None or window.closes_at <= now:
            return _decision(True, limit, 0, self._window_s, self._wall_clock())
        return _decision(True, limit, window.count, window.closes_at - now, self._wall_clock())

    async def aclose(self) -> None:
        """Forget all windows."""
        self._windows.clear()

    def _sweep(self, now: float) -> None:
        """Drop closed windows at most once per window length, so idle accounts do not leak memory."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._window_s
        closed = [key for key, window in self._windows.items() if window.closes_at <= now]
        for key in closed:
            del self._windows[key]


class RedisRateLimiter:
    """Limiter shared by every gateway replica through one Redis counter per key, decided in one Lua call."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = DEFAULT_REDIS_PREFIX,
        window_s: float = WINDOW_S,
        owns_client: bool = False,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self._client = client
        self._prefix = prefix
        self._window_ms = max(1, round(window_s * 1000))
        self._owns_client = owns_client
        self._wall_clock = wall_clock
        self._script = client.register_script(_HIT_SCRIPT)

    @classmethod
    def from_url(
        cls, redis_url: str, *, prefix: str = DEFAULT_REDIS_PREFIX, window_s: float = WINDOW_S
    ) -> "RedisRateLimiter":
        """Open a client (and its own connection pool) for `redis_url`; aclose() closes it."""
        client = aioredis.Redis.from_url(redis_url)
        return cls(client, prefix=prefix, window_s=window_s, owns_client=True)

    async def hit(self, key: str, limit: int) -> RateLimitDecision:
        """Record one request for `key` if it fits in `limit` per window, and report the decision."""
        try:
            raw = await self._script(keys=[self._prefix + key], args=[limit, self._window_ms])
        except RedisError as error:
            _LOGGER.error("rate limit store unavailable for key %s: %s", key, error)
            raise RateLimiterUnavailable(str(error)) from error
        allowed, count, ttl_ms = (int(value) for value in raw)
        return _decision(bool(allowed), limit, count, ttl_ms / 1000, self._wall_clock())

    async def peek(self, key: str, limit: int) -> RateLimitDecision:
        """The window's state for `key` without counting a request; always allowed."""
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.get(self._prefix + key)
                pipe.pttl(self._prefix + key)
                count, ttl_ms = await pipe.execute()
        except RedisError as error:
            _LOGGER.error("rate limit store unavailable for key %s: %s", key, error)
            raise RateLimiterUnavailable(str(error)) from error
        ttl_ms = int(ttl_ms)
        if count is None or ttl_ms < 0:
            return _decision(True, limit, 0, self._window_ms / 1000, self._wall_clock())
        return _decision(True, limit, int(count), ttl_ms / 1000, self._wall_clock())

    async def aclose(self) -> None:
        """Close the Redis client if this limiter opened it."""
        if self._owns_client:
            await self._client.aclose()


def create_rate_limiter(redis_url: str | None, *, window_s: float = WINDOW_S) -> RateLimiter:
    """Return a Redis-backed limiter when `redis_url` is set (several replicas), else an in-memory one."""
    if redis_url:
        _LOGGER.info("rate limiting through Redis (shared across replicas)")
        return RedisRateLimiter.from_url(redis_url, window_s=window_s)
    _LOGGER.info("rate limiting in memory (single process)")
    return MemoryRateLimiter(window_s=window_s)

