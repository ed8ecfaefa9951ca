"""Rate limiter tests against both backends: in memory and a real Redis at 127.0.0.1:6379."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from gateway.domain.ratelimit import (
    MemoryRateLimiter,
    RateLimitDecision,
    RateLimiter,
    RateLimiterUnavailable,
    RedisRateLimiter,
    create_rate_limiter,
)
from tests.waiting import eventually

REDIS_URL = "redis://127.0.0.1:6379/0"

LimiterFactory = Callable[..., RateLimiter]


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix unique to this test; every key under it is deleted afterwards."""
    prefix = f"test:ratelimit:{uuid.uuid4().hex}:"
    yield prefix
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[LimiterFactory]:
    """Build limiters of one backend (each Redis one with its own connection pool), closed after the test."""
    opened: list[RateLimiter] = []

    def factory(window_s: float = 60) -> RateLimiter:
        limiter: RateLimiter
        if request.param == "memory":
            limiter = MemoryRateLimiter(window_s=window_s)
        else:
            limiter = RedisRateLimiter.from_url(REDIS_URL, prefix=redis_prefix, window_s=window_s)
        opened.append(limiter)
        return limiter

    yield factory
    for limiter in opened:
        await limiter.aclose()


async def _hit_concurrently(hit: Callable[[], Awaitable[RateLimitDecision]], n: int) -> list[RateLimitDecision]:
    return list(await asyncio.gather(*(hit() for _ in range(n))))


async def test_concurrent_hits_allow_exactly_the_limit(make_limiter: LimiterFactory) -> None:
    """100 concurrent hits on a limit of 10 allow exactly 10, each allowed one seeing a distinct remaining."""
    limiter = make_limiter()
    decisions = await _hit_concurrently(lambda: limiter.hit("acct_1", 10), 100)
    allowed = [d for d in decisions if d.allowed]
    refused = [d for d in decisions if not d.allowed]
    assert len(allowed) == 10
    assert len(refused) == 90
    assert sorted(d.remaining for d in allowed) == list(range(10))
    assert all(d.remaining == 0 and d.retry_after_s >= 1 for d in refused)
    assert all(d.limit == 10 and d.retry_after_s == 0 for d in allowed)


