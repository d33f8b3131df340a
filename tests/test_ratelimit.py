"""Rate limits: GCRA in memory on a fake clock, and globally across Redis clients."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.needs import require_redis
from tokenomy.admission.ratelimit import (
    Limits,
    MemoryRateLimiter,
    RateLimitStage,
    Scope,
    format_reset,
)
from tokenomy.admission.redis_limiter import RedisRateLimiter
from tokenomy.core.call import Call
from tokenomy.core.errors import RateLimited
from tokenomy.core.keys import ApiKey
from tokenomy.core.usage import Usage
from tokenomy.store.redis_scripts import ScriptClient

REDIS_DB = 13


class FakeClock:
    def __init__(self, t: float = 5000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def key(limits: Limits, id: str = "k1") -> Scope:
    return Scope("key", id, limits)


def test_requests_per_minute_with_headers_and_retry_after() -> None:
    clock = FakeClock()
    rl = MemoryRateLimiter(clock)
    s = key(Limits(requests_per_minute=10))
    tickets = [rl.try_acquire([s], 0) for _ in range(10)]
    assert tickets[0].headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
    }
    assert tickets[-1].headers["x-ratelimit-remaining-requests"] == "0"
    assert tickets[-1].headers["x-ratelimit-reset-requests"] == "1m0s"
    with pytest.raises(RateLimited) as e:
        rl.try_acquire([s], 0)
    assert e.value.status == 429
    assert e.value.retry_after == pytest.approx(6.0)
    h = e.value.response_headers()
    assert h["Retry-After"] == "6" and h["retry-after-ms"] == "6000"
    assert h["x-ratelimit-remaining-requests"] == "0"
    clock.t += 5.9
    with pytest.raises(RateLimited):
        rl.try_acquire([s], 0)
    clock.t += 0.1
    rl.try_acquire([s], 0)  # one replenished


def test_over_a_long_run_the_rate_holds() -> None:
    clock = FakeClock()
    rl = MemoryRateLimiter(clock)
    s = key(Limits(requests_per_minute=120))
    admitted = 0
    for _ in range(10 * 60 * 10):  # ten minutes, ten attempts a second
        try:
            rl.try_acquire([s], 0)
            admitted += 1
        except RateLimited:
            pass
        clock.t += 0.1
    # A full bucket to start with, then 2 a second for the 599.9 s after it.
    assert admitted == 120 + 1199


def test_tokens_reserved_up_front_and_corrected_after() -> None:
    clock = FakeClock()
    rl = MemoryRateLimiter(clock)
    s = key(Limits(tokens_per_minute=1000))
    t1 = rl.try_acquire([s], 800)
    assert t1.headers["x-ratelimit-remaining-tokens"] == "200"
    with pytest.raises(RateLimited) as e:
        rl.try_acquire([s], 300)
    assert e.value.retry_after == pytest.approx(6.0)  # 100 tokens at 1000/min
    rl.settle(t1, 100)  # used far less than reserved: 700 back
    t2 = rl.try_acquire([s], 300)
    assert t2.headers["x-ratelimit-remaining-tokens"] == "600"
    rl.settle(t2, 900)  # used more: the bucket goes into debt
    with pytest.raises(RateLimited):
        rl.try_acquire([s], 1)
    rl.settle(t2, 0)  # settling twice changes nothing
    with pytest.raises(RateLimited):
        rl.try_acquire([s], 1)


def test_refunds_never_bank_more_than_a_full_bucket() -> None:
    clock = FakeClock()
    rl = MemoryRateLimiter(clock)
    s = key(Limits(tokens_per_minute=1000))
    t = rl.try_acquire([s], 500)
    clock.t += 120
    rl.settle(t, 0)
    rl.try_acquire([s], 1000)
    with pytest.raises(RateLimited):
        rl.try_acquire([s], 1)


def test_a_request_larger_than_the_token_limit_is_refused_outright() -> None:
    rl = MemoryRateLimiter(FakeClock())
    with pytest.raises(RateLimited) as e:
        rl.try_acquire([key(Limits(tokens_per_minute=1000))], 1001)
    assert e.value.code == "tokens_exceed_limit" and e.value.retry_after is None


def test_concurrency_limit_and_release() -> None:
    rl = MemoryRateLimiter(FakeClock())
    s = key(Limits(concurrent=2))
    a, _b = rl.try_acquire([s], 0), rl.try_acquire([s], 0)
    with pytest.raises(RateLimited):
        rl.try_acquire([s], 0)
    rl.settle(a, 0)
    rl.settle(a, 0)
    assert rl.in_flight(s) == 1
    rl.try_acquire([s], 0)
    with pytest.raises(RateLimited):
        rl.try_acquire([s], 0)


def test_scopes_are_all_or_nothing_and_headers_show_the_tightest() -> None:
    rl = MemoryRateLimiter(FakeClock())
    k = key(Limits(requests_per_minute=100, tokens_per_minute=10_000))
    org = Scope("org", "acme", Limits(requests_per_minute=2))
    model = Scope("model", "glm-5", Limits(tokens_per_minute=1_000))
    t = rl.try_acquire([k, org, model], 400)
    assert t.headers["x-ratelimit-remaining-requests"] == "1"  # the org's
    assert t.headers["x-ratelimit-limit-tokens"] == "1000"  # the model's
    assert t.headers["x-ratelimit-remaining-tokens"] == "600"
    with pytest.raises(RateLimited):
        rl.try_acquire([k, org, model], 700)  # the model refuses: nothing is taken
    t = rl.try_acquire([k, org, model], 600)
    assert t.headers["x-ratelimit-remaining-tokens"] == "0"
    with pytest.raises(RateLimited):
        rl.try_acquire([k, org], 0)  # the org's two requests are used
    t = rl.try_acquire([k], 0)
    assert t.headers["x-ratelimit-remaining-requests"] == "97"  # 3 of the key's 100


def test_reset_format() -> None:
    assert format_reset(0.02) == "20ms"
    assert format_reset(1.5) == "1.5s"
    assert format_reset(360) == "6m0s"
    assert format_reset(61.25) == "1m1.25s"


async def test_stage_reserves_before_and_settles_after() -> None:
    rl = MemoryRateLimiter(FakeClock())
    api_key = ApiKey("key_1", "tk-abc", "", "org_1", None, None, 0, None)
    limits = Limits(requests_per_minute=60, tokens_per_minute=10_000, concurrent=1)
    stage = RateLimitStage(
        rl,
        lambda c: [Scope("key", c.key.id, limits)],
        lambda c: 1000,
    )
    call = Call("chat", "openai", {}, "m", False, api_key)
    await stage.before(call)
    assert call.ratelimit_headers is not None
    assert call.ratelimit_headers["x-ratelimit-remaining-tokens"] == "9000"
    with pytest.raises(RateLimited):
        await stage.before(Call("chat", "openai", {}, "m", False, api_key))  # concurrency 1
    call.usage = Usage(input_tokens=100, output_tokens=50)
    await stage.after(call)
    nxt = Call("chat", "openai", {}, "m", False, api_key)
    await stage.before(nxt)
    assert nxt.ratelimit_headers is not None
    assert nxt.ratelimit_headers["x-ratelimit-remaining-tokens"] == "8850"


# --- Redis: one limit shared by independent clients (as by several gateway replicas) ---


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    require_redis()
    prefix = f"tokenomy-test:rl:{secrets.token_hex(6)}:"
    yield prefix
    r = Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        keys = [k async for k in r.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


def client() -> Redis:
    """A client with its own pool, as each gateway replica has; waits for a free connection."""
    pool = BlockingConnectionPool(host="127.0.0.1", port=6379, db=REDIS_DB, max_connections=16)
    return Redis(connection_pool=pool)


def two_clients() -> tuple[Redis, Redis]:
    return client(), client()


async def hammer(
    rl: RedisRateLimiter, scopes: list[Scope], tokens: int, workers: int, tries: int
) -> list[object]:
    admitted: list[object] = []

    async def worker() -> None:
        for _ in range(tries):
            with contextlib.suppress(RateLimited):
                admitted.append(await rl.acquire(scopes, tokens))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return admitted


async def test_two_redis_clients_share_one_global_limit_exactly(redis_prefix: str) -> None:
    clock = FakeClock(1_700_000_000.0)  # time stands still: nothing replenishes
    r1, r2 = two_clients()
    try:
        a = RedisRateLimiter(r1, redis_prefix, clock=clock)
        # The other replica calls its scripts through the gateway's pipelined client.
        scripts = ScriptClient(db=REDIS_DB)
        b = RedisRateLimiter(r2, redis_prefix, clock=clock, scripts=scripts)
        scopes = [
            key(Limits(requests_per_minute=500)),
            Scope("org", "o", Limits(requests_per_minute=10_000)),
        ]
        got = await asyncio.gather(hammer(a, scopes, 0, 25, 30), hammer(b, scopes, 0, 25, 30))
        assert len(got[0]) + len(got[1]) == 500  # not 500 per client
        assert len(got[0]) > 0 and len(got[1]) > 0
        await b.aclose()
    finally:
        await r1.aclose()
        await r2.aclose()


REPLICA = """
import asyncio, sys
from redis.asyncio import BlockingConnectionPool, Redis
from tokenomy.admission.ratelimit import Limits, RateLimited, Scope
from tokenomy.admission.redis_limiter import RedisRateLimiter

