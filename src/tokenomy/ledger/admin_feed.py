"""Orgs' admin totals (top-ups, credits, refunds) fed to the live ledger as they change.

The gateway refreshes the totals every second or so. Setting every org's total in the
live ledger each time cost one script call per org per refresh: with 10,000 orgs, 10,000
calls a second against Redis for a gateway doing nothing. The feed remembers what it set
and, between full pushes, sends only the totals that changed, many to a call.

Reading every org's total every second cost as much again (10,000 topped-up orgs: 11 ms
of the gateway's CPU and 25 ms of PostgreSQL's, a second). The reader reads all of them
only every ``full_every`` refreshes, and those are pushed whole, which bounds how long a
meter loaded from an older read of the database (a load racing a top-up) can show a
stale total; in between, it reads only the totals of the orgs with an admin transaction
in the last ``margin_s`` (time-indexed), which re-reads a top-up for a few seconds after
it is made, so one committed a little after its timestamp is not missed. The margin is
short because a bulk top-up (every org at once) is re-read whole on every refresh within
it: a minute's margin cost 97 ms of CPU a second on SQLite with 10,000 orgs topped up.
A transaction committed later than the margin after its timestamp (a stalled database) is
still read by the next full read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Protocol

from tokenomy.ledger.live import LiveLedger

#: How far back each incremental read looks for admin transactions (seconds).
MARGIN_S = 5.0
#: The most orgs an incremental read names in its query (SQLite takes 32,766 values in
#: one statement); more recent ones than that are read whole, which costs less anyway.
FULL_ABOVE = 5_000


class AdminTotalsSource(Protocol):
    def admin_totals(self, org_ids: Collection[str] | None = None) -> dict[str, int]: ...

    def admin_orgs_since(self, ts_ms: int) -> set[str]: ...


class AdminTotalsReader:
    """Reads the admin totals that may have changed since the last read (blocking: run it
    on a worker thread): all of them on the first and every ``full_every``-th read, and
    when more than ``full_above`` orgs had an admin transaction lately."""

    def __init__(
        self,
        source: AdminTotalsSource,
        *,
        full_every: int = 60,
        margin_s: float = MARGIN_S,
        full_above: int = FULL_ABOVE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._full_every = full_every
        self._full_above = full_above
        self._margin_ms = int(margin_s * 1000)
        self._clock = clock
        self._reads = 0

    def read(self) -> tuple[dict[str, int], bool]:
        """(totals, whether they are every org's). An incremental read gives each org
        with a recent admin transaction its whole total (0 if it has none)."""
        full = self._reads % self._full_every == 0
        self._reads += 1
        if full:
            return self._source.admin_totals(), True
        since = int(self._clock() * 1000) - self._margin_ms
        orgs = self._source.admin_orgs_since(since)
        if not orgs:
            return {}, False
        if len(orgs) > self._full_above:
            return self._source.admin_totals(), True
        totals = self._source.admin_totals(orgs)
        return {o: totals.get(o, 0) for o in orgs}, False


class AdminTotalsFeed:
    """What the live ledger was last told of each org's admin total, and the changes."""

    def __init__(
        self, live: LiveLedger, *, on_change: Callable[[Iterable[str]], None] | None = None
    ) -> None:
        self._live = live
        #: Told the orgs whose totals changed (not the full pushes' unchanged ones).
        self._on_change = on_change
        self._sent: dict[str, int] = {}

    async def push_all(self, org_ids: Iterable[str], totals: Mapping[str, int]) -> int:
        """Set the totals of every one of ``org_ids`` (0 for an org without any), changed
        or not; returns how many were set."""
        now = {org_id: totals.get(org_id, 0) for org_id in org_ids}
        if now:
            await self._live.set_admin_totals(now)
        self._told({o: t for o, t in now.items() if self._sent.get(o) != t})
        # Remembered once set (a failed push is sent again next time); orgs gone are
        # forgotten.
        self._sent = now
        return len(now)

    async def push_changed(self, totals: Mapping[str, int]) -> int:
        """Set those of ``totals`` (some orgs' whole totals) that differ from what was
        last set; returns how many were set."""
        moved = {o: t for o, t in totals.items() if self._sent.get(o) != t}
        if moved:
            await self._live.set_admin_totals(moved)
            self._told(moved)
            self._sent.update(moved)
        return len(moved)

    def _told(self, moved: Mapping[str, int]) -> None:
        if moved and self._on_change is not None:
            self._on_change(moved)
