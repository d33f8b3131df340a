"""Leased rate limits: admitted from per-process leases, never over a global limit (Redis)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.test_ratelimit import REDIS_DB, FakeClock, client, key, redis_prefix
from tokenomy.admission.ratelimit import Limits, MemoryRateLimiter, Scope
from tokenomy.admission.redis_limiter import LeasedRateLimiter, RedisRateLimiter
from tokenomy.core.errors import RateLimited
from tokenomy.store.redis_scripts import ScriptClient

__all__ = ["redis_prefix"]  # the fixture, shared with the exact limiter's tests

NOW = 1_700_000_000.0


def counting(rl: LeasedRateLimiter) -> list[int]:
    """Counts the limiter's admission calls to Redis: [n]."""
    n = [0]
    take = rl._take

    async def counted(**kw: Any) -> Any:
        n[0] += 1
        return await take(**kw)

    rl._take = counted  # type: ignore[assignment]
    return n


async def tat_ms(r: Redis, k: str) -> float:
    v = await r.get(k)
    return float(v) if v is not None else NOW * 1000


async def admit_all(rl: LeasedRateLimiter, scopes: list[Scope], tokens: int, n: int) -> int:
    got = 0
    for _ in range(n):
        with contextlib.suppress(RateLimited):
            await rl.acquire(scopes, tokens)
            got += 1
    return got


async def test_a_busy_scope_is_admitted_from_its_lease_and_redis_ends_with_the_exact_use(
    redis_prefix: str,
) -> None:
    clock = FakeClock(NOW)  # time stands still: Redis's cells show exactly what was taken
    r = client()
    try:
        rl = LeasedRateLimiter(r, redis_prefix, clock=clock, scripts=ScriptClient(db=REDIS_DB))
        calls = counting(rl)
        limits = Limits(requests_per_minute=1_000_000, tokens_per_minute=10**9, concurrent=1000)
        scopes = [key(limits), Scope("org", "o", Limits(requests_per_minute=2_000_000))]
        for _ in range(2000):
            t = await rl.acquire(scopes, 500)
            rl.settle(t, 120)
        assert calls[0] < 40  # not one per request: the leases doubled up to 1%
        await rl.aclose()
        # Every lease went back: the cells hold the 2000 requests and the tokens used,
        # and no slot is left counted.
        base = redis_prefix + "key:k1"
        # (Times in ms near 1.7e12 are doubles good to about 0.0002 ms.)
        ms = pytest.approx
        assert await tat_ms(r, base + ":r") - NOW * 1000 == ms(2000 * 0.06, abs=0.01)
        assert await tat_ms(r, base + ":t") - NOW * 1000 == ms(2000 * 120 * 6e-5, abs=0.01)
        org = await tat_ms(r, redis_prefix + "org:o:r") - NOW * 1000
        assert org == ms(2000 * 0.03, abs=0.01)
        assert await r.zcard(base + ":c") == 0
    finally:
        await r.aclose()


async def test_a_new_lease_on_a_large_limit_reaches_its_size_in_a_few_calls(
    redis_prefix: str,
) -> None:
    """A tenant's first requests: doubling from one request, a lease on a limit of
    100 million a minute (a cap of a million at 1%) asked Redis again at its 2nd, 4th,
    8th, ... request, six times in its first 60; a gateway serving 1,000 such keys made a
    Redis call for one request in ten. The first call asks for a 64th of the cap."""
    clock = FakeClock(NOW)
    r = client()
    try:
        rl = LeasedRateLimiter(r, redis_prefix, clock=clock, scripts=ScriptClient(db=REDIS_DB))
        calls = counting(rl)
        big = Limits(requests_per_minute=10**8, tokens_per_minute=10**11, concurrent=100_000)
        scopes = [key(big), Scope("org", "o", Limits(requests_per_minute=10**8))]
        for _ in range(60):
            rl.settle(await rl.acquire(scopes, 2_000), 150)
        assert calls[0] <= 2
        # A small limit keeps to doubling from one: 600 a minute is a cap of 6.
        small = [Scope("key", "k2", Limits(requests_per_minute=600))]
        calls[0] = 0
        for _ in range(6):
            rl.settle(await rl.acquire(small, 0), 0)
        assert calls[0] == 3  # 1 + 2, then 3 more at the cap
        await rl.aclose()
    finally:
        await r.aclose()


