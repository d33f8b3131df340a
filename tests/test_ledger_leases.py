"""Leased live balances: busy meters held from per-process reserves, never below a floor
or over a budget, and Redis ends with the exact usage (real Redis)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis import exceptions as rx
from redis.asyncio import Redis
from sqlalchemy.exc import OperationalError

from tests.needs import require_redis
from tests.test_ledger_live import AT_MS, PREPAID, FakeLoader, hold
from tokenomy.billing.money import Currency
from tokenomy.ledger.accounts import Budget, Mode, Org, OrgMeter, Scope
from tokenomy.ledger.leased import LeasedLedger
from tokenomy.ledger.live import LiveStateUnavailable, Shortfall
from tokenomy.ledger.meter_lease import POST_ITEMS, MeterLease
from tokenomy.ledger.periods import Period
from tokenomy.ledger.redis_live import RedisLedger
from tokenomy.store.redis_scripts import ScriptClient

TOKENS_ONLY = Budget("bud_tok", Scope.ORG, PREPAID.id, Period.DAY, None, 10_000, "UTC")


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    p = f"tktest:{secrets.token_hex(4)}:"
    yield p
    r = Redis.from_url(require_redis())
    keys = [k async for k in r.scan_iter(match=p + "*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()


def replica(loader: FakeLoader, prefix: str, **kw: Any) -> LeasedLedger:
    url = require_redis()
    exact = RedisLedger(Redis.from_url(url), loader, prefix, scripts=ScriptClient.from_url(url))
    return LeasedLedger(exact, **kw)


def counting(live: LeasedLedger) -> dict[str, int]:
    """Counts the script calls the ledger makes: exact holds, settles, lease syncs."""
    n = {"hold": 0, "settle": 0, "sync": 0}
    inner = live.inner

    def wrap(name: str, fn: Any) -> Any:
        def counted(**kw: Any) -> Any:
            n[name] += 1
            return fn(**kw)

        counted.submit = lambda **kw: (n.__setitem__(name, n[name] + 1), fn.submit(**kw))[1]  # type: ignore[attr-defined]
        return counted

    inner._hold = wrap("hold", inner._hold)
    inner._settle = wrap("settle", inner._settle)
    live._sync_script = wrap("sync", live._sync_script)
    return n


async def in_rotation(
    live: LeasedLedger, orgs: list[Org], ids: Iterator[int], rounds: int, pause_s: float = 0.0
) -> None:
    """``rounds`` times a request from each org in turn (held, then settled), pausing
    ``pause_s`` after each round."""
    for _ in range(rounds):
        for org in orgs:
            h = hold(next(ids), org, 1_000_000, 50, ())
            await live.hold(h)
            await live.settle_soon(h, 400_000, 20)
        if pause_s:
            await asyncio.sleep(pause_s)


async def redis_org(prefix: str) -> tuple[int, int, int]:
    r = Redis.from_url(require_redis())
    v = await r.hmget(prefix + OrgMeter(PREPAID).key, ["admin", "used", "held"])
    await r.aclose()
    return tuple(int(x or 0) for x in v)  # type: ignore[return-value]


async def lease_records(prefix: str) -> int:
    r = Redis.from_url(require_redis())
    n = len([k async for k in r.scan_iter(match=prefix + "hold:*")])
    n += await r.zcard(prefix + "holds")
    await r.aclose()
    return n


async def test_a_busy_org_is_held_from_its_lease_and_redis_ends_with_the_exact_usage(
    prefix: str,
) -> None:
    live = replica(FakeLoader(admin={PREPAID.id: 10**12}), prefix)
    calls = counting(live)
    for i in range(2000):
        h = hold(i, PREPAID, 1_000_000, 50, ())
        await live.hold(h)
        await live.settle_soon(h, 400_003, 20)
        if i % 50 == 0:
            await asyncio.sleep(0)  # the background sync gets its turn, as under load
    assert calls["hold"] + calls["settle"] + calls["sync"] < 100  # not two a request
    assert live.leased_holds > 1900 and live.syncs == calls["sync"]
    assert live.sync_failures == 0
    await live.close()
    # Every reserve went back: Redis holds the usage to the nano and nothing held.
    assert await redis_org(prefix) == (10**12, 2000 * 400_003, 0)
    assert await lease_records(prefix) == 0


async def test_two_leased_replicas_never_take_a_balance_below_its_floor(prefix: str) -> None:
    loader = FakeLoader(admin={PREPAID.id: 200_000_000})
    replicas = [replica(loader, prefix, share=0.05, hot_holds=1) for _ in range(2)]
    spent = 0
    ids = iter(range(10**9))

    async def worker(live: LeasedLedger) -> None:
        nonlocal spent
        refused = 0
        while refused < 3:
            h = hold(next(ids), PREPAID, 1_000_000, 1, ())
            try:
                await live.hold(h)
            except Shortfall:
                refused += 1
                await asyncio.sleep(0.005)
                continue
            refused = 0
            await asyncio.sleep(0)
            await live.settle_soon(h, 1_000_000, 1)
            spent += 1_000_000
            admin, used, held = await redis_org(prefix)
            assert admin - used - held >= 0  # the floor holds at every step

    await asyncio.gather(*(worker(replicas[i % 2]) for i in range(16)))
    for live in replicas:
        await live.close()
    _, used, held = await redis_org(prefix)
    assert used == spent <= 200_000_000 and held == 0
    # Refused early by the other's reserve at most: a few holds' worth, not more.
    assert spent >= 200_000_000 - 10 * 1_000_000


async def test_a_hold_its_own_unused_reserve_stands_in_the_way_of_is_admitted(
    prefix: str,
) -> None:
    live = replica(FakeLoader(admin={PREPAID.id: 1_000}), prefix, share=0.5, hot_holds=1)
    try:
        first = hold(1, PREPAID, 10, 0, ())
        await live.hold(first)
        await live.flush()
        await live.sync(list(live._leases.values()))  # a reserve of half the free funds
        assert live._leases[OrgMeter(PREPAID).key].reserve > 400
        big = hold(2, PREPAID, 990, 0, ())  # all the rest: only with the reserve back
        await live.hold(big)
        assert (await live.org_state(OrgMeter(PREPAID))).held == 1_000
        with pytest.raises(Shortfall):
            await live.hold(hold(3, PREPAID, 1, 0, ()))
        await live.settle_soon(first, 10, 0)
        await live.settle_soon(big, 500, 0)
        state = await live.org_state(OrgMeter(PREPAID))
        assert (state.used, state.held) == (510, 0)
    finally:
        await live.close()
    assert await redis_org(prefix) == (1_000, 510, 0)


async def test_a_crashed_replicas_reserve_is_released_at_its_expiry(prefix: str) -> None:
    loader = FakeLoader(admin={PREPAID.id: 10**9})
    crashed = replica(loader, prefix, share=0.1, hot_holds=1, lease_ttl_s=60)
    h = hold(1, PREPAID, 1_000, 0, ())
    await crashed.hold(h)
    await crashed.sync(list(crashed._leases.values()))
    _, _, held = await redis_org(prefix)
    assert held >= 10**8  # a tenth of the funds, reserved
    # The process dies here: it never closes. Another gateway's expiry pass, later:
    other = replica(loader, prefix)
    try:
        assert await other.expire(now=time.time() + 120) == 1  # its lease
        # Left held: the request's own exact hold, until its own (later) expiry.
        assert await redis_org(prefix) == (10**9, 0, 1_000)
    finally:
        await other.close()
        await crashed.inner.r.aclose()


async def test_token_budgets_hold_across_leased_replicas(prefix: str) -> None:
    loader = FakeLoader(admin={PREPAID.id: 10**12})
    replicas = [replica(loader, prefix, share=0.1, hot_holds=1) for _ in range(2)]
    admitted = 0
    ids = iter(range(10**9))

    async def worker(live: LeasedLedger) -> None:
        nonlocal admitted
        for _ in range(80):
            h = hold(next(ids), PREPAID, 10, 100, (TOKENS_ONLY,))
            try:
                await live.hold(h)
            except Shortfall as s:
                assert s.tokens
                await asyncio.sleep(0.001)
                continue
            admitted += 1
            await asyncio.sleep(0)
            await live.settle_soon(h, 10, 100)

    await asyncio.gather(*(worker(replicas[i % 2]) for i in range(4)))
    for live in replicas:
        await live.close()
    r = Redis.from_url(require_redis())
    v = await r.hmget(prefix + TOKENS_ONLY.meter(AT_MS).key, ["tspent", "theld", "held"])
    await r.aclose()
    assert [int(x) for x in v] == [admitted * 100, 0, 0]
    assert 90 <= admitted <= 100  # 10,000 tokens at 100 a request


async def test_usage_settled_against_a_lease_lost_in_redis_is_still_posted(prefix: str) -> None:
    live = replica(FakeLoader(admin={PREPAID.id: 10**9}), prefix, hot_holds=1)
    try:
        await live.hold(hold(0, PREPAID, 100, 0, ()))
        await live.sync(list(live._leases.values()))
        h = hold(1, PREPAID, 100, 0, ())
        await live.hold(h)
        assert h.id in live._local  # admitted from the lease
        # Redis loses the lease's record (and so no longer counts its reserve as held).
        r = Redis.from_url(require_redis())
        lease = live._leases[OrgMeter(PREPAID).key]
        await r.delete(prefix + "hold:" + lease.id)
        await r.hset(prefix + OrgMeter(PREPAID).key, "held", 100)  # the exact hold's
        await r.aclose()
        await live.settle_soon(h, 70, 0)
        await live.flush()
        _, used, held = await redis_org(prefix)
        assert used == 70
        assert held == 100 + lease.reserve  # the exact hold, and the lease taken again
    finally:
        await live.close()


def test_the_config_picks_leases_unless_their_share_is_zero() -> None:
    from tokenomy.config import parse_config
    from tokenomy.services import build_live

    url = require_redis()
    for share, kind in ((0.01, LeasedLedger), (0, RedisLedger)):
        cfg = parse_config(f"ledger: {{redis_url: '{url}', lease_share: {share}}}\n")
        live = build_live(cfg, None)  # type: ignore[arg-type]
        assert type(live) is kind


async def test_the_lease_counters_are_exported_as_metrics(prefix: str, tmp_path: Any) -> None:
    from tokenomy.analytics.metrics import Metrics
    from tokenomy.api import usage_routes
    from tokenomy.config import parse_config
    from tokenomy.services import build_services

    url = require_redis()
    cfg = parse_config(
        f"database: {{url: 'sqlite:///{tmp_path / 'm.db'}'}}\n"
        f"ledger: {{redis_url: '{url}', redis_prefix: '{prefix}'}}\n"
    )
    svc = build_services(cfg, env={})
    assert isinstance(svc.live, LeasedLedger)
    svc.live.leased_holds, svc.live.syncs = 7, 3
    metrics = Metrics()
    usage_routes._register_gauges({}, metrics, svc)  # type: ignore[arg-type]
    text = metrics.render()
    assert "tokenomy_ledger_leased_holds_total 7" in text
    assert "tokenomy_ledger_lease_syncs_total 3" in text
    assert "tokenomy_ledger_lease_sync_failures_total 0" in text
    assert "tokenomy_ledger_redis_losses_total 0" in text
    assert "tokenomy_ledger_redis_rebuilds_total" in text
    await svc.stop()


async def test_a_sync_whose_reply_was_lost_after_redis_applied_it_is_counted_once(
    prefix: str,
) -> None:
    live = replica(FakeLoader(admin={PREPAID.id: 10**9}), prefix, hot_holds=1, flush_s=60)
    try:
        first = hold(1, PREPAID, 1_000, 0, ())
        await live.hold(first)  # exact; the meter goes hot and is leased
        await live.sync(list(live._leases.values()))
        leased = [hold(i, PREPAID, 1_000, 0, ()) for i in (2, 3)]
        for h in leased:
            await live.hold(h)
        assert live.leased_holds == 2
        await live.settle(first, 500, 0)
        await live.settle_soon(leased[0], 700, 0)  # posted by the flush below
        script = live._sync_script

        async def reply_lost(**kw: Any) -> Any:
            await script(**kw)  # Redis applies it; its answer never arrives
            raise TimeoutError("reply lost")

        live._sync_script = reply_lost
        with pytest.raises(TimeoutError):
            await live.flush()
        live._sync_script = script
        await live.settle_soon(leased[1], 300, 0)
        await live.flush()  # posts again what the lost call carried, and the rest
        assert (await redis_org(prefix))[1] == 500 + 700 + 300
    finally:
        await live.close()


async def test_redis_failing_while_a_hold_gives_its_reserve_back_is_live_state_unavailable(
    prefix: str,
) -> None:
    loader = FakeLoader(admin={PREPAID.id: 1_000})
    live = replica(loader, prefix, share=0.5, hot_holds=1, flush_s=60)
    try:
        await live.hold(hold(1, PREPAID, 10, 0, ()))
        await live.sync(list(live._leases.values()))  # a reserve of half the free funds
        await asyncio.sleep(0.1)  # the sync the hold scheduled is done
        assert live._leases[OrgMeter(PREPAID).key].reserve > 400

        async def unreachable(**_: Any) -> Any:
            raise rx.ConnectionError("connection refused")

        live._sync_script = unreachable
        # Admitted only with the reserve back: the give-back sync meets Redis gone.
        with pytest.raises(LiveStateUnavailable):
            await live.hold(hold(2, PREPAID, 990, 0, ()))
    finally:
        live._leases.clear()
        await live.close()


async def test_the_database_failing_while_a_meter_is_loaded_is_live_state_unavailable(
    prefix: str,
) -> None:
    class Down(FakeLoader):
        def org_totals(self, org_id: str) -> tuple[int, int]:
            raise OperationalError("SELECT", {}, Exception("database is down"))

    url = require_redis()
    live = RedisLedger(Redis.from_url(url), Down(), prefix, scripts=ScriptClient.from_url(url))
    try:
        # The org's meter is not in Redis yet: loading it meets the database down.
        with pytest.raises(LiveStateUnavailable):
            await live.hold(hold(1, PREPAID, 10, 0, ()))
    finally:
        await live.close()


async def test_a_state_read_while_a_sync_is_in_flight_counts_only_the_holds_as_held(
    prefix: str,
) -> None:
    """Redis has applied a sync's new reserve but this process has not read the answer
    yet: a state read then must not show the reserve as held (it waits for the answer)."""
    live = replica(FakeLoader(admin={PREPAID.id: 10_000}), prefix, share=0.1, hot_holds=2)
    real = live._sync_script
    applied, answer = asyncio.Event(), asyncio.Event()

    async def slow(**kw: Any) -> Any:
        res = await real(**kw)
        applied.set()  # Redis holds the reserve now
        await answer.wait()
        return res

    live._sync_script = slow  # type: ignore[assignment]
    try:
        for i in range(2):  # the second makes the meter hot: a sync is scheduled
            await live.hold(hold(i, PREPAID, 100, 1, ()))
        await asyncio.wait_for(applied.wait(), 5)
        read = asyncio.ensure_future(live.org_state(OrgMeter(PREPAID)))
        await asyncio.sleep(0.05)
        answer.set()
        assert (await read).held == 200
    finally:
        answer.set()
        await live.close()


async def test_cold_orgs_in_rotation_cost_no_more_calls_a_request_than_a_hot_one(
    prefix: str,
) -> None:
    """200 orgs, each with a few requests a second (as 1,000 orgs in rotation at a few
    thousand requests a second have): once each has been seen, their holds and settles
    go through leases as a busy org's do, and Redis sees only the shared syncs."""
    orgs = [Org(f"org_{i:03d}", "O", Currency.USD, Mode.PREPAID) for i in range(200)]
    live = replica(FakeLoader(admin={o.id: 10**12 for o in orgs}), prefix)
    calls = counting(live)
    ids = iter(range(10**9))

    async def rounds(n: int) -> None:
        await in_rotation(live, orgs, ids, n)

    try:
        await rounds(3)  # each org seen a few times in its first second
        await asyncio.sleep(0.1)  # the leases' first syncs land
        calls.update(hold=0, settle=0, sync=0)
        started = time.monotonic()
        await rounds(5)
        elapsed = time.monotonic() - started
        # Not two calls a request (2,000 here): none of their own, the syncs shared.
        assert calls["hold"] + calls["settle"] == 0
        assert calls["sync"] <= elapsed / 0.05 + 3
    finally:
        await live.close()


