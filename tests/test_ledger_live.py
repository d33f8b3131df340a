"""Live ledger invariants under random operation sequences, in memory and in Redis."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.needs import require_redis
from tokenomy.billing.money import Currency
from tokenomy.ledger.accounts import Budget, BudgetMeter, Mode, Org, OrgMeter, Scope
from tokenomy.ledger.leased import LeasedLedger
from tokenomy.ledger.live import Hold, LiveLedger, MemoryLedger, Shortfall
from tokenomy.ledger.periods import Period
from tokenomy.ledger.snapshot import LiveTotals


@dataclass
class FakeLoader:
    """Durable totals as a database would give them."""

    admin: dict[str, int] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)
    spent: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Request ids whose usage the database has.
    recorded: set[str] = field(default_factory=set)

    def org_totals(self, org_id: str) -> tuple[int, int]:
        return self.admin.get(org_id, 0), self.used.get(org_id, 0)

    def budget_spent(self, meter: BudgetMeter) -> tuple[int, int]:
        return self.spent.get(meter.key, (0, 0))

    def live_totals(self, at_ms: int, request_ids: Collection[str]) -> LiveTotals:
        orgs = {o: self.org_totals(o) for o in self.admin.keys() | self.used.keys()}
        budgets = {k: (n, t, None) for k, (n, t) in self.spent.items()}
        return LiveTotals(orgs, budgets, frozenset(request_ids) & self.recorded)

    def live_snapshot(self, at_ms: int) -> FakeSnapshot:
        totals = self.live_totals(at_ms, ())
        return FakeSnapshot(totals.orgs, totals.budgets, set(self.recorded))


@dataclass
class FakeSnapshot:
    """The loader's totals as of one moment."""

    orgs: dict[str, tuple[int, int]]
    budgets: dict[str, tuple[int, int, int | None]]
    known: set[str]

    def recorded(self, request_ids: Collection[str]) -> frozenset[str]:
        return frozenset(request_ids) & self.known

    def close(self) -> None:
        return None


AT_MS = int(time.time() * 1000)
PREPAID = Org("org_a", "A", Currency.USD, Mode.PREPAID)
POSTPAID = Org("org_b", "B", Currency.USD, Mode.POSTPAID, credit_limit_nanos=500)
DAILY = Budget("bud_d", Scope.KEY, "key_1", Period.DAY, 700, 5_000, "UTC")
LIFETIME_TOKENS = Budget("bud_t", Scope.ORG, "org_a", Period.LIFETIME, None, 20_000, "UTC")