async def test_two_leased_replicas_never_exceed_a_global_limit(redis_prefix: str) -> None:
    clock = FakeClock(NOW)
    r1, r2 = client(), client()
    try:
        a = LeasedRateLimiter(r1, redis_prefix, clock=clock)
        b = LeasedRateLimiter(r2, redis_prefix, clock=clock, scripts=ScriptClient(db=REDIS_DB))
        scopes = [key(Limits(requests_per_minute=5000))]  # 1%: leases of up to 50

        async def hammer(rl: LeasedRateLimiter) -> int:
            counts = await asyncio.gather(*(admit_all(rl, scopes, 0, 250) for _ in range(25)))
            return sum(counts)

        first = await asyncio.gather(hammer(a), hammer(b))
        # What one holds unused the other cannot have: at most 50 each short of the limit.
        assert 5000 - 2 * 50 <= sum(first) <= 5000
        assert first[0] > 0 and first[1] > 0
        await a.aclose()
        await b.aclose()
        # Handed back, the rest is there for a third: the total is the limit, exactly.
        c = LeasedRateLimiter(r1, redis_prefix, clock=clock)
        rest = await admit_all(c, scopes, 0, 200)
        await c.aclose()
        assert sum(first) + rest == 5000
    finally:
        await r1.aclose()
        await r2.aclose()


async def test_a_limit_too_small_to_share_is_exact_per_request(redis_prefix: str) -> None:
    clock = FakeClock(NOW)
    r1, r2 = client(), client()
    try:
        a = LeasedRateLimiter(r1, redis_prefix, clock=clock)
        b = LeasedRateLimiter(r2, redis_prefix, clock=clock)
        calls = counting(a)
        # 1% of either limit is not a whole unit: nothing is leased.
        scopes = [Scope("model", "glm-5", Limits(tokens_per_minute=90, concurrent=2))]
        t1 = await a.acquire(scopes, 30)
        t2 = await b.acquire(scopes, 30)
        with pytest.raises(RateLimited):  # both slots are in use
            await a.acquire(scopes, 10)
        # Settled from a, its slot and unused tokens go back to Redis at once: b has them.
        await a.settle_now(t1, 10)
        t3 = await b.acquire(scopes, 50)  # 90 - 10 - 30 = 50 left
        with pytest.raises(RateLimited):
            await a.acquire(scopes, 1)
        assert calls[0] == 3  # every admission asked Redis
        for t in (t2, t3):
            await b.settle_now(t, 0)
        assert await r1.zcard(redis_prefix + "model:glm-5:c") == 0
        await a.aclose()
        await b.aclose()
    finally:
        await r1.aclose()
        await r2.aclose()


async def test_tokens_refunded_into_a_lease_are_used_before_redis_is_asked(
    redis_prefix: str,
) -> None:
    clock = FakeClock(NOW)
    r = client()
    try:
        rl = LeasedRateLimiter(r, redis_prefix, clock=clock, share=0.1)
        calls = counting(rl)
        scopes = [key(Limits(tokens_per_minute=10_000))]  # a lease keeps up to 1000
        t = await rl.acquire(scopes, 1000)
        rl.settle(t, 100)  # 900 back into the lease
        for _ in range(9):
            rl.settle(await rl.acquire(scopes, 100), 100)
        assert calls[0] == 1
        await rl.aclose()
        assert await tat_ms(r, redis_prefix + "key:k1:t") - NOW * 1000 == pytest.approx(1000 * 6.0)
    finally:
        await r.aclose()


async def test_concurrency_holds_across_leased_replicas_and_nothing_leaks(
    redis_prefix: str,
) -> None:
    r1, r2 = client(), client()
    s = key(Limits(concurrent=200))  # leases of up to 2 slots
    in_flight = peak = served = 0
    try:
        limiters = [LeasedRateLimiter(r1, redis_prefix), LeasedRateLimiter(r2, redis_prefix)]
        # A third replica holds 150 slots the exact way: only 50 are left to share.
        other = RedisRateLimiter(r1, redis_prefix)
        held = [await other.acquire([s], 0) for _ in range(150)]

        async def worker(rl: LeasedRateLimiter) -> None:
            nonlocal in_flight, peak, served
            for _ in range(10):
                try:
                    t = await rl.acquire([s], 0)
                except RateLimited:
                    await asyncio.sleep(0.001)
                    continue
                in_flight += 1
                peak = max(peak, in_flight)
                served += 1
                await asyncio.sleep(0.002)
                in_flight -= 1
                rl.settle(t, 0)

        await asyncio.gather(*(worker(limiters[i % 2]) for i in range(80)))
        assert 40 <= peak <= 50 and served > 0
        for t in held:
            await other.settle_now(t, 0)
        for rl in limiters:
            await rl.aclose()
        assert await r1.zcard(redis_prefix + s.name + ":c") == 0
    finally:
        await r1.aclose()
        await r2.aclose()


