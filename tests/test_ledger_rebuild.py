"""Rebuilding lost live state counts each request once: by the database or by Redis
(real Redis; the loss is simulated by deleting this test's own keys, epoch included)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Collection, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis import exceptions as rx
from redis.asyncio import Redis
from sqlalchemy import Table

from tests.needs import require_redis
from tests.test_ledger_live import PREPAID, FakeLoader, FakeSnapshot, hold
from tokenomy.billing.money import Currency
from tokenomy.ledger.accounts import Mode, Org, OrgMeter
from tokenomy.ledger.leased import LeasedLedger
from tokenomy.ledger.redis_live import RedisLedger
from tokenomy.store.redis_scripts import ScriptClient
from tokenomy.store.schema import usage_events


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    p = f"tktest:{secrets.token_hex(4)}:"
    yield p
    r = Redis.from_url(require_redis())
    keys = [k async for k in r.scan_iter(match=p + "*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()


def ledger(loader: FakeLoader, prefix: str) -> RedisLedger:
    url = require_redis()
    live = RedisLedger(Redis.from_url(url), loader, prefix, scripts=ScriptClient.from_url(url))
    live.recovery.grace_s = 0.05
    return live


async def lose_everything(prefix: str) -> None:
    """What FLUSHDB does, to this test's keys only."""
    r = Redis.from_url(require_redis())
    keys = [k async for k in r.scan_iter(match=prefix + "*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()


async def test_usage_settled_while_the_state_is_lost_is_counted_once(prefix: str) -> None:
    loader = FakeLoader(admin={PREPAID.id: 10_000})
    live = ledger(loader, prefix)
    try:
        written, unwritten, running = (hold(i, PREPAID, 1_000, 0, ()) for i in (1, 2, 3))
        for h in (written, unwritten, running):
            await live.hold(h)
        await lose_everything(prefix)
        # Both settle into the lost state; the writer has committed the first one only.
        await live.settle(written, 700, 0)
        await live.settle(unwritten, 400, 0)
        loader.used[PREPAID.id] = 700
        loader.recorded.add(written.id)
        # The next hold finds the state lost, waits for the rebuild, and is admitted.
        await live.hold(hold(4, PREPAID, 500, 0, ()))
        st = await live.org_state(OrgMeter(PREPAID))
        # 700 from the database, 400 from Redis (not in the database), never 700 twice;
        # the request still running and the new one held.
        assert (st.admin, st.used, st.held) == (10_000, 1_100, 1_500)
        # The running request settles against its hold, held again by the rebuild.
        await live.settle(running, 900, 0)
        st = await live.org_state(OrgMeter(PREPAID))
        assert (st.used, st.held) == (2_000, 500)
        assert live.recovery.rebuilds == 2  # the first (a new Redis) and after the loss
    finally:
        await live.close()


async def test_a_lease_keeps_its_holds_and_unposted_usage_through_a_loss(prefix: str) -> None:
    loader = FakeLoader(admin={PREPAID.id: 100_000})
    leased = LeasedLedger(ledger(loader, prefix), share=0.2, hot_holds=1, flush_s=60)
    try:
        first = hold(1, PREPAID, 1_000, 0, ())
        await leased.hold(first)  # exact; the meter goes hot and is leased
        await leased.flush()
        await leased.sync(list(leased._leases.values()))
        leased_holds = [hold(i, PREPAID, 1_000, 0, ()) for i in range(2, 6)]
        for h in leased_holds:
            await leased.hold(h)
        assert leased.leased_holds == 4
        await leased.settle_soon(leased_holds[0], 600, 0)  # not posted: flush_s is long
        await lose_everything(prefix)
        loader.used[PREPAID.id] = 0  # the writer has not committed it yet
        # The sync finds the state lost: the usage and what the lease has in use go to
        # the rebuild, which the next exact hold waits for.
        await leased.flush()
        await leased.inner.hold(hold(9, PREPAID, 100, 0, ()))
        await leased.settle(first, 1_000, 0)
        for h in leased_holds[1:]:
            await leased.settle_soon(h, 1_000, 0)
        await leased.flush()
        st = await leased.inner.org_state(OrgMeter(PREPAID))
        lease = next(iter(leased._leases.values()))
        # Used: 600 + 3 x 1,000 + 1,000; held: the exact hold of 100 and what the lease
        # still reserves (nothing of it is in use).
        assert st.used == 4_600
        assert st.held == 100 + lease.reserve and lease.held == 0
    finally:
        await leased.close()


async def test_an_expired_hold_is_not_held_again_after_a_loss(prefix: str) -> None:
    loader = FakeLoader(admin={PREPAID.id: 10_000})
    live = ledger(loader, prefix)
    try:
        stuck = hold(1, PREPAID, 1_000, 0, ())
        stuck.expires_at = time.time() + 60
        await live.hold(stuck)
        assert await live.expire(now=time.time() + 120) == 1  # a request that never ended
        await lose_everything(prefix)
        await live.hold(hold(2, PREPAID, 500, 0, ()))
        st = await live.org_state(OrgMeter(PREPAID))
        assert (st.used, st.held) == (0, 500)
    finally:
        await live.close()


async def test_holds_that_survive_a_lost_marker_are_counted_once(prefix: str) -> None:
    loader = FakeLoader(admin={PREPAID.id: 10_000})
    live, other = ledger(loader, prefix), ledger(loader, prefix)
    try:
        await other.hold(hold(1, PREPAID, 1_000, 0, ()))  # a process that publishes nothing
        r = Redis.from_url(require_redis())
        await r.delete(prefix + "epoch")  # evicted, or a Redis an older version used
        await r.aclose()
        await live.hold(hold(2, PREPAID, 500, 0, ()))  # rebuilt first
        st = await live.org_state(OrgMeter(PREPAID))
        assert st.held == 1_500
    finally:
        await live.close()
        await other.close()


async def test_a_hold_settled_while_reassert_runs_is_not_held_again(prefix: str) -> None:
    loader = FakeLoader(admin={PREPAID.id: 10_000})
    live = ledger(loader, prefix)
    try:
        first, second = hold(1, PREPAID, 1_000, 0, ()), hold(2, PREPAID, 2_000, 0, ())
        await live.hold(first)
        await live.hold(second)
        call = live._hold

        async def slow_call(**kw: object) -> object:
            # The second request ends while the first hold is being held again.
            res = await call(**kw)
            if "settled" not in calls:
                calls.append("settled")
                await asyncio.create_task(live.settle(second, 1_500, 0))
            return res

        calls: list[str] = []
        live._hold = slow_call
        await live.reassert()
        r = Redis.from_url(require_redis())
        try:
            assert not await r.exists(prefix + "hold:" + second.id)
        finally:
            await r.aclose()
        st = await live.org_state(OrgMeter(PREPAID))
        assert (st.used, st.held) == (1_500, 1_000)
    finally:
        await live.close()


def usage_items(*request_ids: str) -> list[tuple[Table, dict[str, object]]]:
    """What the writer reports as committed: usage rows of these requests."""
    return [(usage_events, {"request_id": rid}) for rid in request_ids]


async def test_usage_redis_counted_but_the_writer_had_not_committed_survives_a_loss(
    prefix: str,
) -> None:
    loader = FakeLoader(admin={PREPAID.id: 10_000})
    live = ledger(loader, prefix)
    committed = live.watch_commits()
    try:
        done, backlog = hold(1, PREPAID, 1_000, 0, ()), hold(2, PREPAID, 1_000, 0, ())
        for h in (done, backlog):
            await live.hold(h)
        await live.settle(done, 300, 0)
        await live.settle(backlog, 700, 0)
        # The writer commits the first request; the second waits in its backlog.
        loader.used[PREPAID.id] = 300
        loader.recorded.add(done.id)
        committed(usage_items(done.id))
        await lose_everything(prefix)
        await live.hold(hold(3, PREPAID, 100, 0, ()))  # finds the state lost: rebuilt
        # Then the writer commits the backlog.
        loader.used[PREPAID.id] = 1_000
        loader.recorded.add(backlog.id)
        committed(usage_items(backlog.id))
        st = await live.org_state(OrgMeter(PREPAID))
        assert (st.used, st.held) == (loader.used[PREPAID.id], 100)
        assert live.recovery.rebuilds == 2
    finally:
        await live.close()


async def test_a_lease_posted_usage_the_writer_had_not_committed_survives_a_loss(
    prefix: str,
) -> None:
    loader = FakeLoader(admin={PREPAID.id: 1_000_000})
    live = LeasedLedger(ledger(loader, prefix), share=0.1, hot_holds=1, flush_s=60)
    committed = live.watch_commits()
    try:
        first, second = hold(1, PREPAID, 1_000, 0, ()), hold(2, PREPAID, 1_000, 0, ())
        await live.hold(first)  # exact; the meter goes hot and is leased
        await live.sync(list(live._leases.values()))
        await live.hold(second)
        assert live.leased_holds == 1
        await live.settle(first, 300, 0)
        await live.settle(second, 700, 0)
        await live.flush()  # posted to Redis; the writer has committed none of it
        await lose_everything(prefix)
        await live.inner.hold(hold(3, PREPAID, 100, 0, ()))  # rebuilt
        loader.used[PREPAID.id] = 1_000
        loader.recorded.update((first.id, second.id))
        committed(usage_items(first.id, second.id))
        st = await live.org_state(OrgMeter(PREPAID))
        assert st.used == loader.used[PREPAID.id]
    finally:
        await live.close()


async def test_the_expiry_sweep_marks_live_state_as_seen(prefix: str) -> None:
    loader = FakeLoader(admin={PREPAID.id: 10_000})
    busy, idle = ledger(loader, prefix), ledger(loader, prefix)
    try:
        await busy.hold(hold(1, PREPAID, 100, 0, ()))
        await idle.expire()
        # A replica whose only call is the sweep still waits for the others' entries
        # when it is the one to rebuild.
        assert idle.recovery.seen
    finally:
        await busy.close()
        await idle.close()


async def test_later_rebuild_rounds_read_the_totals_once_and_ask_only_about_requests(
    prefix: str,
) -> None:
    calls = {"snapshots": 0, "asked": 0}
    url = require_redis()

    class Busy(FakeLoader):
        def live_snapshot(self, at_ms: int) -> FakeSnapshot:
            calls["snapshots"] += 1
            snap = super().live_snapshot(at_ms)
            ask = snap.recorded

            def recorded(request_ids: Collection[str]) -> frozenset[str]:
                calls["asked"] += 1
                if calls["asked"] == 1:
                    # Another process's settlement arrives meanwhile: a second round.
                    r = SyncRedis.from_url(url)
                    r.hset(prefix + "unposted", f"u late {prefix}org:{PREPAID.id}", "250 0 o")
                    r.close()
                return ask(request_ids)

            snap.recorded = recorded  # type: ignore[method-assign]
            return snap

    loader = Busy(admin={PREPAID.id: 10_000})
    live = ledger(loader, prefix)
    try:
        await live.hold(hold(1, PREPAID, 100, 0, ()))  # a new Redis: rebuilt
        assert (calls["snapshots"], calls["asked"]) == (1, 2)
        st = await live.org_state(OrgMeter(PREPAID))
        assert (st.used, st.held) == (250, 100)  # the late usage counted once
    finally:
        await live.close()


QUIET = Org("org_quiet", "Q", Currency.USD, Mode.PREPAID)


async def busy_and_quiet_leased(
    prefix: str,
) -> tuple[FakeLoader, LeasedLedger, Iterator[int]]:
    """Two orgs (PREPAID, QUIET) leased, each with a reserve and a first request the
    writer has committed; no round runs by itself (a long sync interval). Also the ids
    of the next requests."""
    loader = FakeLoader(admin={PREPAID.id: 10**9, QUIET.id: 10**9})
    live = LeasedLedger(ledger(loader, prefix), share=0.1, hot_holds=1, flush_s=60)
    ids = iter(range(1, 10**6))
    for org in (PREPAID, QUIET):
        await live.hold(h := hold(next(ids), org, 1_000, 0, ()))
        await live.settle(h, 1_000, 0)
        loader.used[org.id] = 1_000
        loader.recorded.add(h.id)
    await live.sync(list(live._leases.values()))
    return loader, live, ids


async def test_a_quiet_leases_waiting_usage_goes_to_the_rebuild_with_the_busy_ones(
    prefix: str,
) -> None:
    """A lease with little usage waits to post it. When another lease's sync finds the
    state lost, the waiting usage goes to the rebuild in the same round, as unposted
    entries it checks against the database: posted after the rebuild, usage the writer
    had committed meanwhile was counted twice (once in the snapshot)."""
    from tokenomy.ledger.meter_lease import POST_ITEMS

    loader, live, ids = await busy_and_quiet_leased(prefix)
    try:
        busy = [hold(next(ids), PREPAID, 1_000, 0, ()) for _ in range(POST_ITEMS)]
        waiting = hold(next(ids), QUIET, 1_000, 0, ())
        for h in [*busy, waiting]:
            await live.hold(h)
            await live.settle_soon(h, 500, 0)
        assert live.leased_holds == POST_ITEMS + 1
        await lose_everything(prefix)
        # The writer has committed every request; the busy lease's sync finds the loss.
        for h in [*busy, waiting]:
            loader.used[h.org.org.id] += 500  # type: ignore[union-attr]
            loader.recorded.add(h.id)
        await live._background_sync()
        assert await live.inner.recovery.wait(5)
        await live.flush()
        for org in (PREPAID, QUIET):
            st = await live.inner.org_state(OrgMeter(org))
            assert st.used == loader.used[org.id], org.id
    finally:
        await live.close()


async def test_a_loss_a_give_back_finds_hands_every_leases_waiting_usage_over(
    prefix: str,
) -> None:
    """Whatever sync finds the state lost (a round, an idle lease given back, a reserve
    given back for a hold it stood in the way of), the usage every other lease waits to
    post goes to the rebuild with it, not into the rebuilt counters after it."""
    loader, live, ids = await busy_and_quiet_leased(prefix)
    try:
        waiting = hold(next(ids), QUIET, 1_000, 0, ())
        await live.hold(waiting)
        await live.settle_soon(waiting, 500, 0)
        await lose_everything(prefix)
        loader.used[QUIET.id] += 500  # the writer commits it
        loader.recorded.add(waiting.id)
        # The busy org's reserve goes back (as upkeep or a refused hold does it).
        assert await live.sync([live._leases[OrgMeter(PREPAID).key]], give_back=True)
        assert await live.inner.recovery.wait(5)
        await live.flush()
        st = await live.inner.org_state(OrgMeter(QUIET))
        assert st.used == 1_500
    finally:
        await live.close()


async def test_usage_a_failed_flush_put_back_is_posted_soon(prefix: str) -> None:
    """A flush whose sync fails puts the usage back; a round posts it (and would see a
    loss) soon after, not only once the lease goes idle."""
    live = replica_with(FakeLoader(admin={PREPAID.id: 10**9}), prefix)
    try:
        await live.hold(h := hold(1, PREPAID, 1_000, 0, ()))  # exact; leased
        await live.settle(h, 1_000, 0)
        await live.sync(list(live._leases.values()))
        await live.hold(h := hold(2, PREPAID, 1_000, 0, ()))
        await live.settle_soon(h, 500, 0)
        sync = live._sync_script

        def failing(**kw: Any) -> Any:
            live._sync_script = sync
            raise rx.ConnectionError("Redis went away")

        live._sync_script = failing  # type: ignore[assignment]
        with pytest.raises(rx.ConnectionError):
            await live.flush()
        started = time.monotonic()
        r = Redis.from_url(require_redis())
        while int(await r.hget(prefix + OrgMeter(PREPAID).key, "used") or 0) < 1_500:
            assert time.monotonic() - started < 0.8, "not posted"
            await asyncio.sleep(0.02)
        await r.aclose()
    finally:
        await live.close()


def replica_with(loader: FakeLoader, prefix: str) -> LeasedLedger:
    """A leased replica with the default timings (a 0.5 s rebuild grace)."""
    live = LeasedLedger(ledger(loader, prefix), share=0.1, hot_holds=1)
    live.inner.recovery.grace_s = 0.5
    return live


async def test_usage_waiting_longer_than_the_grace_still_goes_to_another_replicas_rebuild(
    prefix: str,
) -> None:
    """A quiet lease's usage may wait to be posted longer than the grace a rebuild gives
    every process to hand over what it has; the process must still call Redis, and so
    see the loss, within half of it. Posted after another replica's rebuild, usage the
    writer had committed was counted twice (once in the snapshot)."""
    loader = FakeLoader(admin={PREPAID.id: 10**9})
    live = LeasedLedger(ledger(loader, prefix), share=0.1, hot_holds=1, flush_s=0.05)
    assert live.post_max_s == 2.0
    other = ledger(loader, prefix)  # another replica, on the same Redis and database
    other.recovery.grace_s = live.inner.recovery.grace_s = 0.5
    try:
        ids = iter(range(1, 10**6))
        await live.hold(h := hold(next(ids), PREPAID, 1_000, 0, ()))  # exact; leased
        await live.settle(h, 1_000, 0)
        loader.used[PREPAID.id] = 1_000
        loader.recorded.add(h.id)
        await live.sync(list(live._leases.values()))  # this process's last call
        await lose_everything(prefix)
        waiting = hold(next(ids), PREPAID, 1_000, 0, ())
        await live.hold(waiting)
        await live.settle_soon(waiting, 500, 0)  # one request: it waits to be posted
        assert live.leased_holds == 1  # no call of its own
        loader.used[PREPAID.id] += 500  # the writer commits it
        loader.recorded.add(waiting.id)
        # The other replica finds the loss and rebuilds half a second later.
        await other.hold(hold(next(ids), PREPAID, 100, 0, ()))
        assert live.inner.recovery.losses == 1  # this process saw it meanwhile
        assert await live.inner.recovery.wait(5)
        await live.flush()
        st = await other.org_state(OrgMeter(PREPAID))
        assert st.used == 1_500
    finally:
        await live.close()
        await other.close()


async def test_forgetting_a_burst_of_commits_costs_the_event_loop_little(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commits of a burst are forgotten RECENT_COMMITS_S later, a few at each commit
    of the quieter traffic after it, on the event loop. Forgotten oldest first from a
    plain dict, each was found by scanning past every slot emptied before it (a dict does
    not compact as it shrinks): quadratic in the burst. After 15 s at 6,000 requests a
    second the event loop spent 15% of its time there for seconds (p99 at 1,000 requests
    a second: 10 ms); after 200,000 in 5 s it is 6 s of stalls. Bounded far above the
    linear cost (0.1 s here) and far below the quadratic one."""
    from tokenomy.ledger import redis_live

    clock = [1_000.0]
    fake_time = SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    monkeypatch.setattr(redis_live, "time", fake_time)
    live = ledger(FakeLoader(), prefix)
    committed = live.watch_commits()
    try:
        for i in range(0, 200_000, 1_000):  # 40,000 a second, a batch of 1,000 at a time
            committed(usage_items(*(f"req_{n}" for n in range(i, i + 1_000))))
            clock[0] += 0.025
        started = time.perf_counter()
        for i in range(6_000):  # then 1,000 a second, one at a time
            clock[0] += 0.001
            committed(usage_items(f"after_{i}"))
        assert time.perf_counter() - started < 1.5
        # The burst forgotten, the last RECENT_COMMITS_S of commits (5,000) kept.
        kept = list(live._recent)
        assert kept == [f"after_{i}" for i in range(6_000 - len(kept), 6_000)]
        assert 4_999 <= len(kept) <= 5_001
    finally:
        await live.close()


async def test_usage_counted_after_the_writer_committed_it_is_not_kept(prefix: str) -> None:
    """A lease may post a request's usage after the writer committed it: remembered as
    uncommitted, it stayed for ten minutes (and would be handed to a rebuild)."""
    live = ledger(FakeLoader(admin={PREPAID.id: 10_000}), prefix)
    committed = live.watch_commits()
    try:
        committed(usage_items("req_early"))
        live.counted("req_early", (prefix + OrgMeter(PREPAID).key, 500, 0, "o"))
        live.counted("req_late", (prefix + OrgMeter(PREPAID).key, 300, 0, "o"))
        kept = [k for k in live.inflight() if k.startswith("u ")]
        assert kept == [f"u req_late {prefix}{OrgMeter(PREPAID).key}"]
    finally:
        await live.close()
