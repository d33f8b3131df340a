"""Fair queues in front of a deployment at capacity: wait, fairly, or be told when to retry.

Within a priority tier, organisations share a deployment by start-time fair queuing
(SFQ): each waiter is tagged ``max(virtual time, its org's last finish)`` and the org's
finish moves on by ``1 / weight``, the smallest tag is served next, and virtual time is
the tag last served. A tenant that floods the queue only lengthens its own line; another
tenant's next request is tagged near the head. Higher tiers are served first (strictly).

A request waits at most its bound: if the estimated wait on arrival already exceeds it,
it is shed at once (503 with Retry-After), and a waiter that is still queued when the
bound passes leaves with the same answer. A cancelled waiter (the client went away)
leaves the queue at once, and a slot granted to it in the same instant is passed on.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from tokenomy.core.errors import Overloaded

#: Service tiers (OpenAI's ``service_tier`` names), served strictly highest first.
TIERS = {"priority": 2, "default": 1, "auto": 1, "flex": 0, "batch": 0}
DEFAULT_TIER = 1
_EWMA = 0.2


def _order(w: _Waiter) -> tuple[float, int]:
    return (w.tag, w.seq)


def tier_for(name: str | None) -> int:
    """The tier for a ``service_tier`` value; unknown or missing is the default tier."""
    return TIERS.get(name or "", DEFAULT_TIER)


class _Waiter:
    __slots__ = (
        "enqueued_at",
        "estimate_s",
        "future",
        "key",
        "org",
        "position",
        "queued",
        "request_id",
        "seq",
        "tag",
        "tier",
    )

    def __init__(
        self,
        org: str,
        key: str | None,
        tier: int,
        tag: float,
        seq: int,
        now: float,
        request_id: str | None = None,
    ) -> None:
        self.org = org
        self.key = key
        self.request_id = request_id
        self.tier = tier
        self.tag = tag
        self.seq = seq
        self.enqueued_at = now
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queued = True
        self.position = 0
        self.estimate_s = 0.0


class _Tier:
    __slots__ = ("count", "finish", "orgs", "vtime", "weights")

    def __init__(self) -> None:
        self.vtime = 0.0
        self.count = 0
        self.orgs: dict[str, deque[_Waiter]] = {}
        self.finish: dict[str, float] = {}
        self.weights: dict[str, float] = {}


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """A waiting request as its key may see it (``GET /v1/queue``)."""

    queue: str
    org: str
    tier: int
    position: int
    estimated_wait_s: float
    waited_s: float
    request_id: str | None = None


class Slot:
    """A granted place on the deployment; release it exactly once (extra calls are no-ops)."""

    __slots__ = ("_queue", "estimated_wait_s", "granted_at", "position", "released", "waited_s")

    def __init__(
        self, queue: FairQueue, granted_at: float, waited_s: float, position: int, est: float
    ) -> None:
        self._queue = queue
        self.granted_at = granted_at
        self.waited_s = waited_s
        self.position = position
        self.estimated_wait_s = est
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._queue._release(self)

    def headers(self) -> dict[str, str]:
        """Where the request stood on arrival and how long it waited."""
        return {
            "x-tokenomy-queue-position": str(self.position),
            "x-tokenomy-queue-wait-ms": str(round(self.waited_s * 1000)),
        }

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        e: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class FairQueue:
    """``capacity`` concurrent requests to one deployment; the rest wait their fair turn.

    ``service_s`` seeds the running mean of how long a slot is held, which turns a queue
    position into an estimated wait.
    """

    def __init__(
        self,
        name: str,
        capacity: int,
        *,
        max_wait_s: float = 30.0,
        service_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.name = name
        self.capacity = capacity
        self.max_wait_s = max_wait_s
        self.service_s = service_s
        self._clock = clock
        self.in_use = 0
        self.waiting = 0
        self._tiers: dict[int, _Tier] = {}
        self._seq = 0
        self._by_key: dict[str, set[_Waiter]] = {}

    async def acquire(
        self,
        org: str,
        *,
        key: str | None = None,
        weight: float = 1.0,
        tier: int = DEFAULT_TIER,
        max_wait_s: float | None = None,
        request_id: str | None = None,
    ) -> Slot:
        """A slot now, or after a fair wait; raises Overloaded (503) when the wait is too long."""
        now = self._clock()
        if self.in_use < self.capacity and self.waiting == 0:
            self.in_use += 1
            return Slot(self, now, 0.0, 0, 0.0)
        bound = self.max_wait_s if max_wait_s is None else max_wait_s
        w = self._enqueue(org, key, max(weight, 1e-6), tier, now, request_id)
        if w.estimate_s > bound:
            self._remove(w)
            raise self._shed(w.estimate_s)
        try:
            async with asyncio.timeout(bound):
                await w.future
        except TimeoutError:
            if not self._granted(w):
                estimate = self.estimate(w)
                self._remove(w)
                raise self._shed(estimate) from None
        except asyncio.CancelledError:
            if self._granted(w):
                self._pass_on()
            else:
                self._remove(w)
            raise
        t = self._clock()
        return Slot(self, t, t - w.enqueued_at, w.position, w.estimate_s)

    @staticmethod
    def _granted(w: _Waiter) -> bool:
        f = w.future
        return f.done() and not f.cancelled() and f.exception() is None

    def _shed(self, estimate: float) -> Overloaded:
        return Overloaded(
            f"'{self.name}' is at capacity and the estimated wait ({estimate:.0f}s) exceeds "
            "this request's limit. Retry later.",
            retry_after=max(1.0, estimate),
        )

    def _enqueue(
        self,
        org: str,
        key: str | None,
        weight: float,
        tier: int,
        now: float,
        request_id: str | None = None,
    ) -> _Waiter:
        t = self._tiers.get(tier)
        if t is None:
            t = self._tiers[tier] = _Tier()
        tag = max(t.vtime, t.finish.get(org, 0.0))
        t.finish[org] = tag + 1.0 / weight
        t.weights[org] = weight
        self._seq += 1
        w = _Waiter(org, key, tier, tag, self._seq, now, request_id)
        line = t.orgs.get(org)
        if line is None:
            line = t.orgs[org] = deque()
        line.append(w)
        t.count += 1
        self.waiting += 1
        if key is not None:
            self._by_key.setdefault(key, set()).add(w)
        w.position = self.position(w)
        w.estimate_s = self._wait_for(w.position)
        return w

    def _remove(self, w: _Waiter) -> None:
        """Take a waiter out of the queue (idempotent)."""
        if not w.queued:
            return
        w.queued = False
        t = self._tiers[w.tier]
        line = t.orgs[w.org]
        if line[0] is w:
            line.popleft()
        else:
            line.remove(w)
        self._forget(t, w, line)

    def _forget(self, t: _Tier, w: _Waiter, line: deque[_Waiter]) -> None:
        if not line:
            del t.orgs[w.org]
        t.count -= 1
        self.waiting -= 1
        if t.count == 0:
            # Nobody waits in this tier: finish tags only matter relative to each other.
            t.finish.clear()
            t.weights.clear()
        if w.key is not None:
            ws = self._by_key.get(w.key)
            if ws is not None:
                ws.discard(w)
                if not ws:
                    del self._by_key[w.key]

    def _pop_next(self) -> _Waiter | None:
        for level in sorted(self._tiers, reverse=True):
            t = self._tiers[level]
            if not t.count:
                continue
            best: _Waiter | None = None
            for line in t.orgs.values():
                h = line[0]
                if best is None or (h.tag, h.seq) < (best.tag, best.seq):
                    best = h
            assert best is not None
            line = t.orgs[best.org]
            line.popleft()
            best.queued = False
            t.vtime = best.tag
            self._forget(t, best, line)
            return best
        return None

    def _release(self, slot: Slot) -> None:
        held = self._clock() - slot.granted_at
        self.service_s += _EWMA * (max(held, 0.0) - self.service_s)
        self._pass_on()

    def _pass_on(self) -> None:
        """Hand a freed slot to the next live waiter, or give it back."""
        while (w := self._pop_next()) is not None:
            if not w.future.done():
                w.future.set_result(None)
                return
        self.in_use -= 1

    def set_capacity(self, capacity: int) -> None:
        """Resize (e.g. from config reload); extra room is handed to waiters at once."""
        self.capacity = max(1, capacity)
        while self.in_use < self.capacity and self.waiting:
            self.in_use += 1
            self._pass_on()

    def position(self, w: _Waiter) -> int:
        """Waiters to be served before ``w`` as things stand: higher tiers, then earlier tags.

        Each org's line is sorted by (tag, arrival), so this is a binary search per org in
        the tier, not a walk of the whole queue.
        """
        ahead = sum(t.count for lvl, t in self._tiers.items() if lvl > w.tier)
        t = self._tiers.get(w.tier)
        if t is None:
            return ahead
        mark = (w.tag, w.seq)
        for line in t.orgs.values():
            if (line[-1].tag, line[-1].seq) < mark:
                ahead += len(line)
            elif (line[0].tag, line[0].seq) < mark:
                ahead += bisect_left(line, mark, key=_order)
        return ahead

    def _wait_for(self, position: int) -> float:
        return (position + 1) * self.service_s / self.capacity

    def estimate(self, w: _Waiter) -> float:
        return self._wait_for(self.position(w))

    def view(self, key: str) -> list[QueueEntry]:
        """This key's waiting requests, for ``GET /v1/queue``."""
        now = self._clock()
        out = []
        for w in self._by_key.get(key, ()):
            pos = self.position(w)
            waited = now - w.enqueued_at
            entry = QueueEntry(
                self.name, w.org, w.tier, pos, self._wait_for(pos), waited, w.request_id
            )
            out.append(entry)
        out.sort(key=lambda e: e.position)
        return out


class QueueBoard:
    """One FairQueue per deployment, created on first use."""

    def __init__(
        self,
        *,
        max_wait_s: float = 30.0,
        service_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_wait_s = max_wait_s
        self._service_s = service_s
        self._clock = clock
        self._queues: dict[str, FairQueue] = {}

    def queue(self, name: str, capacity: int) -> FairQueue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = FairQueue(
                name,
                capacity,
                max_wait_s=self._max_wait_s,
                service_s=self._service_s,
                clock=self._clock,
            )
        elif q.capacity != capacity:
            q.set_capacity(capacity)
        return q

    def view(self, key: str) -> list[QueueEntry]:
        return [e for q in self._queues.values() for e in q.view(key)]

    @property
    def depth(self) -> int:
        """Requests waiting across every deployment's queue."""
        return sum(q.waiting for q in self._queues.values())
