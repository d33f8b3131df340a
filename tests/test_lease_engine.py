"""The lease engine's work due soon: one round at a time, asked again while it runs."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from tokenomy.store.lease_engine import Lease, LeaseEngine


class Rounds:
    """A ``due`` whose first round waits until released; the start time of each round."""

    def __init__(self) -> None:
        self.started: list[float] = []
        self.release = asyncio.Event()

    async def __call__(self) -> None:
        self.started.append(time.monotonic())
        if len(self.started) == 1:
            await self.release.wait()


async def _nothing(_now: float) -> None:
    return None


def engine(rounds: Rounds, again_s: float) -> LeaseEngine[Lease]:
    return LeaseEngine(
        "test", 60.0, 60.0, time.monotonic, upkeep=_nothing, due=rounds, again_s=again_s
    )


async def next_round_after(again_s: float, during: Callable[[LeaseEngine[Lease]], None]) -> float:
    """Start a round, call ``during`` while it runs, let it end: seconds from its end to
    the next round's start (inf when none starts within 2 s)."""
    rounds = Rounds()
    e = engine(rounds, again_s)
    e.schedule(0.0)
    while not rounds.started:
        await asyncio.sleep(0.005)
    during(e)
    ended = time.monotonic()
    rounds.release.set()
    deadline = ended + 2.0
    while len(rounds.started) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    await e.close()
    return rounds.started[1] - ended if len(rounds.started) == 2 else math.inf


async def test_work_asked_now_while_a_round_runs_runs_when_it_ends() -> None:
    """A hold that needs its lease now asks while a sync is in flight: it waited for the
    round's own spacing (``again_s``, the sync interval) after the round ended."""
    assert await next_round_after(5.0, lambda e: e.schedule(0.0)) < 0.5


async def test_work_asked_later_while_a_round_runs_waits_as_asked() -> None:
    # The round's own ask for the next one, a sync interval on: not at once.
    assert 0.25 <= await next_round_after(5.0, lambda e: e.schedule(0.3)) < 1.0


async def test_of_several_asks_while_a_round_runs_the_soonest_wins() -> None:
    def asks(*delays: float) -> Callable[[LeaseEngine[Lease]], None]:
        def during(e: LeaseEngine[Lease]) -> None:
            for d in delays:
                e.schedule(d)

        return during

    assert await next_round_after(5.0, asks(0.3, 0.0)) < 0.2
    assert await next_round_after(5.0, asks(0.0, 0.3)) < 0.2


async def test_a_failed_round_is_retried_again_s_later() -> None:
    assert 0.25 <= await next_round_after(0.3, lambda e: e.retry()) < 1.0


async def test_a_failed_round_asked_again_now_still_waits_again_s() -> None:
    """Redis down: every request asks for a round now, and each fails. Retried at once,
    the failing rounds ran back to back."""

    def ask_then_fail(e: LeaseEngine[Lease]) -> None:
        e.schedule(0.0)
        e.retry()

    assert 0.25 <= await next_round_after(0.3, ask_then_fail) < 1.0
