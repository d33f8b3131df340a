"""Rate limits shared through Redis, with each gateway process holding a small lease.

Asking Redis for every request costs two script calls (admit, settle): a sixth of a
request's CPU in the gateway. Here a process asks Redis for a little more than the
request needs (more requests and tokens from the GCRA cells, more concurrency slots)
and admits the next requests from that lease without a round trip; token refunds and
freed slots go back into the lease. What a lease holds was really taken in Redis, so
**a global limit is never exceeded**; the price is that credit one process holds is
not available to another until it is used or handed back (after ``idle_s``), so another
process may be refused early by at most ``share`` of the limit per process holding a
lease. A limit too small for ``share`` of it to make a whole unit (under 100 per
minute at 1%) leases nothing: every request asks Redis, and refunds and freed slots go
back at once, exactly as :class:`RedisRateLimiter` does.

Leases grow by doubling while demand keeps asking for more, up to ``share`` of the limit,
and go back whole after ``idle_s`` without use. Slots are members of the same sorted set
as :class:`RedisRateLimiter`'s tickets (the two interoperate), renewed while held, so a
process that dies frees its slots when their lease runs out. Headers report what
remains counting the lease's unused credit, as of its last Redis answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tokenomy.admission.lease_scripts import GIVE, TAKE
from tokenomy.admission.ratelimit import (
    PERIOD_S,
    LimitView,
    Scope,
    Ticket,
    is_redis_error,
    limit_headers,
    refusal,
    start_state,
    tightest,
    too_large,
)
from tokenomy.core.ids import UniqueIds

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tokenomy.store.redis_scripts import ScriptClient

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Dim:
    """One dimension (requests or tokens) of a scope's lease."""

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

    def check(self, now: float) -> LimitView:
        """The client's view: what remains counting the unused credit."""
        t = PERIOD_S / self.limit
        credit = max(self.credit, 0)
        # Rounded to the µs: float dust must not move a reset shown in whole ms.
        reset = max(round(self.reset_s - (now - self.at) - credit * t, 6), 0.0)
        return LimitView(self.limit, self.remaining + credit, reset)

    def grow(self, need: int) -> None:
        self.block = min(self.cap, max(need, 2 * self.block))

    def ask(self) -> int:
        """The extra units a Redis call asks for now (counted as in flight)."""
        extra = max(self.block - self.credit - self.asked, 0)
        self.asked += extra
        return extra


@dataclass(slots=True)
class _Lease:
    """One scope's share held by this process."""

    scope: Scope
    requests: _Dim | None
    tokens: _Dim | None
    #: Concurrency: the slot cap kept free (``share`` of the limit), the extra slots the
    #: next Redis call asks for, slots held and free, slots held and in use.
    slot_cap: int = 0
    slot_block: int = 0
    #: Extra slots asked of Redis by calls in flight (as :attr:`_Dim.asked`): without it,
    #: every request arriving while the lease is empty asked for a whole block, and the
    #: hundreds of thousands of slots the hand-back then returned made one script call
    #: that held Redis (and every gateway's requests) for tens of milliseconds.
    slots_asked: int = 0
    free: list[str] = field(default_factory=list)
    busy: set[str] = field(default_factory=set)
    used_at: float = 0.0
    renewed_at: float = 0.0

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