async def main(prefix, now, db):
    pool = BlockingConnectionPool(host="127.0.0.1", port=6379, db=db, max_connections=8)
    r = Redis(connection_pool=pool)
    rl = RedisRateLimiter(r, prefix, clock=lambda: now)
    scopes = [Scope("org", "acme", Limits(requests_per_minute=300))]
    admitted = 0
    async def worker():
        nonlocal admitted
        for _ in range(40):
            try:
                await rl.acquire(scopes, 0)
                admitted += 1
            except RateLimited:
                pass
    await asyncio.gather(*(worker() for _ in range(20)))
    await r.aclose()
    print(admitted)

asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
"""


async def test_two_replica_processes_share_the_limit(redis_prefix: str) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            REPLICA,
            redis_prefix,
            "1700000000",
            str(REDIS_DB),
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outs = [int((await p.communicate())[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(outs) == 300  # not 300 per replica


async def test_two_redis_clients_on_the_server_clock_hold_within_one_percent(
    redis_prefix: str,
) -> None:
    r1, r2 = two_clients()
    limit = 2000
    try:
        a = RedisRateLimiter(r1, redis_prefix)
        b = RedisRateLimiter(r2, redis_prefix)
        scopes = [key(Limits(requests_per_minute=limit))]
        started = time.monotonic()
        got = await asyncio.gather(hammer(a, scopes, 0, 25, 100), hammer(b, scopes, 0, 25, 100))
        elapsed = time.monotonic() - started
        admitted = len(got[0]) + len(got[1])
        # GCRA admits a full bucket plus what replenishes while the test runs.
        replenished = limit * elapsed / 60
        # Per-replica limits would admit twice the limit; a global one stays within 1% of it
        # beyond what the clock replenished.
        assert limit <= admitted <= limit + replenished + 0.01 * limit
    finally:
        await r1.aclose()
        await r2.aclose()


async def test_tokens_reserved_and_corrected_across_clients(redis_prefix: str) -> None:
    clock = FakeClock(1_700_000_000.0)
    r1, r2 = two_clients()
    try:
        a = RedisRateLimiter(r1, redis_prefix, clock=clock)
        b = RedisRateLimiter(r2, redis_prefix, clock=clock)
        scopes = [Scope("model", "glm-5", Limits(tokens_per_minute=10_000))]
        got = await asyncio.gather(hammer(a, scopes, 100, 10, 20), hammer(b, scopes, 100, 10, 20))
        assert len(got[0]) + len(got[1]) == 100  # 100 reservations of 100 tokens
        # Each used only 50: settling from both clients gives back 5,000 tokens.
        await asyncio.gather(
            *(a.settle_now(t, 50) for t in got[0]),  # type: ignore[arg-type]
            *(b.settle_now(t, 50) for t in got[1]),  # type: ignore[arg-type]
        )
        again = await asyncio.gather(hammer(a, scopes, 100, 10, 20), hammer(b, scopes, 100, 10, 20))
        assert len(again[0]) + len(again[1]) == 50
    finally:
        await r1.aclose()
        await r2.aclose()


async def test_concurrency_limit_holds_across_clients_and_nothing_leaks(redis_prefix: str) -> None:
    r1, r2 = two_clients()
    s = key(Limits(concurrent=8))
    in_flight = 0
    peak = 0
    served = 0
    try:
        limiters = [RedisRateLimiter(r1, redis_prefix), RedisRateLimiter(r2, redis_prefix)]

        async def worker(rl: RedisRateLimiter) -> None:
            nonlocal in_flight, peak, served
            for _ in range(20):
                try:
                    t = await rl.acquire([s], 0)
                except RateLimited:
                    await asyncio.sleep(0)
                    continue
                in_flight += 1
                peak = max(peak, in_flight)
                served += 1
                await asyncio.sleep(0.001)
                in_flight -= 1
                rl.settle(t, 0)

        await asyncio.gather(*(worker(limiters[i % 2]) for i in range(30)))
        for rl in limiters:
            await rl.flush()
        assert 0 < peak <= 8 and served > 0
        assert await r1.zcard(redis_prefix + s.name + ":c") == 0
    finally:
        await r1.aclose()
        await r2.aclose()


async def test_a_dead_replicas_slots_expire_with_their_lease(redis_prefix: str) -> None:
    clock = FakeClock(1_700_000_000.0)
    r1, _ = two_clients()
    try:
        rl = RedisRateLimiter(r1, redis_prefix, clock=clock, lease_s=30)
        s = key(Limits(concurrent=1))
        await rl.acquire([s], 0)  # never settled: the replica "died"
        with pytest.raises(RateLimited):
            await rl.acquire([s], 0)
        clock.t += 31
        await rl.acquire([s], 0)
    finally:
        await r1.aclose()


async def test_redis_headers_match_the_memory_backend(redis_prefix: str) -> None:
    clock = FakeClock(1_700_000_000.0)
    r1, _ = two_clients()
    try:
        rl = RedisRateLimiter(r1, redis_prefix, clock=clock)
        mem = MemoryRateLimiter(clock)
        s = key(Limits(requests_per_minute=10, tokens_per_minute=1000))
        for _ in range(3):
            t = await rl.acquire([s], 100)
            assert t.headers == mem.try_acquire([s], 100).headers
        with pytest.raises(RateLimited) as e:
            for _ in range(10):
                await rl.acquire([s], 100)
        assert e.value.retry_after == pytest.approx(6.0)
        assert e.value.headers["x-ratelimit-remaining-tokens"] == "0"
    finally:
        await r1.aclose()


async def test_redis_outage_fails_open_or_closed_as_configured() -> None:
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        s = key(Limits(requests_per_minute=1))
        open_ = RedisRateLimiter(dead, "x:")
        t = await open_.acquire([s], 0)
        assert t.scopes == () and t.headers == {}
        open_.settle(t, 0)
        closed = RedisRateLimiter(dead, "x:", fail_open=False)
        with pytest.raises(Exception, match="onnect"):
            await closed.acquire([s], 0)
    finally:
        await dead.aclose()


async def test_a_limit_of_millions_a_minute_is_counted_to_the_request(redis_prefix: str) -> None:
    # A request is 0.06 ms of a million-a-minute cell: stored with 14 digits (0.01 ms
    # near 1.7e12 ms) the TAT moved by 0.1 ms, each time. A double's own step there
    # (0.00024 ms) still rounds each request's share by up to 0.2%.
    clock = FakeClock(1_700_000_000.0)
    r1, _ = two_clients()
    try:
        rl = RedisRateLimiter(r1, redis_prefix, clock=clock)
        s = key(Limits(requests_per_minute=1_000_000))
        for _ in range(500):
            await rl.acquire([s], 0)
        tat = float(await r1.get(redis_prefix + s.name + ":r"))
        assert tat - clock.t * 1000 == pytest.approx(500 * 0.06, rel=0.002)
    finally:
        await r1.aclose()
