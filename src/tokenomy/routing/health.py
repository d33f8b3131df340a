"""Per-deployment health: rolling latency and throughput percentiles, error rate, breaker.

Samples land in log-spaced histogram buckets kept per time slice; a ring of slices covers
the window. Recording is O(1) (one bucket increment plus running totals); a percentile
is one pass over the buckets (about 60), never a sort. Clocks are injected so tests
control time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

Clock = Callable[[], float]

#: Percentiles kept in a snapshot; OpenRouter's cutoff objects use the same four.
PERCENTILES = (50, 75, 90, 99)


class LogHistogram:
    """Counts of positive samples in geometric buckets between ``lo`` and ``hi``.

    Relative error of a percentile is bounded by the bucket ``factor`` (1.2 → within 10%
    after taking the bucket's geometric middle).
    """

    __slots__ = ("_counts", "_inv_log", "_lo", "_n", "factor", "total")

    def __init__(self, lo: float, hi: float, factor: float = 1.2) -> None:
        self._lo = lo
        self.factor = factor
        self._inv_log = 1.0 / math.log(factor)
        self._n = math.ceil(math.log(hi / lo) * self._inv_log) + 2
        self._counts = [0] * self._n
        self.total = 0

    def index(self, value: float) -> int:
        if value <= self._lo:
            return 0
        i = int(math.log(value / self._lo) * self._inv_log) + 1
        return i if i < self._n else self._n - 1

    def add_index(self, i: int, count: int = 1) -> None:
        self._counts[i] += count
        self.total += count

    def add(self, value: float) -> None:
        self.add_index(self.index(value))

    def clear(self) -> None:
        counts = self._counts
        for i in range(self._n):
            counts[i] = 0
        self.total = 0

    def subtract(self, other: LogHistogram) -> None:
        mine, theirs = self._counts, other._counts
        for i in range(self._n):
            mine[i] -= theirs[i]
        self.total -= other.total

    def value_at(self, i: int) -> float:
        """A representative value of bucket ``i`` (its geometric middle)."""
        if i == 0:
            return self._lo
        return self._lo * math.pow(self.factor, i - 0.5)

    def percentiles(self, ps: tuple[int, ...]) -> tuple[float, ...] | None:
        """Values at the given ascending percentiles, in one pass; None when empty."""
        if self.total <= 0:
            return None
        targets = [max(1, math.ceil(self.total * p / 100)) for p in ps]
        out: list[float] = []
        seen = 0
        t = 0
        for i, c in enumerate(self._counts):
            seen += c
            while t < len(targets) and seen >= targets[t]:
                out.append(self.value_at(i))
                t += 1
            if t == len(targets):
                break
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float
    p75: float
    p90: float
    p99: float

    def at(self, p: int) -> float:
        return {50: self.p50, 75: self.p75, 90: self.p90, 99: self.p99}[p]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """What routing needs to know about a deployment right now.

    ``ttft_s`` is time to first token in seconds (low is good); ``throughput`` is output
    tokens per second, where ``p90`` is the rate 90% of requests reach or exceed (so, as
    for latency, p90 is the stricter figure).
    """

    requests: int
    errors: int
    ttft_s: Percentiles | None
    throughput: Percentiles | None
    breaker: BreakerState

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def resting(self) -> bool:
        return self.breaker is BreakerState.OPEN


class _Slice:
    __slots__ = ("errors", "requests", "tps", "ttft")

    def __init__(self, ttft: LogHistogram, tps: LogHistogram) -> None:
        self.requests = 0
        self.errors = 0
        self.ttft = ttft
        self.tps = tps


class RollingStats:
    """Outcomes of the last ``window_s`` seconds, in ``slices`` slices of equal length."""

    def __init__(
        self, window_s: float = 60.0, slices: int = 6, clock: Clock = time.monotonic
    ) -> None:
        self._slice_s = window_s / slices
        self._clock = clock
        self._ring = [_Slice(_ttft_hist(), _tps_hist()) for _ in range(slices)]
        self._ttft = _ttft_hist()
        self._tps = _tps_hist()
        self.requests = 0
        self.errors = 0
        self._epoch = -1
        self.version = 0

    def _advance(self) -> _Slice:
        """Expire slices older than the window; return the current one."""
        epoch = max(int(self._clock() // self._slice_s), self._epoch)
        ring = self._ring
        n = len(ring)
        if epoch != self._epoch:
            # The slices for the epochs just entered hold data at least a window old.
            for k in range(max(self._epoch + 1, epoch - n + 1), epoch + 1):
                self._drop(ring[k % n])
            self._epoch = epoch
            self.version += 1
        return ring[epoch % n]

    def _drop(self, old: _Slice) -> None:
        if old.requests or old.ttft.total or old.tps.total:
            self.requests -= old.requests
            self.errors -= old.errors
            self._ttft.subtract(old.ttft)
            self._tps.subtract(old.tps)
            old.requests = old.errors = 0
            old.ttft.clear()
            old.tps.clear()

    def record(
        self, ok: bool, ttft_s: float | None = None, tokens_per_s: float | None = None
    ) -> None:
        """One finished attempt: success or failure, and its timings when known."""
        s = self._advance()
        s.requests += 1
        self.requests += 1
        if not ok:
            s.errors += 1
            self.errors += 1
        if ttft_s is not None:
            i = self._ttft.index(ttft_s)
            s.ttft.add_index(i)
            self._ttft.add_index(i)
        if tokens_per_s is not None and tokens_per_s > 0:
            i = self._tps.index(tokens_per_s)
            s.tps.add_index(i)
            self._tps.add_index(i)
        self.version += 1

    def refresh(self) -> None:
        self._advance()

    def error_rate(self) -> tuple[int, int]:
        self._advance()
        return self.errors, self.requests

    def ttft(self) -> Percentiles | None:
        self._advance()
        v = self._ttft.percentiles(PERCENTILES)
        return Percentiles(*v) if v else None

    def throughput(self) -> Percentiles | None:
        """Throughput pXX: the rate XX% of requests reach, i.e. the (100-XX)th percentile."""
        self._advance()
        v = self._tps.percentiles(tuple(100 - p for p in reversed(PERCENTILES)))
        return Percentiles(*reversed(v)) if v else None


def _ttft_hist() -> LogHistogram:
    return LogHistogram(0.005, 600.0)


def _tps_hist() -> LogHistogram:
    return LogHistogram(0.5, 50_000.0)


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When to rest a deployment and for how long.

    Opens after ``consecutive_failures`` failures in a row, or when at least
    ``min_requests`` attempts in the window failed at a rate of ``error_rate`` or more.
    Rests ``cooldown_s``, doubling (``backoff``) each time a probe fails, up to
    ``max_cooldown_s``. A probe not reported within ``probe_timeout_s`` frees the
    half-open slot for another.
    """

    consecutive_failures: int = 5
    error_rate: float = 0.5
    min_requests: int = 20
    cooldown_s: float = 10.0
    backoff: float = 2.0
    max_cooldown_s: float = 300.0
    probe_timeout_s: float = 60.0


class CircuitBreaker:
    """closed → open (rest) → half-open (one probe) → closed, or open again for longer."""

    def __init__(self, policy: BreakerPolicy | None = None, clock: Clock = time.monotonic) -> None:
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._cooldown = self.policy.cooldown_s
        self._probe_since: float | None = None

    @property
    def state(self) -> BreakerState:
        """The state now: an open breaker whose rest is over reads as half-open."""
        if self._state is BreakerState.OPEN and self._clock() >= self.reopens_at:
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def reopens_at(self) -> float:
        return self._opened_at + self._cooldown

    def allow(self) -> bool:
        """May an attempt go to this deployment now? Claims the probe when half-open."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        now = self._clock()
        if self._state is BreakerState.OPEN:
            self._state = BreakerState.HALF_OPEN
            self._probe_since = None
        if self._probe_since is not None and now - self._probe_since < self.policy.probe_timeout_s:
            return False
        self._probe_since = now
        return True

    def record_success(self) -> None:
        self._consecutive = 0
        if self._state is not BreakerState.CLOSED:
            self._state = BreakerState.CLOSED
            self._cooldown = self.policy.cooldown_s
            self._probe_since = None

    def record_failure(self, errors: int = 0, requests: int = 0) -> None:
        """A failed attempt; ``errors``/``requests`` are the window's totals, if tracked."""
        self._consecutive += 1
        p = self.policy
        if self._state is BreakerState.HALF_OPEN:
            self._open(self._cooldown * p.backoff)
        elif self._state is BreakerState.CLOSED and (
            self._consecutive >= p.consecutive_failures
            or (requests >= p.min_requests and errors >= p.error_rate * requests)
        ):
            self._open(p.cooldown_s)

    def _open(self, cooldown: float) -> None:
        self._state = BreakerState.OPEN
        self._cooldown = min(cooldown, self.policy.max_cooldown_s)
        self._opened_at = self._clock()
        self._probe_since = None


class DeploymentHealth:
    """Rolling stats and a breaker for one deployment, fed by the pipeline's attempts."""

    __slots__ = ("_cache", "_cache_key", "breaker", "stats")

    def __init__(self, stats: RollingStats, breaker: CircuitBreaker) -> None:
        self.stats = stats
        self.breaker = breaker
        self._cache: HealthSnapshot | None = None
        self._cache_key: tuple[int, BreakerState] | None = None

    def success(self, ttft_s: float | None = None, tokens_per_s: float | None = None) -> None:
        self.stats.record(True, ttft_s, tokens_per_s)
        self.breaker.record_success()

    def failure(self, ttft_s: float | None = None) -> None:
        self.stats.record(False, ttft_s)
        self.breaker.record_failure(self.stats.errors, self.stats.requests)

    def snapshot(self) -> HealthSnapshot:
        self.stats.refresh()
        key = (self.stats.version, self.breaker.state)
        if self._cache is None or key != self._cache_key:
            self._cache = HealthSnapshot(
                requests=self.stats.requests,
                errors=self.stats.errors,
                ttft_s=self.stats.ttft(),
                throughput=self.stats.throughput(),
                breaker=key[1],
            )
            self._cache_key = key
        return self._cache


class HealthBoard:
    """Health of every deployment by id; created lazily, one per deployment."""

    def __init__(
        self,
        window_s: float = 60.0,
        slices: int = 6,
        policy: BreakerPolicy | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._window_s = window_s
        self._slices = slices
        self._policy = policy or BreakerPolicy()
        self._clock = clock
        self._by_id: dict[str, DeploymentHealth] = {}

    def get(self, deployment_id: str) -> DeploymentHealth:
        h = self._by_id.get(deployment_id)
        if h is None:
            h = self._by_id[deployment_id] = DeploymentHealth(
                RollingStats(self._window_s, self._slices, self._clock),
                CircuitBreaker(self._policy, self._clock),
            )
        return h

    def snapshot(self, deployment_id: str) -> HealthSnapshot | None:
        h = self._by_id.get(deployment_id)
        return h.snapshot() if h is not None else None

    def allow(self, deployment_id: str) -> bool:
        """Claim an attempt on this deployment (see :meth:`CircuitBreaker.allow`)."""
        h = self._by_id.get(deployment_id)
        return True if h is None else h.breaker.allow()

    def reset(self) -> None:
        """Forget every deployment's history (an operator's "try them all again")."""
        self._by_id.clear()

    def ids(self) -> list[str]:
        return list(self._by_id)
