"""The roll-up worker catching up after a burst: a batch at a time, with pauses between
full batches, so a backlog never holds a core of the database for seconds in one go
(counted with a fake clock, not timed)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tokenomy.analytics.rollup import CATCH_UP_PAUSE, RollupWorker


class FakeRollups:
    """Batches of ``batch_size`` markers until the backlog runs out, each taking
    ``batch_s`` on the worker's clock."""

    def __init__(self, backlog: int, batch_size: int, batch_s: float, clock: list[float]) -> None:
        self.backlog = backlog
        self.batch_size = batch_size
        self.batch_s = batch_s
        self.clock = clock
        self.cells = 0
        self.log: list[tuple[str, float]] = []

    def process_batch(self, *, wait: bool = True) -> int:
        assert wait is False  # a replica's run under way is left to it
        n = min(self.backlog, self.batch_size)
        self.backlog -= n
        self.clock[0] += self.batch_s
        self.log.append(("batch", self.batch_s))
        return n


async def test_a_backlog_is_rolled_up_a_batch_at_a_time_with_pauses_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    fake = FakeRollups(backlog=4 * 100 + 30, batch_size=100, batch_s=0.3, clock=clock)
    worker = RollupWorker(fake, clock=lambda: clock[0])  # type: ignore[arg-type]
    real_sleep = asyncio.sleep

    async def sleep(s: float, *a: Any) -> None:
        fake.log.append(("pause", s))
        clock[0] += s
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    assert await worker.roll_up() == 430
    kinds = [k for k, _ in fake.log]
    # Five batches (four full, then the rest), a pause after each full one.
    assert kinds == ["batch", "pause"] * 4 + ["batch"]
    for k, s in fake.log:
        if k == "pause":
            assert s == pytest.approx(0.3 * CATCH_UP_PAUSE)
    # The database's share of the time while catching up: at most half.
    busy = sum(s for k, s in fake.log if k == "batch")
    assert busy / clock[0] <= 1 / (1 + CATCH_UP_PAUSE) + 0.1