async def test_requests_arriving_at_an_empty_lease_together_ask_for_one_block(
    redis_prefix: str,
) -> None:
    """32 requests at once find the lease empty: together they ask Redis for one block
    (its cap), not a block each; what a lease holds never exceeds its cap by more than
    the requests' own units."""
    r = client()
    try:
        rl = LeasedRateLimiter(r, redis_prefix, scripts=ScriptClient(db=REDIS_DB))
        take = rl._take
        asked = {"requests": 0, "tokens": 0, "slots": 0}

        async def counted(*, keys: list[str], args: list[Any]) -> Any:
            # args: now, n, lease, member, then rpm, tpm, conc, need r, need t, +r, +t, +s.
            asked["requests"] += args[9]
            asked["tokens"] += args[10]
            asked["slots"] += args[11]
            return await take(keys=keys, args=args)

        rl._take = counted  # type: ignore[assignment]
        s = key(Limits(requests_per_minute=100_000, tokens_per_minute=10**7, concurrent=10_000))
        tickets = await asyncio.gather(*(rl.acquire([s], 100) for _ in range(32)))
        lease = rl._leases[s.name]
        assert lease.requests is not None and lease.tokens is not None
        # Caps: 1000 requests, 100,000 tokens, 100 slots (1% of each limit).
        assert asked["requests"] <= 1000 and asked["tokens"] <= 100_000
        assert asked["slots"] <= 100
        assert lease.requests.asked == lease.tokens.asked == lease.slots_asked == 0
        assert len(lease.free) + len(lease.busy) <= 100 + 32
        for t in tickets:
            rl.settle(t, 100)
        await rl.aclose()
        assert await r.zcard(redis_prefix + s.name + ":c") == 0
    finally:
        await r.aclose()


async def test_idle_leases_go_back_and_held_slots_are_renewed(redis_prefix: str) -> None:
    clock = FakeClock(NOW)
    r = client()
    try:
        rl = LeasedRateLimiter(r, redis_prefix, clock=clock, lease_s=30, idle_s=1)
        rival = LeasedRateLimiter(r, redis_prefix, clock=clock, lease_s=30)
        scopes = [key(Limits(requests_per_minute=100_000, concurrent=1))]
        for _ in range(6):  # the first call takes 1 + 15 (a 64th of the cap of 1,000)
            rl.settle(await rl.acquire([key(Limits(requests_per_minute=100_000))], 0), 0)
        base = redis_prefix + "key:k1"
        ahead = await tat_ms(r, base + ":r") - NOW * 1000
        assert ahead == pytest.approx(16 * 0.6, abs=0.01)  # 10 of them unused
        await rl.upkeep(clock.t + 1)  # unused for idle_s: back whole, and forgotten
        await rl.flush()
        assert await tat_ms(r, base + ":r") - NOW * 1000 == pytest.approx(6 * 0.6, abs=0.01)
        assert rl._leases == {}

        # A slot in use for longer than its lease stays counted while it is renewed.
        long_call = await rl.acquire(scopes, 0)
        clock.t += 20
        await rl.upkeep(clock.t)
        await rl.flush()
        clock.t += 20  # 40 s after it was taken, 20 after it was renewed
        with pytest.raises(RateLimited):
            await rival.acquire(scopes, 0)
        rl.settle(long_call, 0)
        await rl.flush()
        rival.settle(await rival.acquire(scopes, 0), 0)
        await rl.aclose()
        await rival.aclose()
    finally:
        await r.aclose()


async def test_a_dead_replicas_slots_expire_with_their_lease(redis_prefix: str) -> None:
    clock = FakeClock(NOW)
    r = client()
    try:
        dead = LeasedRateLimiter(r, redis_prefix, clock=clock, lease_s=30)
        rival = LeasedRateLimiter(r, redis_prefix, clock=clock, lease_s=30)
        s = key(Limits(concurrent=1))
        await dead.acquire([s], 0)  # never settled nor renewed: the replica "died"
        with pytest.raises(RateLimited):
            await rival.acquire([s], 0)
        clock.t += 31
        await rival.acquire([s], 0)
    finally:
        await r.aclose()


async def test_leased_headers_match_the_memory_backend(redis_prefix: str) -> None:
    clock = FakeClock(NOW)
    r = client()
    try:
        rl = LeasedRateLimiter(r, redis_prefix, clock=clock, share=0.1)
        mem = MemoryRateLimiter(clock)
        s = key(Limits(requests_per_minute=100, tokens_per_minute=10_000))
        for _ in range(30):
            t = await rl.acquire([s], 100)
            assert t.headers == mem.try_acquire([s], 100).headers
        await rl.aclose()
    finally:
        await r.aclose()


async def test_leased_limits_fail_open_when_redis_is_down() -> None:
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        s = key(Limits(requests_per_minute=100_000, concurrent=1000))
        open_ = LeasedRateLimiter(dead, "x:")
        t = await open_.acquire([s], 0)
        assert t.scopes == () and t.headers == {}
        open_.settle(t, 0)
        closed = LeasedRateLimiter(dead, "x:", fail_open=False)
        with pytest.raises(Exception, match="onnect"):
            await closed.acquire([s], 0)
        await open_.aclose()
        await closed.aclose()
    finally:
        await dead.aclose()


def test_the_config_picks_leases_unless_their_share_is_zero() -> None:
    from tokenomy.config import parse_config
    from tokenomy.services import build_limiter

    base = "ledger: {redis_url: 'redis://127.0.0.1:6379/13'}\n"
    assert isinstance(build_limiter(parse_config(base)), LeasedRateLimiter)
    exact = parse_config(base + "limits: {lease_share: 0}\n")
    assert type(build_limiter(exact)) is RedisRateLimiter
