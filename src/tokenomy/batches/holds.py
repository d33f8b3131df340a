"""The money a batch holds: one hold per line, made at creation, settled as it ends.

A line's hold has the line's request id as its id. Holds are made on the exact live
ledger (Redis itself, not a process's lease of it, when there is Redis) so that any
replica running or cancelling the line settles the same hold; making one again is a
no-op while it is open, which is how a process restarted without its in-memory holds
takes them back.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from itertools import islice

from tokenomy.core.keys import ApiKey
from tokenomy.ledger.account_cache import AccountCache
from tokenomy.ledger.accounts import OrgMeter
from tokenomy.ledger.live import Hold, LiveLedger, MemoryLedger

#: A line's hold outlives its batch's completion window by this much (seconds), so a
#: line still running at the deadline is settled against its own hold.
HOLD_GRACE_S = 3600


def exact_ledger(live: LiveLedger) -> LiveLedger:
    """The ledger every replica shares: below a lease layer, the Redis ledger itself."""
    # A lease layer exists only if its module was loaded (with Redis): not importing it
    # here keeps the Redis client library out of a gateway without Redis (some 9 MB).
    leased = sys.modules.get("tokenomy.ledger.leased")
    if leased is not None and isinstance(live, leased.LeasedLedger):
        return live.inner  # type: ignore[no-any-return]
    return live


class LineHolds:
    """Builds, makes and releases the holds of batch lines."""

    def __init__(self, live: LiveLedger, accounts: AccountCache) -> None:
        self.live = exact_ledger(live)
        self.accounts = accounts
        #: Holds live in this process's memory (lost with it), not in Redis.
        self.in_memory = isinstance(self.live, MemoryLedger)

    def hold_for(
        self,
        key: ApiKey,
        request_id: str,
        amount: int,
        tokens: int,
        created_ms: int,
        expires_s: int,
    ) -> Hold | None:
        """The line's hold (None for a key without an org: nothing is charged)."""
        org = self.accounts.org_of(key)
        if org is None:
            return None
        return Hold(
            id=request_id,
            org=OrgMeter(org),
            budgets=self.accounts.meters(key, created_ms),
            amount=amount,
            tokens=tokens,
            expires_at=float(expires_s + HOLD_GRACE_S),
        )

    async def make(self, holds: Callable[[], Iterable[Hold]]) -> None:
        """All the holds or none (raises the ledger's Shortfall after releasing). The
        holds are made again from ``holds()`` to release them, not kept: a batch may
        have 100,000 lines."""
        made = 0
        try:
            for h in holds():
                await self.live.hold(h)
                made += 1
        except BaseException:
            await self.release(islice(holds(), made))
            raise

    async def release(self, holds: Iterable[Hold]) -> None:
        """Release holds whose lines will never run (cancelled, expired, refused)."""
        for h in holds:
            await self.live.settle(h, 0, 0)
