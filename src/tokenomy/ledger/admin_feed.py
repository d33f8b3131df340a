"""Orgs' admin totals (top-ups, credits, refunds) fed to the live ledger as they change.

The gateway re-reads the totals every second or so. Setting every org's total in the
live ledger each time cost one script call per org per refresh: with 10,000 orgs, 10,000
calls a second against Redis for a gateway doing nothing. The feed remembers what it set
and sends only the totals that changed, many to a call; every ``full_every`` refreshes
it sends them all again, which bounds how long a meter loaded from an older read of the
database (a load racing a top-up) can show a stale total.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from tokenomy.ledger.live import LiveLedger


class AdminTotalsFeed:
    """What the live ledger was last told of each org's admin total, and the changes."""

    def __init__(
        self,
        live: LiveLedger,
        *,
        full_every: int = 60,
        on_change: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        self._live = live
        #: Told the orgs whose totals changed (not the full pushes' unchanged ones).
        self._on_change = on_change
        self._full_every = full_every
        self._sent: dict[str, int] = {}
        self._refreshes = 0

    async def push(self, org_ids: Iterable[str], totals: Mapping[str, int]) -> int:
        """Set the totals of ``org_ids`` (0 for an org without any) that changed since the
        last push, or all of them on every ``full_every``-th; returns how many were set."""
        full = self._refreshes % self._full_every == 0
        self._refreshes += 1
        now = {org_id: totals.get(org_id, 0) for org_id in org_ids}
        moved = {o: t for o, t in now.items() if self._sent.get(o) != t}
        changed = now if full else moved
        if changed:
            await self._live.set_admin_totals(changed)
        if moved and self._on_change is not None:
            self._on_change(moved)
        # Remembered once set (a failed push is sent again next time); orgs gone are
        # forgotten.
        self._sent = now
        return len(changed)
