"""Live balances, budgets and two-phase holds: the part of the ledger on the request path.

A hold reserves a worst-case amount against an org's balance and every budget on the
request's path, all or nothing; settling posts the actual amount and releases the rest.
The durable truth is the double-entry ledger in the database; the live state is derived
from it (rebuilt when missing) and only ever moves by holds and settlements.

An org's available funds are ``admin - used - held``, where ``admin`` is the sum of its
non-usage ledger entries (top-ups, credits, refunds, adjustments, refreshed from the
database as an absolute value, so it can never be applied twice), ``used`` the usage
posted, and ``held`` the open holds. A hold must leave available funds at or above the
org's floor (0 prepaid, minus the credit line postpaid).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tokenomy.ledger.accounts import BudgetMeter, OrgMeter
from tokenomy.ledger.snapshot import LiveTotals


class Shortfall(Exception):
    """A hold could not be covered; ``what`` names the balance or budget that ran out."""

    def __init__(
        self, what: str, needed: int, available: int, *, tokens: bool = False, budget: bool = False
    ) -> None:
        super().__init__(what)
        self.what = what
        self.needed = needed
        self.available = available
        self.tokens = tokens
        #: A budget ran out, not the balance: a top-up would not help.
        self.budget = budget


@dataclass(slots=True)
class Hold:
    id: str
    org: OrgMeter | None
    budgets: tuple[BudgetMeter, ...]
    amount: int  # nanos of the org's currency
    tokens: int
    expires_at: float = 0.0  # epoch seconds


@dataclass(slots=True)
class OrgState:
    admin: int = 0
    used: int = 0
    held: int = 0

    @property
    def balance(self) -> int:
        return self.admin - self.used


@dataclass(slots=True)
class BudgetState:
    spent: int = 0
    held: int = 0
    tokens_spent: int = 0
    tokens_held: int = 0


class Loader(Protocol):
    """Durable totals to (re)build live state from; blocking, run in a worker thread."""

    def org_totals(self, org_id: str) -> tuple[int, int]:
        """(admin, used) nanos of an org from the ledger."""
        ...

    def budget_spent(self, meter: BudgetMeter) -> tuple[int, int]:
        """(nanos, tokens) already posted in a budget's current period."""
        ...

    def live_totals(self, at_ms: int, request_ids: Collection[str]) -> LiveTotals:
        """Every org's and current budget bucket's totals, and which of ``request_ids``
        are recorded, in one snapshot: what lost live state is rebuilt from."""
        ...

    def live_snapshot(self, at_ms: int) -> TotalsSnapshot:
        """The totals ``live_totals`` reads, in a snapshot kept open to be asked which
        requests are recorded again and again (a rebuild's later rounds)."""
        ...


class TotalsSnapshot(Protocol):
    orgs: dict[str, tuple[int, int]]
    budgets: dict[str, tuple[int, int, int | None]]

    def recorded(self, request_ids: Collection[str]) -> frozenset[str]: ...

    def close(self) -> None: ...


class LiveStateUnavailable(Exception):
    """Live balances cannot be reached or are being rebuilt: nothing can be held now."""


class LiveLedger(Protocol):
    async def hold(self, hold: Hold) -> None:
        """Reserve ``hold.amount`` and ``hold.tokens`` on every meter, or raise Shortfall."""
        ...

    async def settle(self, hold: Hold, amount: int, tokens: int) -> None:
        """Release the hold (if still open) and post ``amount`` and ``tokens``."""
        ...

    async def settle_soon(self, hold: Hold, amount: int, tokens: int) -> None:
        """``settle`` without waiting for a remote store to answer (the request path's
        way): a failure is logged, not raised, and ``close`` waits for those on their way."""
        ...

    async def expire(self, now: float | None = None) -> int:
        """Release holds past their expiry (crashed or stuck requests); returns how many."""
        ...

    async def org_state(self, meter: OrgMeter) -> OrgState: ...

    async def budget_state(self, meter: BudgetMeter) -> BudgetState: ...

    async def set_admin_total(self, org_id: str, admin_nanos: int) -> None:
        """The org's admin total as now in the database (no-op if not loaded)."""
        ...

    async def set_admin_totals(self, totals: Mapping[str, int]) -> None:
        """``set_admin_total`` for many orgs at once (in Redis, a call per few hundred)."""
        ...

    async def close(self) -> None: ...


