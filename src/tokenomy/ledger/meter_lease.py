"""A ledger lease: one process's reserve on one meter, and what is in use or settled
against it (see :mod:`tokenomy.ledger.leased`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenomy.ledger.accounts import BudgetMeter, OrgMeter
from tokenomy.store.lease_engine import Lease

#: Requests whose usage a lease posts at the next sync however recent they are. A lease
#: with fewer waits, up to ``post_max_s``: a sync's work for Redis is mostly per lease, so
#: 1,000 orgs with a request or two each per sync had Redis do a lease's work for every
#: request (half of its CPU). A busy lease has this many within one sync interval.
POST_ITEMS = 8


@dataclass(slots=True, eq=False)
class MeterLease(Lease):
    """This process's reserve on one meter, and what is in use or settled against it;
    renewed (``renewed_at``) by every sync. Compared by identity (a lease is state, and
    comparing every field of thousands of them is what made upkeep stall the loop)."""

    id: str
    org: OrgMeter | None
    budget: BudgetMeter | None
    #: Reserved in Redis (nanos, tokens), as of the last sync.
    reserve: int = 0
    treserve: int = 0
    #: Local holds open against it, and usage settled and not posted yet.
    held: int = 0
    theld: int = 0
    used: int = 0
    tused: int = 0
    #: The requests whose usage ``used`` and ``tused`` sum, posted with it: (id, nanos,
    #: tokens). Kept by request so that a rebuild adds what the database had not yet.
    items: list[tuple[str, int, int]] = field(default_factory=list)
    #: What the last sync asked Redis to keep at least (nanos, tokens).
    keep: tuple[int, int] = (0, 0)
    #: Hold what is in use at the next sync even past the floor (see _reassert).
    force: bool = False
    #: The nanos and tokens of the meter's last hold: a reserve smaller is not taken.
    unit: int = 0
    tunit: int = 0
    #: Syncs of this lease Redis answered: the base of the next one, which lets Redis
    #: recognise usage posted again after a call whose answer was lost.
    answered: int = 0
    #: When the oldest usage not posted yet was settled (monotonic clock).
    since: float = 0.0

    @property
    def money_bound(self) -> bool:
        return self.budget is None or self.budget.budget.amount_nanos is not None

    @property
    def token_bound(self) -> bool:
        return self.budget is not None and self.budget.budget.token_limit is not None

    def post_due_early(self) -> bool:
        """Whether its settled usage goes at the next sync before it is old enough (age
        is the background round's to judge, oldest first): enough of it, asked for, or
        taking up half of the reserve (a sync refills it)."""
        if not (self.used or self.tused):
            return False
        return (
            len(self.items) >= POST_ITEMS
            or self.force
            or (self.money_bound and 2 * self.used >= self.reserve)
            or (self.token_bound and 2 * self.tused >= self.treserve)
        )

    def covers(self, amount: int, tokens: int) -> bool:
        if self.money_bound and amount > self.reserve - self.held - self.used:
            return False
        return not (self.token_bound and tokens > self.treserve - self.theld - self.tused)

    def idle(self) -> bool:
        return not (self.held or self.theld or self.used or self.tused)

    def empty(self) -> bool:
        return self.idle() and not (self.reserve or self.treserve)
