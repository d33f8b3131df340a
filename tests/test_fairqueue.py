"""Fair queues: weighted fairness under a flood, tiers, bounded waits, cancellation."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tokenomy.admission.fairqueue import FairQueue, QueueBoard, QueueEntry, tier_for
from tokenomy.core.errors import Overloaded


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def settle() -> None:
    """Let every ready task run until nothing changes."""
    for _ in range(5):
        await asyncio.sleep(0)


async def serve_in_order(
    q: FairQueue, demands: list[tuple[str, int, float, int]]
) -> tuple[list[str], Counter[str]]:
    """Saturate ``q``, enqueue ``(org, count, weight, tier)`` in that order, drain one at a time.

    Returns the orgs in the order they were served and how many of each were shed.
    """
    holders = [await q.acquire("holder") for _ in range(q.capacity)]
    order: list[str] = []
    shed: Counter[str] = Counter()

    async def one(org: str, weight: float, tier: int) -> None:
        try:
            slot = await q.acquire(org, key=f"key-{org}", weight=weight, tier=tier)
        except Overloaded:
            shed[org] += 1
            return
        order.append(org)
        slot.release()

    tasks = []
    for org, n, weight, tier in demands:
        for _ in range(n):
            tasks.append(asyncio.create_task(one(org, weight, tier)))
            await asyncio.sleep(0)  # each enqueues before the next arrives
    for h in holders:
        h.release()
    await asyncio.gather(*tasks)
    assert q.in_use == 0 and q.waiting == 0
    return order, shed


async def test_a_flooding_tenant_gets_no_more_than_its_share() -> None:
    q = FairQueue("glm-5", 1, max_wait_s=1e9, clock=FakeClock())
    # A floods first with 10x the traffic of B and C, who arrive after all of it.
    order, _ = await serve_in_order(q, [("A", 100, 1, 1), ("B", 10, 1, 1), ("C", 10, 1, 1)])
    first = Counter(order[:30])
    assert first == {"A": 10, "B": 10, "C": 10}
    # B's and C's waits stay bounded: all served within the first 30, not after A's 100.
    last_b = max(i for i, o in enumerate(order) if o == "B")
    last_c = max(i for i, o in enumerate(order) if o == "C")
    assert last_b < 30 and last_c < 30
    assert order[30:] == ["A"] * 90


async def test_weights_divide_the_deployment() -> None:
    q = FairQueue("glm-5", 2, max_wait_s=1e9, clock=FakeClock())
    order, _ = await serve_in_order(q, [("big", 200, 3, 1), ("small", 200, 1, 1)])
    share = Counter(order[:200])
    assert share["big"] == pytest.approx(150, abs=2)
    assert share["small"] == pytest.approx(50, abs=2)


async def test_the_flood_is_shed_while_the_others_still_get_in() -> None:
    # One slot, a 30 s bound, about 1 s per request: A's burst exceeds its bound and is
    # told to retry; B and C, arriving later, are placed near the head and wait.
    q = FairQueue("glm-5", 1, max_wait_s=30, service_s=1.0, clock=FakeClock())
    order, shed = await serve_in_order(q, [("A", 100, 1, 1), ("B", 10, 1, 1), ("C", 10, 1, 1)])
    assert shed["A"] > 60 and shed["B"] == 0 and shed["C"] == 0
    assert Counter(order) == {"A": 100 - shed["A"], "B": 10, "C": 10}


async def test_higher_tiers_go_first() -> None:
    q = FairQueue("m", 1, max_wait_s=1e9, clock=FakeClock())
    order, _ = await serve_in_order(
        q,
        [
            ("batch", 5, 1, tier_for("flex")),
            ("std", 5, 1, tier_for(None)),
            ("vip", 5, 1, tier_for("priority")),
        ],
    )
    assert order == ["vip"] * 5 + ["std"] * 5 + ["batch"] * 5


async def test_shed_on_arrival_when_the_estimate_exceeds_the_bound() -> None:
    q = FairQueue("m", 2, max_wait_s=10, service_s=4.0, clock=FakeClock())
    held = [await q.acquire("o") for _ in range(2)]
    waiters = [asyncio.create_task(q.acquire("o", key=f"k{i}")) for i in range(4)]
    await settle()
    # Two slots held for about 4 s each: positions 0..3 wait about 2, 4, 6 and 8 s.
    assert q.waiting == 4
    assert [e.estimated_wait_s for e in _all(q)] == [2.0, 4.0, 6.0, 8.0]
    with pytest.raises(Overloaded) as e:
        await q.acquire("o", max_wait_s=9)  # the fifth would wait about 10 s
    assert e.value.status == 503 and e.value.retry_after == pytest.approx(10.0)
    assert e.value.response_headers()["Retry-After"] == "10"
    assert q.waiting == 4  # the shed request left no trace
    for h in held:
        h.release()
    for w in waiters:
        (await w).release()
    assert q.in_use == 0


def _all(q: FairQueue) -> list[QueueEntry]:
    return sorted((e for k in list(q._by_key) for e in q.view(k)), key=lambda e: e.position)


async def test_a_waiter_that_outlives_its_bound_is_told_to_retry() -> None:
    q = FairQueue("m", 1, max_wait_s=0.05, service_s=0.001, clock=FakeClock())
    held = await q.acquire("o")
    with pytest.raises(Overloaded):
        await q.acquire("o")
    assert q.waiting == 0
    held.release()
    assert q.in_use == 0


async def test_cancelled_waiter_leaves_at_once_and_never_leaks_a_slot() -> None:
    q = FairQueue("m", 1, clock=FakeClock())
    held = await q.acquire("o")
    gone = asyncio.create_task(q.acquire("o", key="k1"))
    await settle()
    assert q.waiting == 1 and len(q.view("k1")) == 1
    gone.cancel()
    await settle()
    assert q.waiting == 0 and q.view("k1") == []
    held.release()
    assert q.in_use == 0
    again = await q.acquire("o")  # the slot is free, not lost
    again.release()
    assert q.in_use == 0


async def test_a_slot_granted_to_a_waiter_cancelled_in_the_same_instant_is_passed_on() -> None:
    q = FairQueue("m", 1, clock=FakeClock())
    held = await q.acquire("o")
    first = asyncio.create_task(q.acquire("o"))
    second = asyncio.create_task(q.acquire("o"))
    await settle()
    held.release()  # hands the slot to `first`...
    first.cancel()  # ...whose client disconnects before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    slot = await second  # the slot went on to the next waiter
    assert q.in_use == 1 and q.waiting == 0
    slot.release()
    assert q.in_use == 0


async def test_view_shows_position_and_estimated_wait_per_key() -> None:
    clock = FakeClock()
    board = QueueBoard(max_wait_s=1e9, service_s=2.0, clock=clock)
    q = board.queue("dep-a", 1)
    assert board.queue("dep-a", 1) is q
    held = await q.acquire("o")
    tasks = [asyncio.create_task(q.acquire("org-x", key="mine")) for _ in range(2)]
    tasks += [asyncio.create_task(q.acquire("org-y", key="theirs")) for _ in range(2)]
    await settle()
    clock.t += 3
    mine = board.view("mine")
    # SFQ interleaves the orgs: x, y, x, y.
    assert [(e.queue, e.position, e.estimated_wait_s, e.waited_s) for e in mine] == [
        ("dep-a", 0, 2.0, 3.0),
        ("dep-a", 2, 6.0, 3.0),
    ]
    assert [e.position for e in board.view("theirs")] == [1, 3]
    held.release()
    first = await tasks[0]
    assert first.headers() == {"x-tokenomy-queue-position": "0", "x-tokenomy-queue-wait-ms": "3000"}
    first.release()
    for t in asyncio.as_completed(tasks[1:]):
        (await t).release()
    assert board.view("mine") == [] and q.in_use == 0


async def test_service_time_estimate_follows_what_slots_are_held_for() -> None:
    clock = FakeClock()
    q = FairQueue("m", 1, service_s=10.0, clock=clock)
    for _ in range(30):
        async with await q.acquire("o"):
            clock.t += 1.0
    assert q.service_s == pytest.approx(1.0, abs=0.02)


async def test_growing_capacity_admits_waiters_at_once() -> None:
    q = FairQueue("m", 1, clock=FakeClock())
    held = await q.acquire("o")
    tasks = [asyncio.create_task(q.acquire("o")) for _ in range(3)]
    await settle()
    q.set_capacity(3)
    await settle()
    assert sum(t.done() for t in tasks) == 2 and q.in_use == 3 and q.waiting == 1
    held.release()
    slots = [await t for t in tasks]
    for s in slots:
        s.release()
        s.release()  # twice is harmless
    assert q.in_use == 0
