"""Batch work yields to interactive calls: how many lines the worker may run at once.

Batch lines run on the event loop that serves interactive calls, each costing about as
much CPU as an interactive call; at full width they keep the loop busy and interactive
calls queue behind them (their tail latency shows it). So the worker asks, before each
claim, how wide it may run now:

- no interactive call seen for ``quiet_s``: the full ``batches.concurrency``;
- interactive calls being served (any in flight, or any started since the last look,
  however short): ``yield_concurrency`` runners, so the batch still progresses on the
  capacity interactive traffic leaves idle;
- and meanwhile the event loop lagging past ``max_lag_s`` (measured by the worker's own
  wake-ups while narrowed): no new claim until it catches up.

Interactive traffic is read from :class:`tokenomy.gateway.traffic.Traffic`, two
counters the HTTP edge keeps; nothing here runs on the request path. Lines already
running when traffic arrives finish: narrowing acts on claims.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tokenomy.gateway.traffic import Traffic


@dataclass(frozen=True, slots=True)
class YieldSettings:
    #: Lines run at once while interactive calls are being served.
    concurrency: int = 2
    #: Time without any interactive call before the full width comes back.
    quiet_s: float = 0.5
    #: Event-loop lag (while narrowed) past which no line is claimed (0: not measured).
    max_lag_s: float = 0.005
    #: How often a narrowed worker looks again (and measures the loop's lag).
    tick_s: float = 0.01


class Yielding:
    """The width the batch worker may run at, from interactive traffic and loop lag."""

    def __init__(
        self,
        full: int,
        settings: YieldSettings,
        traffic: Traffic,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.full = full
        self.s = settings
        self.traffic = traffic
        self.clock = clock
        #: When interactive traffic was last seen (monotonic seconds).
        self.last_busy = -float("inf")
        self._seen = traffic.started
        #: The loop's lag at the last measurement (seconds).
        self.lag_s = 0.0
        #: The width last given (metrics), and measurements that stopped claims.
        self.last_width = full
        self.lag_pauses = 0

    def busy(self) -> bool:
        """Interactive calls in flight now, started since the last look, or within
        ``quiet_s``."""
        now = self.clock()
        t = self.traffic
        started = t.started
        if t.in_flight or started != self._seen:
            self._seen = started
            self.last_busy = now
            return True
        return now - self.last_busy < self.s.quiet_s

    def width(self) -> int:
        """Lines that may run at once now."""
        if not self.busy():
            self.lag_s = 0.0  # measured again once narrowed
            w = self.full
        elif self.s.max_lag_s and self.lag_s > self.s.max_lag_s:
            w = 0
        else:
            w = min(self.s.concurrency, self.full)
        self.last_width = w
        return w

    def may_claim(self, running: int) -> bool:
        return running < self.width()

    def narrowed(self) -> bool:
        """Whether the width may grow with time alone (the worker then looks again every
        ``tick_s`` rather than only when a line ends)."""
        return self.width() < self.full

    def lagged(self, lag_s: float) -> None:
        """The loop woke the worker ``lag_s`` late (measured while narrowed)."""
        self.lag_s = max(lag_s, 0.0)
        if self.s.max_lag_s and self.lag_s > self.s.max_lag_s:
            self.lag_pauses += 1