async def make_live(backend: str, loader: FakeLoader) -> AsyncIterator[LiveLedger]:
    if backend == "memory":
        yield MemoryLedger(loader)
        return
    from redis.asyncio import Redis

    from tokenomy.ledger.redis_live import RedisLedger

    prefix = f"tktest:{secrets.token_hex(4)}:"
    exact = RedisLedger.from_url(require_redis(), loader, prefix)
    live: RedisLedger | LeasedLedger = exact
    if backend == "leased":
        # Leased from a meter's first hold on, so every step below runs against a lease.
        live = LeasedLedger(exact, share=0.5, hot_holds=1, flush_s=0.001)
    try:
        yield live
    finally:
        await live.close()
        r = Redis.from_url(require_redis())
        keys = [k async for k in r.scan_iter(match=prefix + "*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()


def hold(i: int, org: Org, amount: int, tokens: int, budgets: tuple[Budget, ...]) -> Hold:
    meters = tuple(b.meter(AT_MS) for b in budgets)
    return Hold(f"req_{i}", OrgMeter(org), meters, amount, tokens, expires_at=1e12)


ops = st.lists(
    st.tuples(
        st.sampled_from(["hold", "settle", "topup"]),
        st.integers(min_value=0, max_value=400),  # amount
        st.integers(min_value=0, max_value=3_000),  # tokens
        st.integers(min_value=0, max_value=100),  # actual, % of the hold
    ),
    max_size=40,
)


@pytest.mark.parametrize("backend", ["memory", "redis", "leased"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, org=st.sampled_from([PREPAID, POSTPAID]))
def test_random_sequences_keep_every_invariant(
    backend: str, ops: list[tuple[str, int, int, int]], org: Org
) -> None:
    asyncio.run(_run_sequence(backend, ops, org))


async def _run_sequence(backend: str, ops: list[tuple[str, int, int, int]], org: Org) -> None:
    loader = FakeLoader(admin={org.id: 1_000})
    budgets = (DAILY, LIFETIME_TOKENS) if org is PREPAID else (DAILY,)
    async for live in make_live(backend, loader):
        open_holds: dict[str, Hold] = {}
        posted = tokens_posted = 0
        admin = 1_000
        for i, (op, amount, tokens, pct) in enumerate(ops):
            if op == "hold":
                h = hold(i, org, amount, tokens, budgets)
                try:
                    await live.hold(h)
                except Shortfall as s:
                    assert s.needed in (amount, tokens)
                else:
                    open_holds[h.id] = h
                    await live.hold(h)  # the same hold again changes nothing
            elif op == "settle" and open_holds:
                h = open_holds.pop(sorted(open_holds)[0])
                actual = h.amount * pct // 100
                await live.settle(h, actual, h.tokens * pct // 100)
                posted += actual
                tokens_posted += h.tokens * pct // 100
            elif op == "topup":
                admin += amount
                await live.set_admin_total(org.id, admin)
            state = await live.org_state(OrgMeter(org))
            held = sum(h.amount for h in open_holds.values())
            assert state.held == held
            assert state.used == posted
            assert state.admin - state.used - state.held >= org.floor_nanos
            b = await live.budget_state(DAILY.meter(AT_MS))
            assert b.spent == posted and b.held == held
            assert b.spent + b.held <= DAILY.amount_nanos  # type: ignore[operator]
            assert b.tokens_spent + b.tokens_held <= DAILY.token_limit  # type: ignore[operator]
        # Every hold released: nothing stays pinned.
        for h in open_holds.values():
            await live.settle(h, 0, 0)
        state = await live.org_state(OrgMeter(org))
        assert state.held == 0 and state.used == posted


@pytest.mark.parametrize("backend", ["memory", "redis", "leased"])
async def test_concurrent_holds_never_overspend(backend: str) -> None:
    loader = FakeLoader(admin={PREPAID.id: 10_000})
    async for live in make_live(backend, loader):
        results = await asyncio.gather(
            *(live.hold(hold(i, PREPAID, 300, 1, ())) for i in range(100)),
            return_exceptions=True,
        )
        admitted = [r for r in results if r is None]
        refused = [r for r in results if isinstance(r, Shortfall)]
        assert len(admitted) == 10_000 // 300 and len(refused) == 100 - len(admitted)
        state = await live.org_state(OrgMeter(PREPAID))
        assert state.held == 300 * len(admitted)


@pytest.mark.parametrize("backend", ["memory", "redis", "leased"])
async def test_expired_holds_release_and_late_settles_still_post(backend: str) -> None:
    loader = FakeLoader(admin={PREPAID.id: 1_000}, used={PREPAID.id: 100})
    async for live in make_live(backend, loader):
        h = hold(1, PREPAID, 600, 10, (DAILY,))
        h.expires_at = 100.0
        await live.hold(h)
        with pytest.raises(Shortfall):
            await live.hold(hold(2, PREPAID, 350, 1, ()))  # 1000 - 100 - 600 < 350
        await live.hold(h)  # the same hold again is a no-op
        assert (await live.org_state(OrgMeter(PREPAID))).held == 600
        assert await live.expire(now=200.0) == 1
        assert (await live.org_state(OrgMeter(PREPAID))).held == 0
        # The crashed request's settlement arrives after expiry: usage is still posted.
        await live.settle(h, 50, 5)
        state = await live.org_state(OrgMeter(PREPAID))
        assert (state.used, state.held) == (150, 0)
        b = await live.budget_state(DAILY.meter(AT_MS))
        assert (b.spent, b.held, b.tokens_spent, b.tokens_held) == (50, 0, 5, 0)


@pytest.mark.parametrize("backend", ["memory", "redis", "leased"])
async def test_usage_above_its_hold_is_posted_in_full_even_below_the_floor(backend: str) -> None:
    loader = FakeLoader(admin={PREPAID.id: 1_000})
    async for live in make_live(backend, loader):
        h = hold(1, PREPAID, 600, 10, (DAILY,))
        await live.hold(h)
        await live.settle(h, 1_200, 30)  # the vendor billed twice what was held
        state = await live.org_state(OrgMeter(PREPAID))
        assert (state.used, state.held) == (1_200, 0)
        assert state.admin - state.used == -200  # below the floor: posted all the same
        b = await live.budget_state(DAILY.meter(AT_MS))
        assert (b.spent, b.held, b.tokens_spent, b.tokens_held) == (1_200, 0, 30, 0)
        with pytest.raises(Shortfall):
            await live.hold(hold(2, PREPAID, 1, 1, ()))


@pytest.mark.parametrize("backend", ["memory", "redis", "leased"])
async def test_budget_and_token_shortfalls_name_what_ran_out(backend: str) -> None:
    loader = FakeLoader(admin={PREPAID.id: 10**9})
    loader.spent[DAILY.meter(AT_MS).key] = (650, 0)
    async for live in make_live(backend, loader):
        with pytest.raises(Shortfall) as e:
            await live.hold(hold(1, PREPAID, 100, 1, (DAILY,)))
        assert "daily budget bud_d" in e.value.what and e.value.available == 50
        with pytest.raises(Shortfall) as e:
            await live.hold(hold(2, PREPAID, 1, 25_000, (DAILY, LIFETIME_TOKENS)))
        assert e.value.tokens


async def test_redis_state_is_rebuilt_from_the_database_when_lost() -> None:
    loader = FakeLoader(admin={PREPAID.id: 1_000}, used={PREPAID.id: 0})
    async for live in make_live("redis", loader):
        assert isinstance(live, object)
        h = hold(1, PREPAID, 400, 1, ())
        await live.hold(h)
        await live.settle(h, 400, 1)
        # Redis loses everything; the database (the loader) has the settled usage.
        from tokenomy.ledger.redis_live import RedisLedger

        assert isinstance(live, RedisLedger)
        keys = [k async for k in live.r.scan_iter(match=live.p + "*")]
        await live.r.delete(*keys)
        loader.used[PREPAID.id] = 400
        with pytest.raises(Shortfall):
            await live.hold(hold(2, PREPAID, 700, 1, ()))
        await live.hold(hold(3, PREPAID, 600, 1, ()))
        state = await live.org_state(OrgMeter(PREPAID))
        assert (state.admin, state.used, state.held) == (1_000, 400, 600)


async def test_redis_settlements_leave_together_without_waiting_and_close_waits() -> None:
    """The request path's settlements (the ledger's and the rate limiter's, on one shared
    script client) go out in one write with no round trip awaited; closing waits for
    Redis to have them."""
    from redis.asyncio import Redis

    from tokenomy.admission.ratelimit import Limits
    from tokenomy.admission.ratelimit import Scope as LimitScope
    from tokenomy.admission.redis_limiter import RedisRateLimiter
    from tokenomy.ledger.redis_live import RedisLedger
    from tokenomy.store.redis_scripts import ScriptClient

    url = require_redis()
    prefix = f"tktest:{secrets.token_hex(4)}:"
    scripts = ScriptClient.from_url(url)
    r = Redis.from_url(url)
    live = RedisLedger(r, FakeLoader(admin={PREPAID.id: 1_000}), prefix, scripts=scripts)
    limiter = RedisRateLimiter(r, prefix + "rl:", scripts=scripts)
    try:
        h = hold(1, PREPAID, 400, 10, (DAILY,))
        await live.hold(h)
        ticket = await limiter.acquire([LimitScope("key", "k1", Limits(10, 10_000))], 10)
        conn = scripts._conn
        assert conn is not None and conn.transport is not None
        writes: list[bytes] = []
        write = conn.transport.write
        conn.transport.write = lambda data: (writes.append(bytes(data)), write(data))  # type: ignore[method-assign]
        settling = live.settle_soon(h, 250, 7)
        with pytest.raises(StopIteration):  # done at once: it never waited for Redis
            settling.send(None)
        limiter.settle(ticket, 7)
        await live.close()  # waits for both answers before closing the shared client
        await limiter.aclose()
        # Both in the first write (another test's SCRIPT FLUSH may add an EVAL after it).
        assert writes and writes[0].count(b"EVALSHA") == 2
        check = Redis.from_url(url)
        org = await check.hmget(prefix + OrgMeter(PREPAID).key, ["used", "held"])
        assert [int(v) for v in org] == [250, 0]
        bud = await check.hmget(prefix + DAILY.meter(AT_MS).key, ["spent", "tspent", "held"])
        assert [int(v) for v in bud] == [250, 7, 0]
        keys = [k async for k in check.scan_iter(match=prefix + "*")]
        await check.delete(*keys)
        await check.aclose()
    finally:
        await r.aclose()


async def test_a_failed_redis_settlement_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from redis.asyncio import Redis

    from tokenomy.ledger.redis_live import RedisLedger
    from tokenomy.store.redis_scripts import ScriptClient

    srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()  # nothing listens there any more
    live = RedisLedger(
        Redis(port=port), FakeLoader(), "tktest:", scripts=ScriptClient("127.0.0.1", port)
    )
    await live.settle_soon(hold(1, PREPAID, 400, 1, ()), 100, 1)
    await live.close()
    assert "settling hold req_1 in Redis failed" in caplog.text


@pytest.mark.parametrize("backend", ["memory", "redis", "leased"])
async def test_every_hold_settled_or_released_leaves_nothing_held_once_leases_go_back(
    backend: str,
) -> None:
    """Hold, settle, release on every backend; then a lease is given back: what Redis
    itself holds (no reserve subtracted) is nothing, and the usage is exact."""
    loader = FakeLoader(admin={PREPAID.id: 100_000})
    async for live in make_live(backend, loader):
        holds = [hold(i, PREPAID, 100, 50, (DAILY,)) for i in range(6)]  # 600 of 700
        for h in holds:
            await live.hold(h)
        for h in holds[:4]:
            await live.settle(h, 60, 7)
        for h in holds[4:]:
            await live.settle(h, 0, 0)  # released: the request failed
        raw = live
        if isinstance(live, LeasedLedger):
            assert live.leased_holds > 0 and live._leases
            await live.upkeep(time.monotonic() + 3_600)  # idle: every reserve goes back
            assert live._leases == {}
            raw = live.inner  # Redis as it is, no reserve subtracted
        org = await raw.org_state(OrgMeter(PREPAID))
        assert (org.used, org.held) == (240, 0)
        b = await raw.budget_state(DAILY.meter(AT_MS))
        assert (b.spent, b.held, b.tokens_spent, b.tokens_held) == (240, 0, 28, 0)
