"""Orgs with nothing left to spend, refused from the request head.

A tenant whose balance is gone can send 400 KB prompts as fast as it likes; each one read
and parsed only to be answered 402 costs the event loop, and so every other tenant, a
few hundred microseconds. Once the ledger has found an org unable to pay for anything
(its balance, holds aside, at or under its floor: no request can be admitted, whatever it
asks for), the org's next requests whose bodies are still arriving are refused from their
head, before a byte of the body is kept. (Large bodies only: a small one is read, refused
and recorded as any refusal is; one refused from its head is counted, not recorded, as its
model is in the body nobody read.)

Exact, not a guess: spending only lowers a balance, so an org found broke stays broke
until an admin entry (a top-up, a credit, a refund) raises its total, and the admin feed
forgets the org the moment it sees one. The note also lapses after ``ttl_s``, so a change
this process cannot see (a database edited by hand) is picked up within that. Not used
while any deployment can be free (no catalogued price, or a zero one): a broke org may
still call that, and which model a request names is in the body.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from tokenomy.billing.call_pricing import units
from tokenomy.core.errors import InsufficientQuota
from tokenomy.ledger.accounts import Org

#: How long a broke org is refused from the head without the ledger being asked again.
BROKE_TTL_S = 10.0
#: Bodies from this size on are refused from the head; a smaller one costs less to read
#: and parse than its refusal's usage record is worth, so it is refused and recorded.
HEAD_REFUSAL_MIN_BYTES = 32 * 1024
#: How long a request refused from its head waits for its answer, at least: a client
#: sending such requests back to back on one connection gets a few a second.
BROKE_DELAY_S = 0.25
#: ... and an org's requests so refused are answered at most this many a second in all,
#: however many connections it opens: each waits for its turn. At 250 a second (64
#: connections, no pace), draining their bodies moved another tenant's p99 by 3 ms.
REFUSALS_PER_S = 16
#: No turn is given further ahead than this, so at most this many seconds of an org's
#: turns wait at once (160 requests). A request past it gets no turn: it waits this long
#: all the same, then is answered and closed with its body unread (its client may see a
#: reset instead of the 402). Answered at once, such a flood's clients came straight
#: back: 7,660 refusals a second from 256 connections; drained, those released together
#: would cost what the turns save.
BROKE_MAX_WAIT_S = 10.0
#: Turns kept of orgs no longer noted; past this many, those already gone by are dropped.
_TURNS_KEPT = 1024


class Turn(NamedTuple):
    """When a head refusal is answered, and whether the rest of its body is then read
    (and dropped) so that the client surely sees the answer."""

    wait_s: float
    drain: bool


@dataclass(frozen=True, slots=True)
class _Broke:
    until: float
    org: Org
    left: int  # nanos: admin total - used - floor (<= 0)


class BrokeOrgs:
    """The orgs found unable to pay for anything, each until ``ttl_s`` after it was found
    or until its admin total changes, whichever comes first."""

    def __init__(
        self, ttl_s: float = BROKE_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._broke: dict[str, _Broke] = {}
        #: The next free turn (clock time) of each broke org's head refusals. Kept when
        #: the note lapses or is forgotten: the requests already waiting still hold their
        #: turns, and an org noted again queues behind them, not beside them.
        self._turn: dict[str, float] = {}
        #: Requests refused from their head (a counter for /metrics).
        self.refused = 0

    def note(self, org: Org, left: int) -> None:
        """``org`` can pay for nothing: ``left`` (admin total - used - floor) is <= 0."""
        if left <= 0:
            self._broke[org.id] = _Broke(self.clock() + self.ttl_s, org, left)

    def refusal(self, org_id: str) -> InsufficientQuota | None:
        """The 402 for a request of ``org_id`` if the org is known to be broke, else None."""
        b = self._broke.get(org_id)
        if b is None:
            return None
        if self.clock() >= b.until:
            del self._broke[org_id]
            return None
        self.refused += 1
        left = f"{units(max(b.left, 0))} {b.org.currency.value}"
        return InsufficientQuota(
            f"Insufficient funds: the balance of org {org_id} has {left} available, and "
            "every request costs more than that. Top up to continue."
        )

    def turn(self, org_id: str) -> Turn:
        """When the head refusal of a request of ``org_id`` is answered: at its turn,
        :data:`REFUSALS_PER_S` a second, at least :data:`BROKE_DELAY_S` away; past
        :data:`BROKE_MAX_WAIT_S` of turns, after that long and outside them, undrained."""
        now = self.clock()
        turn = max(self._turn.get(org_id, 0.0), now + BROKE_DELAY_S)
        if turn - now > BROKE_MAX_WAIT_S:
            return Turn(BROKE_MAX_WAIT_S, drain=False)
        if len(self._turn) > _TURNS_KEPT:
            self._turn = {o: t for o, t in self._turn.items() if t > now}
        self._turn[org_id] = turn + 1 / REFUSALS_PER_S
        return Turn(turn - now, drain=True)

    def forget(self, org_ids: Iterable[str]) -> None:
        """Their admin totals changed (a top-up, say): ask the ledger again."""
        for org_id in org_ids:
            self._broke.pop(org_id, None)

    def __contains__(self, org_id: str) -> bool:
        b = self._broke.get(org_id)
        return b is not None and self.clock() < b.until