async def test_remaining_counts_down_then_refuses(make_limiter: LimiterFactory) -> None:
    """Sequential hits report remaining 2, 1, 0, then a refusal with remaining 0 and a Retry-After."""
    limiter = make_limiter()
    decisions = [await limiter.hit("acct_2", 3) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[-1].retry_after_s in range(1, 61)


async def test_reset_is_in_the_future_within_a_minute(make_limiter: LimiterFactory) -> None:
    """reset_epoch is a UTC epoch second after now and at most 60 s away, and stable within a window."""
    limiter = make_limiter()
    before = time.time()
    first = await limiter.hit("acct_3", 5)
    after = time.time()
    second = await limiter.hit("acct_3", 5)
    # Bounded by the clock read on both sides of the hit, so a slow (loaded) machine cannot fail it.
    assert before < first.reset_epoch <= after + 61
    assert abs(second.reset_epoch - first.reset_epoch) <= 1


async def test_keys_are_counted_separately(make_limiter: LimiterFactory) -> None:
    """One account exhausting its limit does not consume another account's budget."""
    limiter = make_limiter()
    assert (await limiter.hit("acct_a", 1)).allowed
    assert not (await limiter.hit("acct_a", 1)).allowed
    other = await limiter.hit("acct_b", 1)
    assert other.allowed and other.remaining == 0


async def test_refused_hits_do_not_extend_the_window(make_limiter: LimiterFactory) -> None:
    """Hammering a closed window does not push back its end: the full budget returns at reset."""
    limiter = make_limiter(window_s=1)
    assert (await limiter.hit("acct_4", 2)).allowed
    assert (await limiter.hit("acct_4", 2)).allowed
    refused = await limiter.hit("acct_4", 2)
    assert not refused.allowed
    assert refused.retry_after_s == 1

    async def reopened() -> RateLimitDecision | None:
        decision = await limiter.hit("acct_4", 2)
        return decision if decision.allowed else None

    # Polling is itself the hammering: a limiter whose refused hits pushed the window back would never reopen
    # while it goes on, and the wait would time out. No sleep-then-check, so a slow machine cannot fail it.
    fresh = await eventually(reopened, 30, message="the window reopened while refused hits kept coming")
    assert fresh is not None and fresh.remaining == 1


async def test_zero_limit_refuses_everything(make_limiter: LimiterFactory) -> None:
    """A limit of 0 (an account ops have blocked) refuses with a sane reset and Retry-After."""
    limiter = make_limiter()
    decision = await limiter.hit("acct_5", 0)
    assert not decision.allowed
    assert decision.remaining == 0
    assert decision.retry_after_s >= 1
    assert decision.reset_epoch > time.time()


async def test_two_redis_replicas_share_the_count(redis_prefix: str) -> None:
    """Two RedisRateLimiters with separate connection pools (two gateway replicas) share one budget."""
    replica_a = RedisRateLimiter.from_url(REDIS_URL, prefix=redis_prefix)
    replica_b = RedisRateLimiter.from_url(REDIS_URL, prefix=redis_prefix)
    try:
        decisions = await asyncio.gather(
            *(replica.hit("acct_shared", 10) for _ in range(30) for replica in (replica_a, replica_b))
        )
        assert sum(d.allowed for d in decisions) == 10
        after = await replica_b.hit("acct_shared", 10)
        assert not after.allowed
        assert after.remaining == 0
    finally:
        await replica_a.aclose()
        await replica_b.aclose()


async def test_memory_limiter_window_follows_the_clock() -> None:
    """With an injected clock the memory limiter reopens the window exactly at its end, not before."""
    now = [1000.0]
    limiter = MemoryRateLimiter(window_s=60, monotonic=lambda: now[0], wall_clock=lambda: 1_700_000_000 + now[0])
    first = await limiter.hit("acct_6", 1)
    assert first.allowed
    assert first.reset_epoch == 1_700_000_000 + 1060
    now[0] = 1059.5
    refused = await limiter.hit("acct_6", 1)
    assert not refused.allowed
    assert refused.retry_after_s == 1
    assert refused.reset_epoch == first.reset_epoch
    now[0] = 1060.0
    assert (await limiter.hit("acct_6", 1)).allowed


async def test_unreachable_redis_raises_rate_limiter_unavailable() -> None:
    """A Redis that cannot be reached surfaces as RateLimiterUnavailable, not a raw redis error."""
    limiter = RedisRateLimiter.from_url("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(RateLimiterUnavailable):
            await limiter.hit("acct_7", 10)
    finally:
        await limiter.aclose()


async def test_factory_picks_backend_from_url() -> None:
    """create_rate_limiter gives Redis when a URL is set and memory when it is None."""
    memory = create_rate_limiter(None)
    shared = create_rate_limiter(REDIS_URL)
    try:
        assert isinstance(memory, MemoryRateLimiter)
        assert isinstance(shared, RedisRateLimiter)
    finally:
        await memory.aclose()
        await shared.aclose()


async def test_peek_reports_the_window_without_counting(make_limiter: LimiterFactory) -> None:
    """peek() (the Expect: 100-continue check) shows the window as it stands and never spends budget, even
    when the window is used up; on an unopened window it shows the whole limit."""
    limiter = make_limiter()
    fresh = await limiter.peek("acct_p", 2)
    assert fresh.allowed and fresh.remaining == 2 and fresh.limit == 2
    first = await limiter.hit("acct_p", 2)
    peeked = [await limiter.peek("acct_p", 2) for _ in range(3)]
    assert [decision.remaining for decision in peeked] == [1, 1, 1]
    assert all(abs(decision.reset_epoch - first.reset_epoch) <= 1 for decision in peeked)
    assert (await limiter.hit("acct_p", 2)).allowed
    assert not (await limiter.hit("acct_p", 2)).allowed
    spent = await limiter.peek("acct_p", 2)
    assert spent.allowed and spent.remaining == 0 and spent.retry_after_s == 0
