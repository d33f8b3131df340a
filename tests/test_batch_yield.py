"""Batch work yields to interactive calls: the worker narrows its claims while the edge
serves interactive calls (or the event loop lags) and widens again once they are gone."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx

from tests.conftest import ThreadServer, running_gateway
from tokenomy.batches.worker import BatchWorker, WorkerSettings
from tokenomy.batches.yielding import Yielding, YieldSettings
from tokenomy.gateway.traffic import Traffic
from tokenomy.store.batches import ClaimedLine


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def yielding(**kw: Any) -> tuple[Yielding, Traffic, FakeClock]:
    traffic, clock = Traffic(), FakeClock()
    s = YieldSettings(**{"concurrency": 2, "quiet_s": 0.5, "max_lag_s": 0.005, **kw})
    return Yielding(8, s, traffic, clock), traffic, clock


def test_claims_narrow_while_interactive_calls_are_in_flight_and_widen_when_quiet() -> None:
    y, traffic, clock = yielding()
    # Idle: the full width.
    assert y.width() == 8 and y.may_claim(7) and not y.narrowed()
    # A call in flight: two runners, however long it lasts.
    traffic.started += 1
    traffic.in_flight += 1
    assert y.width() == 2 and y.narrowed()
    assert y.may_claim(1) and not y.may_claim(2) and not y.may_claim(7)
    clock.now += 30
    assert y.width() == 2
    # It ends: still narrow until quiet_s has passed with no call...
    traffic.in_flight -= 1
    clock.now += 0.4
    assert y.width() == 2
    # ...then wide again.
    clock.now += 0.2
    assert y.width() == 8 and y.may_claim(7)


def test_a_call_begun_and_ended_between_two_looks_still_narrows() -> None:
    y, traffic, clock = yielding()
    assert y.width() == 8
    traffic.started += 1  # in and out before the worker looked
    clock.now += 0.01
    assert traffic.in_flight == 0 and y.width() == 2
    clock.now += 0.49
    assert y.width() == 2
    clock.now += 0.02
    assert y.width() == 8


def test_a_lagging_loop_stops_claims_only_while_yielding() -> None:
    y, traffic, _ = yielding()
    # With no interactive call, lag (the batch's own load) does not narrow anything.
    y.lagged(0.050)
    assert y.width() == 8
    traffic.started += 1
    traffic.in_flight += 1
    y.lagged(0.020)
    assert y.width() == 0 and not y.may_claim(0)
    y.lagged(0.001)  # caught up: the batch goes on at the yielding width
    assert y.width() == 2
    off, traffic2, _ = yielding(max_lag_s=0.0)  # lag not measured
    traffic2.in_flight = 1
    off.lagged(1.0)
    assert off.width() == 2


def test_the_yielding_width_is_never_above_the_full_one() -> None:
    y, traffic, _ = yielding(concurrency=32)
    traffic.in_flight = 1
    assert y.width() == 8 and not y.narrowed()


class Lines:
    """A store with endless lines to claim, and lines that run until let go."""

    def __init__(self) -> None:
        self.numbers = itertools.count()
        self.claimed = 0
        self.gate = asyncio.Event()

    def has_work(self, now_ms: int) -> bool:
        return True

    def claim(self, n: int, now_ms: int, lease_ms: int) -> list[ClaimedLine]:
        self.claimed += 1
        return [ClaimedLine("batch_x", next(self.numbers), "r", "c", "{}", 0, 0, 0)]

    async def run(self, line: ClaimedLine) -> None:
        await self.gate.wait()

    def let_go(self) -> None:
        """End the lines running now; the next ones wait again."""
        gate, self.gate = self.gate, asyncio.Event()
        gate.set()


async def settle(cond: Callable[[], bool], seconds: float = 2.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def test_the_worker_runs_fewer_lines_while_interactive_calls_are_served() -> None:
    traffic = Traffic()
    svc = SimpleNamespace(pipeline=SimpleNamespace(traffic=traffic))
    lines = Lines()
    settings = WorkerSettings(
        concurrency=6, yielding=YieldSettings(concurrency=2, quiet_s=0.1, tick_s=0.005)
    )
    worker = BatchWorker(cast(Any, svc), cast(Any, lines), {}, cast(Any, None), settings)
    worker._run = lines.run  # type: ignore[method-assign]
    traffic.started, traffic.in_flight = 1, 1  # an interactive call in flight
    dispatch = asyncio.create_task(worker._dispatch())
    try:
        await settle(lambda: worker.running == 2)
        await asyncio.sleep(0.15)  # several ticks: still two, nothing more claimed
        assert (worker.running, lines.claimed) == (2, 2)
        # The call ends: after quiet_s the worker widens to its full concurrency.
        traffic.in_flight = 0
        await settle(lambda: worker.running == 6)
        assert lines.claimed == 6
        # Calls again: lines running finish, and only two take their place.
        traffic.started += 1
        traffic.in_flight = 1
        lines.let_go()
        await settle(lambda: lines.claimed >= 8)
        await asyncio.sleep(0.15)
        assert (worker.running, lines.claimed) == (2, 8)
    finally:
        dispatch.cancel()
        lines.let_go()
        await asyncio.gather(dispatch, *worker._lines, return_exceptions=True)


def test_the_edge_counts_interactive_calls_in_flight(sim: ThreadServer, tmp_path: Path) -> None:
    with running_gateway(sim.url, tmp_path, "sqlite") as gw:
        traffic = gw.services.pipeline.traffic
        headers = {"Authorization": f"Bearer {gw.key}"}
        body = {"model": "capped", "messages": [{"role": "user", "content": "Hi"}]}
        in_flight: list[int] = []
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "POST", gw.base_url + "/chat/completions", headers=headers,
                json={**body, "max_tokens": 10, "stream": True},
            ) as r,
        ):  # fmt: skip
            for _ in r.iter_raw():  # a slow stream (20 tokens/s): in flight till its end
                in_flight.append(traffic.in_flight)
        # Counted while the stream ran (its end leaves just before the count is down).
        assert r.status_code == 200 and len(in_flight) > 2 and set(in_flight[:-1]) == {1}
        for _ in range(200):
            if traffic.in_flight == 0:
                break
            time.sleep(0.01)
        assert (traffic.started, traffic.in_flight) == (1, 0)
        bad = httpx.post(
            gw.base_url + "/chat/completions", headers=headers,
            json={**body, "model": "no-such-model"}, timeout=30,
        )  # fmt: skip
        assert bad.status_code == 404
        assert (traffic.started, traffic.in_flight) == (2, 0)