async def test_a_share_too_small_for_one_hold_reserves_nothing(prefix: str) -> None:
    """Near the floor 1% of what is free is less than one hold: such a reserve admits
    nothing and would refuse another process's last hold, so none is taken."""
    live = replica(FakeLoader(admin={PREPAID.id: 20_000}), prefix, hot_holds=1)
    try:
        await live.hold(hold(1, PREPAID, 1_000, 0, ()))
        await live.sync(list(live._leases.values()))  # 1% of 19,000 free: 190
        assert live._leases[OrgMeter(PREPAID).key].reserve == 0
        assert await redis_org(prefix) == (20_000, 0, 1_000)  # the exact hold alone
    finally:
        await live.close()


async def test_a_cold_leases_usage_waits_to_be_posted_with_more_of_its_own(prefix: str) -> None:
    """200 orgs with one request each per sync interval (as 1,000 orgs in rotation have
    at a few thousand requests a second): posting every lease at every sync sent Redis
    a lease's worth of work for every request. A lease with little usage waits (at most
    ``post_max_s``) until it has more; none is left unposted for longer than that, even
    when no request comes to schedule a sync."""
    orgs = [Org(f"org_{i:03d}", "O", Currency.USD, Mode.PREPAID) for i in range(200)]
    live = replica(FakeLoader(admin={o.id: 10**12 for o in orgs}), prefix, flush_s=0.02)
    posted: list[int] = []  # leases carried by each sync call
    sync = live._sync

    async def counted(leases: list[Any], give_back: bool) -> None:
        posted.append(len(leases))
        await sync(leases, give_back)

    live._sync = counted  # type: ignore[method-assign]
    ids = iter(range(10**9))

    async def rounds(n: int) -> None:
        # One request per org per sync interval.
        await in_rotation(live, orgs, ids, n, pause_s=0.02)

    try:
        await rounds(3)  # leased
        await live.flush()
        posted.clear()
        started = time.monotonic()
        await rounds(20)  # 4,000 requests
        elapsed = time.monotonic() - started
        # Each lease posted once per POST_ITEMS requests or post_max_s, not at every
        # sync: 2,600 leases posted before.
        per_lease = elapsed / live.post_max_s + 20 // POST_ITEMS + 1
        assert sum(posted) <= len(orgs) * per_lease, (posted, elapsed)
        # With no more requests, what waits is posted within post_max_s all the same.
        r = Redis.from_url(require_redis())
        deadline = time.monotonic() + live.post_max_s + 5
        while True:
            used = [int(await r.hget(prefix + OrgMeter(o).key, "used") or 0) for o in orgs]
            if used == [23 * 400_000] * len(orgs) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        await r.aclose()
        assert used == [23 * 400_000] * len(orgs)
        assert time.monotonic() - started - elapsed < live.post_max_s + 1
    finally:
        await live.close()