class LeasedRateLimiter:
    """Limits shared by every replica through Redis, admitted from per-process leases.

    ``share`` is the most of each limit one process keeps as a lease (0 leases nothing);
    ``idle_s`` how long unused credit is kept before it goes back. Other arguments as
    :class:`RedisRateLimiter`; slots are renewed every quarter of ``lease_s`` while held.
    """

    def __init__(
        self,
        redis: Redis,
        prefix: str = "tokenomy:rl:",
        *,
        share: float = 0.01,
        idle_s: float = 1.0,
        lease_s: float = 60.0,
        clock: Callable[[], float] | None = None,
        fail_open: bool = True,
        scripts: ScriptClient | None = None,
    ) -> None:
        if not 0 <= share <= 0.5:
            raise ValueError("share must be between 0 and 0.5")
        self._scripts = scripts
        self._redis = redis
        self._prefix = prefix
        self._share = share
        self._idle_s = idle_s
        self._lease_ms = int(lease_s * 1000)
        self._renew_s = lease_s / 4
        self._clock = clock
        self._fail_open = fail_open
        register = scripts.register_script if scripts is not None else redis.register_script
        self._take = register(TAKE)
        self._give = register(GIVE)
        self._marker = prefix + "state"
        self._marked = False
        self._leases: dict[str, _Lease] = {}
        #: Leases with something to hand back now (refunds, freed slots over the cap).
        self._due: dict[str, _Lease] = {}
        self._due_scheduled = False
        self._pending: set[asyncio.Future[Any]] = set()
        self._upkeep: asyncio.Task[None] | None = None
        self._ids = UniqueIds()

    # -- admission ---------------------------------------------------------------------

    async def acquire(self, scopes: Sequence[Scope], tokens: int) -> Ticket:
        for s in scopes:
            tpm = s.limits.tokens_per_minute
            if tpm is not None and tokens > tpm:
                raise too_large(s, tokens)
        now = self._local_now()
        leases = [self._lease(s, now) for s in scopes]
        if all(lease.covers(tokens) for lease in leases):
            return self._admit_locally(leases, tokens, now)
        return await self._admit_through_redis(leases, tokens, now)

    def _lease(self, scope: Scope, now: float) -> _Lease:
        lease = self._leases.get(scope.name)
        if lease is not None and lease.scope.limits == scope.limits:
            return lease
        if lease is not None:  # the limits changed: what was leased under the old goes back
            self._hand_back(lease, everything=True)
        lim = scope.limits
        lease = _Lease(
            scope,
            self._dim(lim.requests_per_minute),
            self._dim(lim.tokens_per_minute),
            slot_cap=int(lim.concurrent * self._share) if lim.concurrent else 0,
            used_at=now,
            renewed_at=now,
        )
        self._leases[scope.name] = lease
        if self._upkeep is None:
            self._upkeep = asyncio.get_running_loop().create_task(self._run_upkeep())
        return lease

    def _dim(self, limit: int | None) -> _Dim | None:
        return None if limit is None else _Dim(limit, cap=int(limit * self._share))

    def _admit_locally(self, leases: list[_Lease], tokens: int, now: float) -> Ticket:
        req_h: LimitView | None = None
        tok_h: LimitView | None = None
        slots: list[str | None] = []
        for lease in leases:
            lease.used_at = now
            if (d := lease.requests) is not None:
                d.credit -= 1
                req_h = tightest(req_h, d.check(now))
            if (d := lease.tokens) is not None and tokens > 0:
                d.credit -= tokens
                tok_h = tightest(tok_h, d.check(now))
            slot = None
            if lease.scope.limits.concurrent is not None:
                slot = lease.free.pop()
                lease.busy.add(slot)
            slots.append(slot)
        return self._ticket(leases, tokens, slots, req_h, tok_h)

    def _ticket(
        self,
        leases: list[_Lease],
        tokens: int,
        slots: list[str | None],
        req_h: LimitView | None,
        tok_h: LimitView | None,
    ) -> LeasedTicket:
        return LeasedTicket(
            self._ids.next(),
            tuple(lease.scope for lease in leases),
            tokens,
            limit_headers(req_h, tok_h),
            slots=tuple(slots),
        )

    async def _admit_through_redis(self, leases: list[_Lease], tokens: int, now: float) -> Ticket:
        member = self._ids.next()
        keys: list[str] = []
        args: list[Any] = [self._now_ms(), len(leases), tokens, self._lease_ms, member]
        # A slot the lease has is taken now (the await lets other requests in), and that
        # scope's concurrency is not asked of Redis.
        mine: list[str | None] = []
        for lease in leases:
            slot = lease.free.pop() if lease.free else None
            if slot is not None:
                lease.busy.add(slot)
            mine.append(slot)
        asked: list[tuple[int, int, int]] = []
        for lease, slot in zip(leases, mine, strict=True):
            base = self._prefix + lease.scope.name
            keys += [base + ":r", base + ":t", base + ":c"]
            lim = lease.scope.limits
            # A dimension short of credit asks for its block beyond this request's need,
            # less what calls still in flight will bring.
            r, t = lease.requests, lease.tokens
            extra_r = extra_t = extra_s = 0
            if r is not None and r.credit < 1:
                r.grow(1)
                extra_r = r.ask()
            if t is not None and tokens > 0 and t.credit < tokens:
                t.grow(tokens)
                extra_t = t.ask()
            ask_slots = lim.concurrent is not None and slot is None
            if ask_slots:
                lease.slot_block = min(lease.slot_cap, max(1, 2 * lease.slot_block))
                extra_s = max(lease.slot_block - lease.slots_asked, 0)
                lease.slots_asked += extra_s
            asked.append((extra_r, extra_t, extra_s))
            args += [
                lim.requests_per_minute or 0,
                lim.tokens_per_minute or 0,
                (lim.concurrent or 0) if ask_slots else 0,
                extra_r,
                extra_t,
                extra_s,
            ]
        keys.append(self._marker)
        try:
            if not self._marked:
                self._marked = await start_state(self._redis, self._marker)
            res = await self._take(keys=keys, args=args)
        except Exception as e:
            self._unreserve(leases, mine)
            if not self._fail_open or not is_redis_error(e):
                raise
            log.warning("rate limits unavailable (admitting without limits): %s", e)
            return Ticket(member, (), tokens)
        except BaseException:
            self._unreserve(leases, mine)
            raise
        finally:
            self._arrived(leases, asked)
        vals = [int(v) for v in res]
        now = self._local_now()
        req_h: LimitView | None = None
        tok_h: LimitView | None = None
        allowed = bool(vals[0])
        slots: list[str | None] = []
        if not allowed:
            self._unreserve(leases, mine)
        for i, (lease, slot) in enumerate(zip(leases, mine, strict=True)):
            rg, rr, rs, tg, tr, ts, sg = vals[2 + 7 * i : 9 + 7 * i]
            if (d := lease.requests) is not None:
                if allowed:  # the request's own unit is spent; the rest is credit
                    d.credit += rg - 1
                d.remaining, d.reset_s, d.at = rr, rs / 1000, now
                req_h = tightest(req_h, d.check(now))
            if (d := lease.tokens) is not None and tr >= 0:
                if allowed:
                    d.credit += tg - tokens
                d.remaining, d.reset_s, d.at = tr, ts / 1000, now
                tok_h = tightest(tok_h, d.check(now))
            if allowed and slot is None and sg > 0:
                if not (lease.free or lease.busy):  # the first slots held: renewal counts from now
                    lease.renewed_at = now
                got = [f"{member}:{k}" for k in range(1, sg + 1)]
                slot = got.pop()
                lease.busy.add(slot)
                lease.free += got
            slots.append(slot if allowed else None)
            lease.used_at = now
        if not allowed:
            raise refusal("Rate limit reached.", vals[1] / 1000, req_h, tok_h)
        return self._ticket(leases, tokens, slots, req_h, tok_h)

    @staticmethod
    def _arrived(leases: list[_Lease], asked: list[tuple[int, int, int]]) -> None:
        """A Redis call is answered (or failed): its extras are no longer in flight."""
        for lease, (extra_r, extra_t, extra_s) in zip(leases, asked, strict=True):
            if lease.requests is not None:
                lease.requests.asked -= extra_r
            if lease.tokens is not None:
                lease.tokens.asked -= extra_t
            lease.slots_asked -= extra_s

    @staticmethod
    def _unreserve(leases: list[_Lease], mine: list[str | None]) -> None:
        """Put back the slots taken from leases for a request not admitted."""
        for lease, slot in zip(leases, mine, strict=True):
            if slot is not None and slot in lease.busy:
                lease.busy.discard(slot)
                lease.free.append(slot)

    def _local_now(self) -> float:
        """Seconds on the limiter's clock: for idleness and the age of header figures."""
        return time.monotonic() if self._clock is None else self._clock()

    def _now_ms(self) -> int:
        return -1 if self._clock is None else int(self._clock() * 1000)

    # -- settlement --------------------------------------------------------------------

    def settle(self, ticket: Ticket, actual_tokens: int) -> None:
        """Refund the unused reservation and free the slots into the leases; whatever a
        lease then holds beyond its cap goes back to Redis at once (in the background)."""
        if ticket.settled:
            return
        ticket.settled = True
        if not ticket.scopes or not isinstance(ticket, LeasedTicket):
            return
        delta = ticket.tokens - actual_tokens
        for scope, slot in zip(ticket.scopes, ticket.slots, strict=True):
            lease = self._leases.get(scope.name)
            if lease is None or lease.scope.limits != scope.limits:
                # Its lease went back meanwhile (the limits changed): settle in Redis alone.
                if slot or (delta and scope.limits.tokens_per_minute):
                    self._give_now(scope, tokens=delta, freed=[slot] if slot else [])
                continue
            if (d := lease.tokens) is not None and delta:
                d.credit += delta
            if slot is not None:
                if slot in lease.busy:
                    lease.busy.discard(slot)
                    lease.free.append(slot)
                else:  # expired while held (no longer counted) or from a lease gone back
                    self._give_now(scope, freed=[slot])
            if self._over_cap(lease):
                self._due[scope.name] = lease
                if not self._due_scheduled:
                    self._due_scheduled = True
                    asyncio.get_running_loop().call_soon(self._hand_back_due)

    async def settle_now(self, ticket: Ticket, actual_tokens: int) -> None:
        """Settle and wait until Redis has what went back."""
        self.settle(ticket, actual_tokens)
        await self.flush()

    @staticmethod
    def _over_cap(lease: _Lease) -> bool:
        for d in (lease.requests, lease.tokens):
            if d is not None and (d.credit > d.cap or d.credit < -d.cap):
                return True
        return len(lease.free) > lease.slot_cap

    def _hand_back_due(self) -> None:
        self._due_scheduled = False
        due, self._due = self._due, {}
        for lease in due.values():
            self._hand_back(lease)

    # -- handing back ------------------------------------------------------------------

    def _hand_back(self, lease: _Lease, *, everything: bool = False, renew: bool = False) -> None:
        """Give back what ``lease`` holds beyond its caps (``everything``: all of it but the
        slots in use), and renew the slots it keeps (``renew``)."""
        back: dict[str, int] = {}
        for name, d in (("requests", lease.requests), ("tokens", lease.tokens)):
            if d is None:
                continue
            keep = 0 if everything else max(min(d.credit, d.cap), -d.cap)
            if d.credit != keep:
                back[name] = d.credit - keep
                d.credit = keep
        keep_free = 0 if everything else lease.slot_cap
        freed = lease.free[keep_free:]
        del lease.free[keep_free:]
        kept = [*lease.free, *lease.busy] if renew else []
        if back or freed or kept:
            self._give_now(
                lease.scope,
                requests=back.get("requests", 0),
                tokens=back.get("tokens", 0),
                freed=freed,
                kept=kept,
                lease=lease,
            )

    def _give_now(
        self,
        scope: Scope,
        *,
        requests: int = 0,
        tokens: int = 0,
        freed: Sequence[str] = (),
        kept: Sequence[str] = (),
        lease: _Lease | None = None,
    ) -> None:
        base = self._prefix + scope.name
        lim = scope.limits
        args: list[Any] = [self._now_ms(), 1, self._lease_ms]
        args += [lim.requests_per_minute or 0, lim.tokens_per_minute or 0, requests, tokens]
        args += [len(freed), len(kept), *freed, *kept]
        keys = [base + ":r", base + ":t", base + ":c"]
        fut: asyncio.Future[Any]
        submit = getattr(self._give, "submit", None)
        if submit is not None:  # the lean client queues it without a task
            fut = submit(keys=keys, args=args)
        else:
            fut = asyncio.ensure_future(self._give(keys=keys, args=args))
        self._pending.add(fut)
        fut.add_done_callback(lambda f: self._given(f, lease))

    def _given(self, fut: asyncio.Future[Any], lease: _Lease | None) -> None:
        self._pending.discard(fut)
        if fut.cancelled():
            return
        e = fut.exception()
        if e is not None:
            if isinstance(e, Exception) and is_redis_error(e):
                log.warning("handing rate-limit leases back failed (they expire): %s", e)
            else:
                log.error("handing rate-limit leases back failed", exc_info=e)
            return
        lost = {m.decode() if isinstance(m, bytes) else str(m) for m in fut.result() or ()}
        if lost and lease is not None:
            # Slots that expired in Redis are no longer counted there: never use them again.
            log.warning("%d rate-limit slots of %s expired while held", len(lost), lease.scope.name)
            lease.free = [m for m in lease.free if m not in lost]
            lease.busy -= lost

    async def _run_upkeep(self) -> None:
        """Hand back idle leases and renew held slots, until closed."""
        period = min(self._idle_s / 2, self._renew_s)
        while True:
            await asyncio.sleep(period)
            try:
                self.upkeep(self._local_now())
            except Exception:
                log.exception("rate-limit lease upkeep failed")

    def upkeep(self, now: float) -> None:
        """One round: leases unused for ``idle_s`` go back whole (and are forgotten once
        empty); slots held longer than a quarter of their lease are renewed."""
        for name, lease in list(self._leases.items()):
            idle = now - lease.used_at >= self._idle_s
            renew = bool(lease.free or lease.busy) and now - lease.renewed_at >= self._renew_s
            if idle or renew:
                if renew:
                    lease.renewed_at = now
                self._hand_back(lease, everything=idle, renew=renew)
                if idle:
                    for d in (lease.requests, lease.tokens):
                        if d is not None:
                            d.block = 0
                    lease.slot_block = 0
            if idle and lease.empty():
                del self._leases[name]

    # -- closing -----------------------------------------------------------------------

    async def flush(self) -> None:
        """Hand back what is due now, and wait until Redis has it."""
        self._hand_back_due()
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def aclose(self) -> None:
        """Hand every lease back (slots still in use expire with their lease) and close."""
        if self._upkeep is not None:
            self._upkeep.cancel()
            self._upkeep = None
        for lease in self._leases.values():
            self._hand_back(lease, everything=True)
        self._leases.clear()
        await self.flush()
        if self._scripts is not None:
            await self._scripts.aclose()
