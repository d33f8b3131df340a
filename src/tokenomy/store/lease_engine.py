"""The lease engine: per-process leases on shared Redis counters, kept and given back.

A process that asks Redis for a little more than one request needs (rate-limit credit,
a ledger meter's reserve) serves the next requests from that lease without a round trip.
What differs between the two users is what a lease holds and the script that takes and
gives it; what is the same lives here: the table of leases by key, when each was last
used and renewed, a lease unused for ``idle_s`` given back whole, one renewed every
``renew_s`` while it holds anything, work due soon batched into one call per loop
iteration (or per ``delay``), and the background calls waited for on flush and close.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)


@dataclass(slots=True, kw_only=True)
class Lease:
    """What every lease has: the key it is on, and when it was last used and renewed
    (on the engine's clock)."""

    key: str
    used_at: float = 0.0
    renewed_at: float = 0.0


L = TypeVar("L", bound=Lease)

#: A round of upkeep, or the work due soon: plain or a coroutine function.
Work = Callable[..., Awaitable[None] | None]


class LeaseEngine(Generic[L]):
    """The leases of one kind this process holds, by key, and their upkeep.

    ``upkeep(now)`` runs every ``min(idle_s / 2, renew_s)`` while any lease exists (it
    gives back idle leases and renews old ones: see :meth:`idle` and :meth:`renewal_due`);
    ``due()`` runs once after :meth:`schedule` is asked, however often it is asked
    meanwhile, and never twice at a time: asked while it runs, it runs again when it ends,
    after the shortest delay asked meanwhile (``again_s`` after a failed round).
    """

    def __init__(
        self,
        what: str,
        idle_s: float,
        renew_s: float,
        clock: Callable[[], float],
        *,
        upkeep: Work,
        due: Work,
        again_s: float = 0.0,
    ) -> None:
        self.what = what
        self.idle_s = idle_s
        self.renew_s = renew_s
        self.clock = clock
        self.leases: dict[str, L] = {}
        self._upkeep = upkeep
        self._due = due
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.Handle | None = None
        self._running: asyncio.Task[None] | None = None
        self._again = False
        self._retry = False
        #: The shortest delay asked while a round ran: the next round's, once it ends.
        self._again_delay = again_s
        self._again_s = again_s
        self._pending: set[asyncio.Future[Any]] = set()
        #: Whether the last round of work failed (logged once per run of failures).
        self.failing = False
        self._closed = False

    # -- the table ---------------------------------------------------------------------

    def get(self, key: str) -> L | None:
        return self.leases.get(key)

    def add(self, lease: L) -> L:
        """Keep ``lease`` (used now; renewed when it first holds something); upkeep
        starts with the first."""
        lease.used_at = self.clock()
        self.leases[lease.key] = lease
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run_upkeep())
        return lease

    def forget(self, lease: L) -> None:
        if self.leases.get(lease.key) is lease:
            del self.leases[lease.key]

    def __iter__(self) -> Iterator[L]:
        return iter(list(self.leases.values()))

    def __len__(self) -> int:
        return len(self.leases)

    def idle(self, lease: Lease, now: float) -> bool:
        """Unused for ``idle_s``: what it holds goes back whole."""
        return now - lease.used_at >= self.idle_s

    def renewal_due(self, lease: Lease, now: float) -> bool:
        """Held for ``renew_s`` since its last renewal: renew it before it expires."""
        return now - lease.renewed_at >= self.renew_s

    # -- work due soon -----------------------------------------------------------------

    def schedule(self, delay: float = 0.0) -> None:
        """Run ``due`` after ``delay`` seconds (0: at this loop iteration's end); a
        sooner ask moves a later one up, a later ask waits for the one scheduled."""
        if self._closed:
            return
        if self._running is not None:
            # The round in flight ends by scheduling the next: as soon as anyone asked (a
            # hold that needs its lease now waited a whole sync interval for it).
            self._again_delay = delay if not self._again else min(self._again_delay, delay)
            self._again = True
            return
        if self._timer is not None:
            if delay > 0:
                return
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        if delay > 0:
            self._timer = loop.call_later(delay, self._start)
        else:
            self._timer = loop.call_soon(self._start)

    def unschedule(self) -> None:
        """Drop a scheduled round (its work is about to be done by the caller)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _start(self) -> None:
        self._timer = None
        out = self._due()
        if inspect.isawaitable(out):
            self._running = asyncio.ensure_future(self._finish(out))

    async def _finish(self, work: Awaitable[None]) -> None:
        try:
            await work
        finally:
            self._running = None
        if self._again:
            # After a failure never sooner than again_s: a store that is down would
            # otherwise be asked again at once for every request that wanted a round.
            delay = self._again_s if self._retry else self._again_delay
            self._again = self._retry = False
            self.schedule(delay)

    def retry(self) -> None:
        """Ask for another round ``again_s`` after this one (this one failed)."""
        self._again = self._retry = True

    # -- background calls --------------------------------------------------------------

    def track(self, fut: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """A call answered in the background: :meth:`drain` waits for it."""
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        return fut

    async def drain(self) -> None:
        """Wait until every background call and the round in flight are answered."""
        while self._pending or self._running is not None:
            await asyncio.gather(
                *list(self._pending),
                *([self._running] if self._running is not None else []),
                return_exceptions=True,
            )

    # -- upkeep ------------------------------------------------------------------------

    async def _run_upkeep(self) -> None:
        period = min(self.idle_s / 2, self.renew_s)
        while True:
            await asyncio.sleep(period)
            try:
                out = self._upkeep(self.clock())
                if inspect.isawaitable(out):
                    await out
            except Exception as e:
                self.failed(f"{self.what} lease upkeep", e)

    def failed(self, doing: str, e: BaseException) -> None:
        """Log a failure once per run of failures, not every round."""
        if not self.failing:
            log.warning("%s failed (retrying; leases expire meanwhile): %s", doing, e)
        self.failing = True

    def worked(self, doing: str) -> None:
        if self.failing:
            self.failing = False
            log.warning("%s works again", doing)

    async def close(self) -> None:
        """Stop the upkeep and any scheduled round (the owner gives its leases back)."""
        self._closed = True
        self.unschedule()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