async def test_a_sync_round_looks_at_the_leases_whose_usage_waits_not_at_every_lease(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,000 leased orgs, of which 20 have settled usage: a round of the background sync
    (every sync interval while usage waits) looked at every lease to find what was due,
    2,000 checks a round. It looks at those whose usage waits, and posts it when due."""
    orgs = [Org(f"org_{i:04d}", "O", Currency.USD, Mode.PREPAID) for i in range(2000)]
    live = replica(FakeLoader(admin={o.id: 10**12 for o in orgs}), prefix, hot_holds=1)
    ids = iter(range(10**9))
    try:
        await in_rotation(live, orgs, ids, 1)  # each org leased, its usage posted
        await live.flush()
        checked = [0]
        post_due_early = MeterLease.post_due_early

        def counted(self: MeterLease) -> bool:
            checked[0] += 1
            return post_due_early(self)

        monkeypatch.setattr(MeterLease, "post_due_early", counted)
        await in_rotation(live, orgs[:20], ids, 1)  # usage waits on 20 leases
        for _ in range(5):
            await live._background_sync()
        assert 20 <= checked[0] <= 100, checked[0]  # 10,000 before: every lease, every round
        assert sum(ls.used for ls in live._leases.values()) == 20 * 400_000  # not due yet
        monkeypatch.setattr(live, "post_max_s", 0.0)
        await live._background_sync()  # due now: all 20 posted in the round
        assert sum(ls.used for ls in live._leases.values()) == 0
    finally:
        await live.close()


async def test_usage_after_a_settle_at_nothing_is_posted_when_due(prefix: str) -> None:
    """A failed call settles at nothing. Its lease began waiting with no usage; a round
    took it for posted and forgot it, and the usage that followed was never posted by
    age (nor checked for a loss of Redis's state)."""
    live = replica(FakeLoader(admin={PREPAID.id: 10**12}), prefix, hot_holds=1)
    try:
        await live.hold(h := hold(1, PREPAID, 1_000, 0, ()))
        await live.settle_soon(h, 400, 0)  # exact; the org is leased at the next sync
        await live._background_sync()
        await live.hold(h := hold(2, PREPAID, 1_000, 0, ()))
        assert h.id in live._local  # from the lease
        await live.settle_soon(h, 0, 0)  # a failed call: settled at nothing
        await live._background_sync()
        await live.hold(h := hold(3, PREPAID, 1_000, 0, ()))
        await live.settle_soon(h, 400, 0)
        live.post_max_s = 0.0
        await live._background_sync()
        assert live._leases[OrgMeter(PREPAID).key].used == 0  # posted
        assert (await redis_org(prefix))[1] == 800
    finally:
        await live.close()


async def test_a_hold_going_exact_while_a_sync_is_in_flight_does_not_ask_for_a_round_now(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hot meter whose lease is short: holds go exact and ask for the lease to grow.
    While a sync is in flight its answer may refill the lease; asking for a round at once
    made the next sync start the moment that one ended, back to back."""
    live = replica(FakeLoader(admin={PREPAID.id: 10**12}), prefix, hot_holds=1, flush_s=0.05)
    try:
        await live.hold(h := hold(1, PREPAID, 1_000, 0, ()))  # exact; the meter is hot
        await live.settle_soon(h, 400, 0)
        asked: list[float] = []
        monkeypatch.setattr(live, "_schedule", asked.append)
        ls = live._leases[OrgMeter(PREPAID).key]
        ls.renewed_at = time.monotonic() - 1  # last answered a while ago
        async with live._lock:  # a sync in flight
            live._warm(hold(2, PREPAID, 1_000, 0, ()))
        assert asked == [0.05]
        live._warm(hold(3, PREPAID, 1_000, 0, ()))  # none in flight: the lease is stale
        assert asked == [0.05, 0.0]
    finally:
        await live.close()
