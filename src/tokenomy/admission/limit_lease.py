"""What this process holds of a scope's rate limits: its lease, and a ticket admitted
against leases (see :mod:`tokenomy.admission.redis_limiter`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tokenomy.admission.ratelimit import PERIOD_S, LimitView, Scope, Ticket
from tokenomy.store.lease_engine import Lease

#: A lease's first block: this fraction of its cap (``share`` of the limit), or more.
RAMP_FROM = 64


@dataclass(slots=True)
class LimitCredit:
    """One dimension (requests or tokens) of a scope's lease: credit taken in Redis."""

    limit: int
    #: Units taken in Redis and not used yet; negative after an overrun not charged yet.
    credit: int = 0
    #: The extra units the next Redis call asks for (doubles while demand outruns it).
    block: int = 0
    #: Extra units asked of Redis by calls still in flight: requests that find the lease
    #: short meanwhile ask only for what is not on its way already.
    asked: int = 0
    #: The most credit kept: ``share`` of the limit (0: nothing is kept).
    cap: int = 0
    #: As of the last Redis answer: remaining (leased credit excluded) and reset, and when.
    remaining: int = 0
    reset_s: float = 0.0
    at: float = 0.0

    #: Seconds one unit takes to replenish.
    unit_s: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.unit_s = PERIOD_S / self.limit

    def check(self, now: float) -> LimitView:
        """The client's view: what remains counting the unused credit."""
        # Run for every dimension of every scope of every request: written without
        # max() and with the unit's time worked out once (a third less time).
        t = self.unit_s
        credit = self.credit if self.credit > 0 else 0
        # Rounded to the µs: float dust must not move a reset shown in whole ms.
        reset = round(self.reset_s - (now - self.at) - credit * t, 6)
        if reset < 0:
            reset = 0.0
        # What replenished since that answer counts too (as the memory limiter's does);
        # the answer's own figure is exact at its time (its reset is whole ms).
        left = math.floor((PERIOD_S - reset) / t + 1e-6)
        remaining = self.remaining + credit
        return LimitView(self.limit, remaining if remaining >= left else left, reset)

    def spend(self, need: int) -> int:
        """Take what the credit covers of ``need`` (and any debt it owes) now: what is left
        to ask of Redis. Asking Redis for the whole need when the lease covers part of it
        would refuse requests the limit has room for."""
        used = need if self.credit >= need else self.credit
        self.credit -= used
        return need - used

    def grow(self, need: int) -> None:
        # Doubling from a 64th of the cap, not from one unit: on a large limit a new
        # lease took a Redis call at its 2nd, 4th, 8th, ... request, a call for one
        # request in ten across 1,000 keys. What is leased stays within the cap.
        self.block = min(self.cap, max(need, 2 * self.block, self.cap // RAMP_FROM))

    def ask(self) -> int:
        """The extra units a Redis call asks for now (counted as in flight)."""
        extra = max(self.block - self.credit - self.asked, 0)
        self.asked += extra
        return extra


@dataclass(slots=True)
class LimitLease(Lease):
    """One scope's share of its limits held by this process."""

    scope: Scope
    #: The requests and tokens credit (None: the scope has no such limit).
    requests: LimitCredit | None = None
    tokens: LimitCredit | None = None
    #: Concurrency: the slot cap kept free (``share`` of the limit), the extra slots the
    #: next Redis call asks for, slots held and free, slots held and in use.
    slot_cap: int = 0
    slot_block: int = 0
    #: Extra slots asked of Redis by calls in flight (as :attr:`LimitCredit.asked`):
    #: without it, every request arriving while the lease is empty asked for a whole block, and the
    #: hundreds of thousands of slots the hand-back then returned made one script call
    #: that held Redis (and every gateway's requests) for tens of milliseconds.
    slots_asked: int = 0
    free: list[str] = field(default_factory=list)
    busy: set[str] = field(default_factory=set)

    def serves(self, scope: Scope) -> bool:
        """Whether this lease holds ``scope``'s limits as they are now (a scope is made
        once per key and reused, so most often it is the very object)."""
        return self.scope is scope or self.scope.limits == scope.limits

    def covers(self, tokens: int) -> bool:
        """Whether the request can be admitted from this lease alone."""
        lim = self.scope.limits
        if self.requests is not None and self.requests.credit < 1:
            return False
        if self.tokens is not None and tokens > 0 and self.tokens.credit < tokens:
            return False
        return lim.concurrent is None or bool(self.free)

    def empty(self) -> bool:
        return (
            not self.free
            and not self.busy
            and (self.requests is None or self.requests.credit == 0)
            and (self.tokens is None or self.tokens.credit == 0)
        )


@dataclass(slots=True)
class LeasedTicket(Ticket):
    """A ticket admitted against leases: the slot each scope's admission holds."""

    slots: tuple[str | None, ...] = ()
