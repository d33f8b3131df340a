"""Orgs that can pay for nothing: noted, refused from the head, forgotten on a top-up or
after their time (a fake clock, no server)."""

from __future__ import annotations

import dataclasses
import itertools

from tests.test_ledger_live import PREPAID, FakeLoader
from tokenomy.core.errors import InsufficientQuota
from tokenomy.ledger.admin_feed import AdminTotalsFeed
from tokenomy.ledger.broke_orgs import (
    BROKE_DELAY_S,
    BROKE_MAX_WAIT_S,
    REFUSALS_PER_S,
    BrokeOrgs,
    Turn,
)
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


def test_an_orgs_head_refusals_are_paced_however_many_connections_it_opens() -> None:
    # Each connection waits its turn: a broke org gets REFUSALS_PER_S answers a second
    # in all, not one every BROKE_DELAY_S per connection it opens.
    clock = Clock()
    broke = BrokeOrgs(clock=clock)
    broke.note(PREPAID, 0)
    turns = [broke.turn(PREPAID.id) for _ in range(32)]
    gap = 1 / REFUSALS_PER_S
    assert turns[0] == Turn(BROKE_DELAY_S, drain=True) and all(t.drain for t in turns)
    waits = [t.wait_s for t in turns]
    assert all(abs(b - a - gap) < 1e-9 for a, b in itertools.pairwise(waits))
    # Another broke org is not queued behind it.
    other = dataclasses.replace(PREPAID, id="org_other")
    broke.note(other, 0)
    assert broke.turn(other.id).wait_s == BROKE_DELAY_S
    # Once the queue has gone by, a lone request waits the least again.
    clock.now += 32 * gap + BROKE_DELAY_S
    assert broke.turn(PREPAID.id).wait_s == BROKE_DELAY_S


def test_past_the_cap_a_request_waits_the_cap_undrained_and_books_no_turn() -> None:
    # A flood that would wait longer than BROKE_MAX_WAIT_S waits that long outside the
    # turns and is then answered unread, so no more than the cap's worth of an org's
    # requests are ever drained, and the turns are not pushed further by the flood.
    clock = Clock()
    broke = BrokeOrgs(clock=clock)
    broke.note(PREPAID, 0)
    n = int((BROKE_MAX_WAIT_S - BROKE_DELAY_S) * REFUSALS_PER_S) + 1
    turns = [broke.turn(PREPAID.id) for _ in range(n + 50)]
    assert all(t.drain and t.wait_s <= BROKE_MAX_WAIT_S for t in turns[:n])
    assert turns[n:] == [Turn(BROKE_MAX_WAIT_S, drain=False)] * 50
    # The flood booked nothing: a second later, a turn is free a second sooner.
    clock.now += 1.0
    t = broke.turn(PREPAID.id)
    assert t.drain and t.wait_s <= BROKE_MAX_WAIT_S - 1.0 + 1 / REFUSALS_PER_S


def test_the_pace_outlives_the_note_so_a_lapse_does_not_start_a_second_queue() -> None:
    # The note lapses every ttl_s and the next request finds the org broke again; the
    # turns already booked still stand, so the org does not get two queues at once.
    clock = Clock()
    broke = BrokeOrgs(ttl_s=10.0, clock=clock)
    broke.note(PREPAID, 0)
    clock.now += 5.0
    last = max(broke.turn(PREPAID.id).wait_s for _ in range(150))
    clock.now += 5.0  # the note lapses with turns booked 4.6 s ahead still
    assert broke.refusal(PREPAID.id) is None  # lapsed: read, refused, noted again
    broke.note(PREPAID, 0)
    w = broke.turn(PREPAID.id).wait_s
    assert abs(w - (last - 5.0 + 1 / REFUSALS_PER_S)) < 1e-9
    # A top-up forgets the note, not the turns: broke again, it queues behind them.
    broke.forget([PREPAID.id])
    broke.note(PREPAID, 0)
    assert abs(broke.turn(PREPAID.id).wait_s - w - 1 / REFUSALS_PER_S) < 1e-9


def test_turns_gone_by_are_dropped_once_many_orgs_have_had_one() -> None:
    clock = Clock()
    broke = BrokeOrgs(clock=clock)
    for i in range(1100):
        org = dataclasses.replace(PREPAID, id=f"org_{i}")
        broke.note(org, 0)
        broke.turn(org.id)
    assert len(broke._turn) == 1100
    clock.now += 1.0  # every turn booked has gone by
    broke.note(PREPAID, 0)
    broke.turn(PREPAID.id)
    assert set(broke._turn) == {PREPAID.id}
