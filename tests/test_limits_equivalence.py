"""One behavioural suite for every rate-limit backend: in memory, Redis exact (nothing
leased) and Redis leased. The same steps, the same answers: limits, windows, refunds,
concurrency and headers, so the backends' equivalence is proved, not documented."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.test_ratelimit import REDIS_DB, FakeClock, key, redis_prefix
from tokenomy.admission.ratelimit import Limits, MemoryRateLimiter, RateLimiter, Scope, Ticket
from tokenomy.admission.redis_limiter import RedisRateLimiter
from tokenomy.core.errors import RateLimited
from tokenomy.store.redis_scripts import ScriptClient
from tokenomy.store.scripts import Script

__all__ = ["redis_prefix"]

BACKENDS = ["memory", "redis", "leased"]
NOW = 1_700_000_000.0


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock(NOW)  # time moves only when a test moves it


@pytest.fixture(params=BACKENDS)
async def limiter(
    request: pytest.FixtureRequest, redis_prefix: str, clock: FakeClock
) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter(clock)
        return
    r = Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    # Leased: a lease of up to half of each limit, so that most steps run against one.
    share = 0.5 if request.param == "leased" else 0.0
    rl = RedisRateLimiter(
        r, redis_prefix, clock=clock, share=share, scripts=ScriptClient(db=REDIS_DB)
    )
    try:
        yield rl
    finally:
        await rl.aclose()
        await r.aclose()


async def settle(rl: RateLimiter, ticket: Ticket, actual: int) -> None:
    """Settle and, on Redis, wait until Redis has what went back."""
    rl.settle(ticket, actual)
    if isinstance(rl, RedisRateLimiter):
        await rl.flush()


async def admitted(rl: RateLimiter, scopes: list[Scope], tokens: int, n: int) -> list[Ticket]:
    out = []
    for _ in range(n):
        with contextlib.suppress(RateLimited):
            out.append(await rl.acquire(scopes, tokens))
    return out


async def test_a_requests_limit_admits_exactly_its_burst_then_refuses(limiter: RateLimiter) -> None:
    s = key(Limits(requests_per_minute=10))
    assert len(await admitted(limiter, [s], 0, 25)) == 10
    with pytest.raises(RateLimited) as e:
        await limiter.acquire([s], 0)
    assert e.value.retry_after == pytest.approx(6.0)
    assert e.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert e.value.headers["retry-after-ms"] == "6000"


async def test_the_window_replenishes_at_the_limits_rate(
    limiter: RateLimiter, clock: FakeClock
) -> None:
    s = key(Limits(requests_per_minute=60))
    assert len(await admitted(limiter, [s], 0, 100)) == 60
    clock.t += 5  # five requests' worth come back
    assert len(await admitted(limiter, [s], 0, 100)) == 5
    clock.t += 120  # never more than a full minute's burst
    assert len(await admitted(limiter, [s], 0, 100)) == 60


async def test_tokens_reserved_up_front_and_refunded_on_settle(limiter: RateLimiter) -> None:
    s = key(Limits(tokens_per_minute=1_000))
    first, second = await admitted(limiter, [s], 500, 3)  # a third does not fit
    with pytest.raises(RateLimited):
        await limiter.acquire([s], 1)
    await settle(limiter, first, 100)  # 400 tokens come back
    assert len(await admitted(limiter, [s], 400, 2)) == 1
    await settle(limiter, second, 600)  # an overrun is charged: nothing fits now
    with pytest.raises(RateLimited):
        await limiter.acquire([s], 1)


async def test_a_request_larger_than_the_tokens_limit_is_refused_outright(
    limiter: RateLimiter,
) -> None:
    with pytest.raises(RateLimited) as e:
        await limiter.acquire([key(Limits(tokens_per_minute=100))], 101)
    assert e.value.code == "tokens_exceed_limit"


async def test_concurrency_slots_are_held_until_settled(limiter: RateLimiter) -> None:
    s = key(Limits(concurrent=2))
    a, b = await admitted(limiter, [s], 0, 2)
    with pytest.raises(RateLimited):
        await limiter.acquire([s], 0)
    await settle(limiter, a, 0)
    c = await limiter.acquire([s], 0)
    with pytest.raises(RateLimited):
        await limiter.acquire([s], 0)
    await settle(limiter, b, 0)
    await settle(limiter, c, 0)
    assert len(await admitted(limiter, [s], 0, 3)) == 2


async def test_a_refusal_by_one_scope_takes_nothing_from_the_others(limiter: RateLimiter) -> None:
    k = key(Limits(requests_per_minute=100))
    org = Scope("org", "o", Limits(requests_per_minute=3))
    assert len(await admitted(limiter, [k, org], 0, 10)) == 3
    # The key's own limit lost only the three admitted requests.
    assert len(await admitted(limiter, [k], 0, 200)) == 97


async def test_headers_are_the_same_on_every_backend(
    limiter: RateLimiter, clock: FakeClock
) -> None:
    mem = MemoryRateLimiter(clock)
    k = key(Limits(requests_per_minute=20, tokens_per_minute=2_000))
    org = Scope("org", "o", Limits(requests_per_minute=100, tokens_per_minute=1_500))
    for step in range(8):
        got = await limiter.acquire([k, org], 150)
        want = mem.try_acquire([k, org], 150)
        assert got.headers == want.headers, step
        clock.t += 0.25
    # On to the refusal, step by step: the same answer each time, the same 429 at the end.
    for step in range(20):
        try:
            want = mem.try_acquire([k, org], 150)
        except RateLimited as m:
            with pytest.raises(RateLimited) as e:
                await limiter.acquire([k, org], 150)
            assert e.value.headers == m.headers
            assert e.value.retry_after == pytest.approx(m.retry_after)
            break
        got = await limiter.acquire([k, org], 150)
        assert got.headers == want.headers, step
    else:
        pytest.fail("never refused")


class Counted:
    """A script whose calls, awaited or queued, are counted."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls = 0

    async def __call__(self, **kw: Any) -> Any:
        self.calls += 1
        return await self.script(**kw)

    def submit(self, **kw: Any) -> Any:
        self.calls += 1
        return self.script.submit(**kw)


async def test_the_exact_limiter_makes_one_call_to_admit_and_one_to_give_back(
    redis_prefix: str,
) -> None:
    """Nothing leased: a request's round trips stay two (admit, and settle when there is
    a refund or a slot to give back), never more."""
    r = Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    rl = RedisRateLimiter(r, redis_prefix, scripts=ScriptClient(db=REDIS_DB))
    take, give = rl._take, rl._give = Counted(rl._take), Counted(rl._give)  # type: ignore[assignment]
    try:
        s = key(Limits(requests_per_minute=1_000, tokens_per_minute=10**6, concurrent=10))
        for _ in range(10):
            await settle(rl, await rl.acquire([s], 100), 40)  # a refund and a slot back
        assert (take.calls, give.calls) == (10, 10)
        plain = key(Limits(requests_per_minute=1_000), "k2")
        for _ in range(10):
            await settle(rl, await rl.acquire([plain], 0), 0)  # nothing to give back
        assert (take.calls, give.calls) == (20, 10)
    finally:
        await rl.aclose()
        await r.aclose()