@dataclass
class MemoryLedger:
    """Live state in this process's memory: exact and atomic on one event loop."""

    loader: Loader
    orgs: dict[str, OrgState] = field(default_factory=dict)
    budgets: dict[str, BudgetState] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)

    async def _org(self, meter: OrgMeter) -> OrgState:
        st = self.orgs.get(meter.org.id)
        if st is None:
            admin, used = await asyncio.to_thread(self.loader.org_totals, meter.org.id)
            # Another request may have loaded it meanwhile; its state wins (it may hold).
            st = self.orgs.setdefault(meter.org.id, OrgState(admin, used))
        return st

    async def _budget(self, meter: BudgetMeter) -> BudgetState:
        st = self.budgets.get(meter.key)
        if st is None:
            nanos, tokens = await asyncio.to_thread(self.loader.budget_spent, meter)
            st = self.budgets.setdefault(meter.key, BudgetState(nanos, 0, tokens, 0))
        return st

    async def hold(self, hold: Hold) -> None:
        if hold.id in self.holds:
            return
        # Loaded states are looked up in place; only a missing one is awaited (loaded).
        org = None
        if hold.org is not None:
            org = self.orgs.get(hold.org.org.id) or await self._org(hold.org)
        buds: list[BudgetState] = []
        for m in hold.budgets:
            buds.append(self.budgets.get(m.key) or await self._budget(m))
        # Every await is above: from here to the end nothing yields, so check-and-reserve
        # is atomic on this event loop.
        if org is not None and hold.org is not None:
            available = org.admin - org.used - org.held - hold.org.org.floor_nanos
            if hold.amount > available:
                raise Shortfall(f"the balance of org {hold.org.org.id}", hold.amount, available)
        _check_budgets(hold, buds)
        if org is not None:
            org.held += hold.amount
        for st in buds:
            st.held += hold.amount
            st.tokens_held += hold.tokens
        self.holds[hold.id] = hold

    async def settle(self, hold: Hold, amount: int, tokens: int) -> None:
        open_hold = self.holds.pop(hold.id, None)
        if open_hold is not None:
            self._release(open_hold)
        if hold.org is not None:
            (self.orgs.get(hold.org.org.id) or await self._org(hold.org)).used += amount
        for m in hold.budgets:
            st = self.budgets.get(m.key) or await self._budget(m)
            st.spent += amount
            st.tokens_spent += tokens

    # In memory nothing is remote: settling at once is as quick as queueing.
    settle_soon = settle

    def _release(self, hold: Hold) -> None:
        if hold.org is not None:
            st = self.orgs.get(hold.org.org.id)
            if st is not None:
                st.held -= hold.amount
        for m in hold.budgets:
            b = self.budgets.get(m.key)
            if b is not None:
                b.held -= hold.amount
                b.tokens_held -= hold.tokens

    async def expire(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        stale = [h for h in self.holds.values() if h.expires_at <= now]
        for h in stale:
            del self.holds[h.id]
            self._release(h)
        return len(stale)

    async def org_state(self, meter: OrgMeter) -> OrgState:
        st = await self._org(meter)
        return OrgState(st.admin, st.used, st.held)

    async def budget_state(self, meter: BudgetMeter) -> BudgetState:
        st = await self._budget(meter)
        return BudgetState(st.spent, st.held, st.tokens_spent, st.tokens_held)

    async def set_admin_total(self, org_id: str, admin_nanos: int) -> None:
        st = self.orgs.get(org_id)
        if st is not None:
            st.admin = admin_nanos

    async def set_admin_totals(self, totals: Mapping[str, int]) -> None:
        for org_id, admin_nanos in totals.items():
            await self.set_admin_total(org_id, admin_nanos)

    async def close(self) -> None:
        return None


def _check_budgets(hold: Hold, states: Sequence[BudgetState]) -> None:
    for m, st in zip(hold.budgets, states, strict=True):
        b = m.budget
        if b.amount_nanos is not None and st.spent + st.held + hold.amount > b.amount_nanos:
            raise Shortfall(
                m.describe(), hold.amount, b.amount_nanos - st.spent - st.held, budget=True
            )
        if b.token_limit is not None and (
            st.tokens_spent + st.tokens_held + hold.tokens > b.token_limit
        ):
            left = b.token_limit - st.tokens_spent - st.tokens_held
            raise Shortfall(m.describe(), hold.tokens, left, tokens=True, budget=True)
