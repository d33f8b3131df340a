"""The fair queue's order, and each waiting job's place and expected times: pure.

Jobs of one deployment start in turns across owners (organisations): the next job is the
oldest waiting job of the owner whose last job started longest ago (an owner never
served goes first). That is round robin among the owners waiting, whatever the order they
submitted in. The plan replays that rule over the waiting jobs with the deployment's
render capacity and measured render speed, giving each job its position and expected
start and end; the store's claim applies the same rule to pick the next job.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Waiting:
    id: str
    owner: str
    created_ms: int
    seconds: int


@dataclass(frozen=True, slots=True)
class Running:
    id: str
    started_ms: int
    seconds: int


@dataclass(frozen=True, slots=True)
class Slot:
    """A waiting job's place: ``position`` 1 starts next; times are epoch ms."""

    position: int
    start_ms: float
    end_ms: float


def turn_key(last_start_ms: int | None, oldest_ms: int, owner: str) -> tuple[int, int, str]:
    """The order owners take turns in: least recently served first, then oldest waiting."""
    return (-1 if last_start_ms is None else last_start_ms, oldest_ms, owner)


def plan(
    waiting: Iterable[Waiting],
    running: Sequence[Running],
    last_start: Mapping[str, int],
    capacity: int,
    ms_per_second: float,
    now_ms: float,
) -> dict[str, Slot]:
    """Every waiting job's slot if nothing else arrived."""
    queues: dict[str, deque[Waiting]] = {}
    for w in sorted(waiting, key=lambda w: (w.created_ms, w.id)):
        queues.setdefault(w.owner, deque()).append(w)
    ends = sorted(max(now_ms, r.started_ms + r.seconds * ms_per_second) for r in running)
    # More running than the capacity (it was lowered): a slot frees when enough end.
    free = ends[len(ends) - capacity :] if len(ends) > capacity else ends
    free += [now_ms] * (capacity - len(free))
    heapq.heapify(free)
    owners = [turn_key(last_start.get(o), q[0].created_ms, o) for o, q in queues.items()]
    heapq.heapify(owners)
    out: dict[str, Slot] = {}
    while owners:
        _, _, owner = heapq.heappop(owners)
        q = queues[owner]
        job = q.popleft()
        start = heapq.heappop(free)
        end = start + job.seconds * ms_per_second
        heapq.heappush(free, end)
        out[job.id] = Slot(len(out) + 1, start, end)
        if q:
            heapq.heappush(owners, turn_key(math.ceil(start), q[0].created_ms, owner))
    return out


def moving_rate(samples: Iterable[tuple[int, int]], default: float) -> float:
    """Render ms per output second over measured ``(render_ms, seconds)`` renders (their
    plain mean, the window being the most recent ones); ``default`` before any."""
    rates = [ms / s for ms, s in samples if s > 0 and ms >= 0]
    return sum(rates) / len(rates) if rates else default


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None with no values."""
    if not values:
        return None
    ordered = sorted(values)
    i = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[i]


def next_owner(oldest: Mapping[str, int], last_start: Mapping[str, int]) -> str:
    """Whose turn it is: the claim's side of the rule :func:`plan` replays."""
    return min(oldest, key=lambda o: turn_key(last_start.get(o), oldest[o], o))
