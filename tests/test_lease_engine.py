"""The lease engine's work due soon: one round at a time, asked again while it runs."""

from __future__ import annotations

import asyncio
import time

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


async def wait_for_rounds(rounds: Rounds, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(rounds.started) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


async def test_work_asked_now_while_a_round_runs_runs_when_it_ends() -> None:
    """A hold that needs its lease now asks while a sync is in flight: it waited for the
    round's own spacing (``again_s``, the sync interval) after the round ended."""
    rounds = Rounds()
    e = engine(rounds, again_s=5.0)
    e.schedule(0.0)
    await wait_for_rounds(rounds, 1, 1.0)
    e.schedule(0.0)  # asked now, while the first round runs
    ended = time.monotonic()
    rounds.release.set()
    await wait_for_rounds(rounds, 2, 2.0)
    assert len(rounds.started) == 2
    assert rounds.started[1] - ended < 0.5
    await e.close()


async def test_work_asked_later_while_a_round_runs_waits_for_the_later_of_the_asks() -> None:
    rounds = Rounds()
    e = engine(rounds, again_s=0.3)
    e.schedule(0.0)
    await wait_for_rounds(rounds, 1, 1.0)
    e.schedule(0.3)  # the round's own ask for the next one, a sync interval on
    ended = time.monotonic()
    rounds.release.set()
    await wait_for_rounds(rounds, 2, 2.0)
    assert len(rounds.started) == 2
    assert rounds.started[1] - ended >= 0.25  # not at once: spaced as asked
    await e.close()


async def test_a_failed_round_is_retried_again_s_later() -> None:
    rounds = Rounds()
    e = engine(rounds, again_s=0.3)
    e.schedule(0.0)
    await wait_for_rounds(rounds, 1, 1.0)
    e.retry()
    ended = time.monotonic()
    rounds.release.set()
    await wait_for_rounds(rounds, 2, 2.0)
    assert 0.25 <= rounds.started[1] - ended < 1.0
    await e.close()


async def test_a_failed_round_asked_again_now_still_waits_again_s() -> None:
    """Redis down: every request asks for a round now, and each fails. Retried at once,
    the failing rounds ran back to back."""
    rounds = Rounds()
    e = engine(rounds, again_s=0.3)
    e.schedule(0.0)
    await wait_for_rounds(rounds, 1, 1.0)
    e.schedule(0.0)
    e.retry()
    ended = time.monotonic()
    rounds.release.set()
    await wait_for_rounds(rounds, 2, 2.0)
    assert 0.25 <= rounds.started[1] - ended < 1.0
    await e.close()


async def test_of_several_asks_while_a_round_runs_the_soonest_wins() -> None:
    for asks in ((0.3, 0.0), (0.0, 0.3)):
        rounds = Rounds()
        e = engine(rounds, again_s=5.0)
        e.schedule(0.0)
        await wait_for_rounds(rounds, 1, 1.0)
        for delay in asks:
            e.schedule(delay)
        ended = time.monotonic()
        rounds.release.set()
        await wait_for_rounds(rounds, 2, 2.0)
        assert rounds.started[1] - ended < 0.2, asks
        await e.close()
