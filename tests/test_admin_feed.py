"""The admin-totals refresh does work in proportion to what changed, not to how many orgs
there are (real Redis; script calls counted, not timed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.needs import require_redis
from tests.test_ledger_leases import prefix
from tests.test_ledger_live import PREPAID, FakeLoader
from tokenomy.ledger.accounts import OrgMeter
from tokenomy.ledger.admin_feed import AdminTotalsFeed
from tokenomy.ledger.live import MemoryLedger
from tokenomy.ledger.redis_live import SET_ADMIN_BATCH, RedisLedger
from tokenomy.store.redis_scripts import ScriptClient

__all__ = ["prefix"]  # the fixture: a throwaway key prefix, removed after the test

ORGS = [f"org_{i:05d}" for i in range(10_000)]


@pytest.fixture
async def live(prefix: str) -> AsyncIterator[RedisLedger]:
    url = require_redis()
    scripts = ScriptClient.from_url(url)
    ledger = RedisLedger(Redis.from_url(url), FakeLoader(), prefix, scripts=scripts)
    yield ledger
    await ledger.close()


def counting(live: RedisLedger) -> dict[str, int]:
    """Counts the admin-total script calls and the orgs they carry."""
    n = {"calls": 0, "orgs": 0}
    real = live._set_admin

    async def counted(*, keys: list[str], args: list[Any]) -> Any:
        n["calls"] += 1
        n["orgs"] += len(keys)
        return await real(keys=keys, args=args)

    live._set_admin = counted  # type: ignore[assignment]
    return n


async def test_a_refresh_with_10000_orgs_and_3_changed_sends_the_3(live: RedisLedger) -> None:
    r = live.r
    loaded = ORGS[:5]  # meters in Redis (the others are loaded when first held)
    for org_id in loaded:
        await r.hset(f"{live.p}org:{org_id}", mapping={"admin": 0, "used": 0, "held": 0})
    calls = counting(live)
    feed = AdminTotalsFeed(live)
    totals = {org_id: 1_000 for org_id in ORGS}

    assert await feed.push_all(ORGS, totals) == 10_000  # the first refresh sends every total
    assert calls == {"calls": 10_000 // SET_ADMIN_BATCH, "orgs": 10_000}

    assert await feed.push_changed(totals) == 0  # an idle refresh: nothing sent
    assert calls["calls"] == 10_000 // SET_ADMIN_BATCH

    changed = {ORGS[1]: 5_000, ORGS[3]: 7_000, ORGS[9_999]: 9_000}  # top-ups elsewhere
    totals |= changed
    assert await feed.push_changed(totals) == 3
    assert calls == {"calls": 10_000 // SET_ADMIN_BATCH + 1, "orgs": 10_003}
    admins = [int(await r.hget(f"{live.p}org:{o}", "admin") or -1) for o in loaded]
    assert admins == [1_000, 5_000, 1_000, 7_000, 1_000]
    assert not await r.exists(f"{live.p}org:{ORGS[9_999]}")  # not loaded: left alone


async def test_a_full_push_sends_all_totals_again(live: RedisLedger) -> None:
    # (The reader decides when: every so many refreshes, see test_admin_totals_reader.)
    calls = counting(live)
    feed = AdminTotalsFeed(live)
    totals = {org_id: 1 for org_id in ORGS[:700]}
    sent = [await feed.push_all(totals, totals), await feed.push_changed(totals)]
    sent.append(await feed.push_all(totals, totals))
    assert sent == [700, 0, 700]
    assert calls["calls"] == 2 * 2  # 700 orgs: two calls each time


async def test_an_org_whose_admin_transactions_are_gone_is_set_to_zero() -> None:
    mem = MemoryLedger(FakeLoader(admin={PREPAID.id: 50}))
    feed = AdminTotalsFeed(mem)
    assert (await mem.org_state(OrgMeter(PREPAID))).admin == 50
    await feed.push_all([PREPAID.id], {})  # no admin total in the database now
    assert (await mem.org_state(OrgMeter(PREPAID))).admin == 0
