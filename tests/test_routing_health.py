"""Rolling health statistics and the circuit breaker, on a fake clock."""

from __future__ import annotations

import pytest

from tokenomy.routing.health import (
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    HealthBoard,
    LogHistogram,
    RollingStats,
)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def test_histogram_percentiles_within_bucket_error() -> None:
    h = LogHistogram(0.005, 600.0)
    for i in range(1, 1001):
        h.add(i / 1000)  # 1 ms .. 1 s, uniform
    p50, p90, p99 = h.percentiles((50, 90, 99)) or ()
    assert p50 == pytest.approx(0.5, rel=0.1)
    assert p90 == pytest.approx(0.9, rel=0.1)
    assert p99 == pytest.approx(0.99, rel=0.1)
    assert LogHistogram(1, 10).percentiles((50,)) is None


def test_rolling_stats_forget_samples_older_than_the_window() -> None:
    clock = FakeClock()
    s = RollingStats(window_s=60, slices=6, clock=clock)
    for _ in range(10):
        s.record(True, ttft_s=2.0, tokens_per_s=10)
    clock.advance(30)
    for _ in range(10):
        s.record(False, ttft_s=0.2, tokens_per_s=100)
    assert s.error_rate() == (10, 20)
    ttft = s.ttft()
    assert ttft is not None and ttft.p90 == pytest.approx(2.0, rel=0.1)
    clock.advance(35)  # the first ten are now 65 s old
    assert s.error_rate() == (10, 10)
    ttft, tps = s.ttft(), s.throughput()
    assert ttft is not None and ttft.p90 == pytest.approx(0.2, rel=0.1)
    assert tps is not None and tps.p50 == pytest.approx(100, rel=0.1)
    clock.advance(3600)
    assert s.error_rate() == (0, 0) and s.ttft() is None


def test_throughput_p90_is_the_rate_most_requests_reach() -> None:
    s = RollingStats(clock=FakeClock())
    for _ in range(9):
        s.record(True, tokens_per_s=100)
    s.record(True, tokens_per_s=5)
    tps = s.throughput()
    assert tps is not None
    assert tps.p50 == pytest.approx(100, rel=0.1)
    assert tps.p99 == pytest.approx(5, rel=0.1)  # the slow tail


def state(b: CircuitBreaker) -> BreakerState:
    return b.state


def test_breaker_opens_after_consecutive_failures_and_closes_after_a_probe() -> None:
    clock = FakeClock()
    b = CircuitBreaker(BreakerPolicy(consecutive_failures=3, cooldown_s=10), clock)
    for _ in range(2):
        b.record_failure()
    b.record_success()  # a success resets the run
    for _ in range(2):
        b.record_failure()
    assert state(b) is BreakerState.CLOSED and b.allow()
    b.record_failure()
    assert state(b) is BreakerState.OPEN
    assert not b.allow()
    clock.advance(9.9)
    assert not b.allow()
    clock.advance(0.2)
    assert state(b) is BreakerState.HALF_OPEN
    assert b.allow()  # the one probe
    assert not b.allow()  # everyone else waits for it
    b.record_success()
    assert state(b) is BreakerState.CLOSED and b.allow()


def test_failed_probe_reopens_with_backoff_up_to_the_cap() -> None:
    clock = FakeClock()
    b = CircuitBreaker(
        BreakerPolicy(consecutive_failures=1, cooldown_s=10, backoff=2, max_cooldown_s=30), clock
    )
    b.record_failure()
    rests = []
    for _ in range(4):
        opened = clock.t
        while not b.allow():
            clock.advance(1)
        rests.append(clock.t - opened)
        b.record_failure()  # the probe fails
    assert rests == [10, 20, 30, 30]
    while not b.allow():
        clock.advance(1)
    b.record_success()
    b.record_failure()  # a fresh failure rests for the base cooldown again
    opened = clock.t
    while not b.allow():
        clock.advance(1)
    assert clock.t - opened == 10


def test_lost_probe_frees_the_half_open_slot_after_a_timeout() -> None:
    clock = FakeClock()
    b = CircuitBreaker(
        BreakerPolicy(consecutive_failures=1, cooldown_s=5, probe_timeout_s=20), clock
    )
    b.record_failure()
    clock.advance(5)
    assert b.allow()
    clock.advance(19)
    assert not b.allow()
    clock.advance(2)
    assert b.allow()


def test_breaker_opens_on_error_rate_in_the_window() -> None:
    clock = FakeClock()
    board = HealthBoard(
        policy=BreakerPolicy(consecutive_failures=100, error_rate=0.5, min_requests=10),
        clock=clock,
    )
    h = board.get("v/m")
    for i in range(10):  # alternate: never 100 in a row, but half fail
        if i % 2:
            h.failure()
        else:
            h.success(ttft_s=0.3, tokens_per_s=50)
    snap = board.snapshot("v/m")
    assert snap is not None and snap.breaker is BreakerState.OPEN and snap.resting
    assert snap.error_rate == pytest.approx(0.5)
    assert not board.allow("v/m")
    assert board.allow("never-seen")
    assert board.snapshot("never-seen") is None


def test_snapshot_is_cached_until_something_changes() -> None:
    clock = FakeClock()
    board = HealthBoard(clock=clock)
    h = board.get("d")
    h.success(ttft_s=1.0, tokens_per_s=10)
    a = board.snapshot("d")
    assert board.snapshot("d") is a
    h.success(ttft_s=1.0, tokens_per_s=10)
    b = board.snapshot("d")
    assert b is not a and b is not None and b.requests == 2
