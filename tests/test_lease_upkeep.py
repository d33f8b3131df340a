"""Lease upkeep over a thousand tenants: work that grows with the leases, never with their
square, done in bounded slices so the event loop serves requests in between (counted with
fakes, not timed)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from tests.test_ledger_leases import replica
from tests.test_ledger_live import PREPAID, FakeLoader
from tests.test_ratelimit import REDIS_DB, FakeClock, client
from tests.test_ratelimit_leases import NOW, redis_prefix, tat_ms
from tokenomy.admission.ratelimit import Limits, Scope
from tokenomy.admission.redis_limiter import GIVE_BATCH, UPKEEP_SLICE, LeasedRateLimiter
from tokenomy.billing.money import Currency
from tokenomy.ledger.accounts import Mode, Org, OrgMeter
from tokenomy.ledger.leased import SYNC_SLICE
from tokenomy.ledger.meter_lease import MeterLease
from tokenomy.store.redis_scripts import ScriptClient

__all__ = ["redis_prefix"]  # the fixture


def org_lease(live: Any, i: int) -> MeterLease:
    org = Org(f"org_{i}", f"O{i}", Currency.USD, Mode.PREPAID)
    ls: MeterLease = live._engine.add(MeterLease(f"lease:{i}", OrgMeter(org), None, key=f"o{i}"))
    return ls


async def test_ledger_upkeep_over_many_leases_never_compares_two_of_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    live = replica(FakeLoader(admin={PREPAID.id: 10**12}), "tktest:upkeep:")
    now = time.monotonic()
    n = 2000
    for i in range(n):
        ls = org_lease(live, i)
        ls.reserve = 1_000
        if i % 2:
            ls.used_at = now - 60  # idle: its reserve goes back
        else:
            ls.used_at, ls.renewed_at = now, now - 3600  # in use, renewal due
    synced: list[tuple[int, bool]] = []

    async def sync(leases: list[MeterLease], give_back: bool) -> None:
        synced.append((len(leases), give_back))
        for ls in leases:
            if give_back:
                ls.reserve = 0
            ls.renewed_at = now

    compared = 0

    def eq(a: object, b: object) -> bool:
        nonlocal compared
        compared += 1
        return a is b

    monkeypatch.setattr(live, "_sync", sync)  # one script call
    monkeypatch.setattr(MeterLease, "__eq__", eq)
    try:
        await live.upkeep(now)
    finally:
        await live._engine.close()
    # Each lease is looked at once: no lease is compared with another (was n/2 x n/2).
    assert compared == 0
    assert sum(k for k, back in synced if back) == n // 2
    assert sum(k for k, back in synced if not back) == n // 2
    # In script calls of a bounded size (one over all of them held Redis for 13 ms).
    assert max(k for k, _ in synced) <= SYNC_SLICE
    # The idle leases, empty once given back, are forgotten; the others are kept.
    assert len(live._leases) == n // 2


async def test_limiter_upkeep_hands_many_leases_back_in_few_calls_between_requests(
    redis_prefix: str,
) -> None:
    clock = FakeClock(NOW)
    r = client()
    rl = LeasedRateLimiter(r, redis_prefix, clock=clock, scripts=ScriptClient(db=REDIS_DB))
    n = 1500
    limits = Limits(requests_per_minute=1_000_000, tokens_per_minute=10**9, concurrent=1000)
    scopes = [Scope("key", f"k{i}", limits) for i in range(n)]
    try:
        for s in scopes:  # each lease holds a request, tokens and free slots taken ahead
            rl.settle(await rl.acquire([s], 100), 50)
        await rl.flush()
        # Every call's scopes, by the number of loop iterations the test's ticker had seen.
        ticks = 0
        sent: Counter[int] = Counter()
        calls: list[int] = []
        submit = rl._give.submit

        def counted(keys: Any = (), args: Any = ()) -> Any:
            calls.append(int(args[1]))
            sent[ticks] += int(args[1])
            return submit(keys=keys, args=args)

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        rl._give.submit = counted  # type: ignore[method-assign]
        t = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        await rl.upkeep(clock.t + 1)  # every lease idle: all of them go back
        t.cancel()
        await rl.flush()
        # Many scopes a call (not a call a lease), and the loop ran between slices.
        assert sum(calls) == n and max(calls) <= GIVE_BATCH
        assert len(calls) <= -(-n // GIVE_BATCH) + -(-n // UPKEEP_SLICE)
        assert max(sent.values()) <= UPKEEP_SLICE and len(sent) >= n // UPKEEP_SLICE
        assert rl._leases == {}
        # Redis has all of it back: each key's cells count its one request and its 50
        # tokens used, and no slot is held.
        for s in (scopes[0], scopes[n // 2], scopes[-1]):
            base = redis_prefix + s.name
            assert await tat_ms(r, base + ":r") - NOW * 1000 == pytest.approx(0.06, abs=0.001)
            # (A time in ms near 1.7e12 is a double good to 0.000244 ms: one step of it.)
            tat = await tat_ms(r, base + ":t") - NOW * 1000
            assert tat == pytest.approx(50 * 6e-5, abs=2.5e-4)
            assert await r.zcard(base + ":c") == 0
    finally:
        await rl.aclose()
        await r.aclose()
