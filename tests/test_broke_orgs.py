"""Orgs that can pay for nothing: noted, refused from the head, forgotten on a top-up or
after their time (a fake clock, no server)."""

from __future__ import annotations

from tests.test_ledger_live import PREPAID, FakeLoader
from tokenomy.core.errors import InsufficientQuota
from tokenomy.ledger.admin_feed import AdminTotalsFeed
from tokenomy.ledger.broke_orgs import BrokeOrgs
from tokenomy.ledger.live import MemoryLedger


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_noted_org_is_refused_until_its_time_is_up() -> None:
    clock = Clock()
    broke = BrokeOrgs(ttl_s=10.0, clock=clock)
    assert broke.refusal(PREPAID.id) is None
    broke.note(PREPAID, -250_000_000)
    err = broke.refusal(PREPAID.id)
    assert isinstance(err, InsufficientQuota) and err.status == 402
    assert f"org {PREPAID.id} has 0 USD available" in err.message
    assert broke.refused == 1
    clock.now += 9.9
    assert broke.refusal(PREPAID.id) is not None
    clock.now += 0.1
    assert broke.refusal(PREPAID.id) is None and PREPAID.id not in broke
    assert broke.refused == 2


def test_an_org_with_something_left_is_never_noted() -> None:
    broke = BrokeOrgs(clock=Clock())
    broke.note(PREPAID, 1)
    assert PREPAID.id not in broke and broke.refusal(PREPAID.id) is None


def test_forget_drops_the_org_at_once() -> None:
    broke = BrokeOrgs(clock=Clock())
    broke.note(PREPAID, 0)
    broke.forget(["org_other", PREPAID.id])
    assert broke.refusal(PREPAID.id) is None


async def test_the_admin_feed_tells_which_totals_moved() -> None:
    told: list[set[str]] = []
    feed = AdminTotalsFeed(MemoryLedger(FakeLoader()), on_change=lambda o: told.append(set(o)))
    orgs = ["org_a", "org_b", "org_c"]
    await feed.push_all(orgs, {"org_a": 5})
    assert told == [set(orgs)]  # the first push: every total is new
    await feed.push_changed({"org_a": 5})
    await feed.push_all(orgs, {"org_a": 5})
    assert told == [set(orgs)]  # nothing moved: nobody told
    await feed.push_all(orgs, {"org_a": 5, "org_b": 7})  # a full push all the same
    assert told[-1] == {"org_b"}
    await feed.push_changed({"org_c": 3})
    assert told[-1] == {"org_c"}
