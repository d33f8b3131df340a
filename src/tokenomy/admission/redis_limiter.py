"""Rate limits shared by every replica through Redis: the one Redis limiter.

Each scope's limits live in Redis as GCRA cells (requests, tokens) and a sorted set of
concurrency slots by expiry. A process may hold a small lease of each (``share`` of the
limit): it asks Redis for a little more than the request needs (more requests and tokens
from the cells, more slots) and admits the next requests from that lease without a
round trip; token refunds and freed slots go back into the lease. What a lease holds was
really taken in Redis, so **a global limit is never exceeded**; the price is that credit
one process holds is not available to another until it is used or handed back (after
``idle_s``), so another process may be refused early by at most ``share`` of the limit
per process holding a lease.

With ``share`` 0 (or a limit too small for ``share`` of it to make a whole unit, under
100 per minute at 1%) nothing is leased: every request asks Redis, and refunds and freed
slots go back at once. That is the exact limiter: the same two scripts, a call to admit
and one to settle (none when there is nothing to give back).

Leases grow by doubling while demand keeps asking for more, up to ``share`` of the limit,
and go back whole after ``idle_s`` without use; the lease table, idleness, renewal and
background calls are the shared :class:`~tokenomy.store.lease_engine.LeaseEngine`. Slots
are renewed while held, so a process that dies frees its slots when their lease runs
out. Headers report what remains counting the lease's unused credit, as of its last
Redis answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from tokenomy.admission.limit_lease import LeasedTicket, LimitCredit, LimitLease
from tokenomy.admission.limit_scripts import GIVE, TAKE
from tokenomy.admission.ratelimit import (
    LimitView,
    Scope,
    Ticket,
    is_redis_error,
    limit_headers,
    refusal,
    tightest,
    too_large,
)
from tokenomy.core.ids import UniqueIds
from tokenomy.store.lease_engine import LeaseEngine
from tokenomy.store.scripts import Scripts, script_client

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

#: The most scopes one GIVE call hands back, and the most slot members it carries (past
#: that a call ends even with fewer scopes): a thousand idle leases go back in a few
#: calls, not a thousand, and no call holds Redis long.
GIVE_BATCH = 64
GIVE_MEMBERS = 1024
#: Leases one slice of upkeep looks at before the event loop serves requests again: at
#: most one GIVE call a slice (about 0.4 ms of Redis for 64 idle leases), so a request's
#: call never waits behind several.
UPKEEP_SLICE = GIVE_BATCH


class _Give(NamedTuple):
    """One scope's part of a GIVE call (see limit_scripts.GIVE)."""

    scope: Scope
    requests: int = 0
    tokens: int = 0
    freed: Sequence[str] = ()
    kept: Sequence[str] = ()
    lease: LimitLease | None = None


class RedisRateLimiter:
    """Limits shared by every replica through one Redis, admitted from per-process leases.

    ``share`` is the most of each limit one process keeps as a lease (0, the default,
    leases nothing: every admission is one script call); ``idle_s`` how long unused
    credit is kept before it goes back; slots are held for ``lease_s`` and renewed every
    quarter of it while held. Time comes from the Redis server (one clock for all
    replicas) unless ``clock`` is given. With ``fail_open`` (the default) a Redis outage
    admits requests unlimited, logged, rather than failing every call. Keys share
    ``prefix``; put a hash tag in it (``"{rl}:"``) to keep them in one slot on a Redis
    Cluster. Scripts go over ``scripts`` (the process's script client), else over
    ``redis``.
    """

    def __init__(
        self,
        redis: Redis,
        prefix: str = "tokenomy:rl:",
        *,
        share: float = 0.0,
        idle_s: float = 1.0,
        lease_s: float = 60.0,
        clock: Callable[[], float] | None = None,
        fail_open: bool = True,
        scripts: Scripts | None = None,
    ) -> None:
        if not 0 <= share <= 0.5:
            raise ValueError("share must be between 0 and 0.5")
        #: The process's redis-py client: the scripts' way when there is no script client.
        self._redis = redis
        self._scripts = script_client(redis, scripts)
        self._prefix = prefix
        self.share = share
        self._lease_ms = int(lease_s * 1000)
        self._clock = clock
        self._fail_open = fail_open
        self._take = self._scripts.register_script(TAKE)
        self._give = self._scripts.register_script(GIVE)
        self._marker = prefix + "state"
        self._marked = False
        # Slots held are renewed every quarter of their lease.
        self._engine = LeaseEngine[LimitLease](
            "rate-limit",
            idle_s,
            lease_s / 4,
            self._local_now,
            upkeep=self.upkeep,
            due=self._hand_back_due,
        )
        #: The engine's table, read directly on the request path (a dict lookup).
        self._leases = self._engine.leases
        #: Leases with something to hand back now (refunds, freed slots over the cap).
        self._due: dict[str, LimitLease] = {}
        self._ids = UniqueIds()

    # -- admission ---------------------------------------------------------------------

    async def acquire(self, scopes: Sequence[Scope], tokens: int) -> Ticket:
        for s in scopes:
            tpm = s.limits.tokens_per_minute
            if tpm is not None and tokens > tpm:
                raise too_large(s, tokens)
        now = self._local_now()
        leases = [self._lease(s) for s in scopes]
        if all(lease.covers(tokens) for lease in leases):
            return self._admit_locally(leases, tokens, now)
        return await self._admit_through_redis(leases, tokens, now)

    def _lease(self, scope: Scope) -> LimitLease:
        lease = self._leases.get(scope.name)
        if lease is not None and lease.serves(scope):
            return lease
        if lease is not None:  # the limits changed: what was leased under the old goes back
            self._send([self._hand_back(lease, everything=True)])
        lim = scope.limits
        return self._engine.add(
            LimitLease(
                scope,
                self._credit(lim.requests_per_minute),
                self._credit(lim.tokens_per_minute),
                key=scope.name,
                slot_cap=int(lim.concurrent * self.share) if lim.concurrent else 0,
            )
        )

    def _credit(self, limit: int | None) -> LimitCredit | None:
        return None if limit is None else LimitCredit(limit, cap=int(limit * self.share))

    def _admit_locally(self, leases: list[LimitLease], tokens: int, now: float) -> Ticket:
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
        leases: list[LimitLease],
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

    async def _admit_through_redis(
        self, leases: list[LimitLease], tokens: int, now: float
    ) -> Ticket:
        member = self._ids.next()
        keys: list[str] = []
        args: list[Any] = [self._now_ms(), len(leases), self._lease_ms, member]
        # A slot the lease has and the credit it has are taken now (the await lets other
        # requests in); Redis is asked only for the rest.
        mine: list[str | None] = []
        needs: list[tuple[int, int]] = []
        for lease in leases:
            slot = lease.free.pop() if lease.free else None
            if slot is not None:
                lease.busy.add(slot)
            mine.append(slot)
            r, t = lease.requests, lease.tokens
            need_r = r.spend(1) if r is not None else 0
            need_t = t.spend(tokens) if t is not None and tokens > 0 else 0
            needs.append((need_r, need_t))
        asked: list[tuple[int, int, int]] = []
        for lease, slot, (need_r, need_t) in zip(leases, mine, needs, strict=True):
            base = self._prefix + lease.scope.name
            keys += [base + ":r", base + ":t", base + ":c"]
            lim = lease.scope.limits
            # A dimension short of credit asks for its block beyond this request's need,
            # less what calls still in flight will bring.
            r, t = lease.requests, lease.tokens
            extra_r = extra_t = extra_s = 0
            if r is not None and need_r > 0:
                r.grow(1)
                extra_r = r.ask()
            if t is not None and need_t > 0:
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
                need_r,
                need_t,
                extra_r,
                extra_t,
                extra_s,
            ]
        keys.append(self._marker)
        try:
            if not self._marked:
                # Marked as started long ago (unless it is): a limiter starting on a new
                # Redis lets limits burst as usual (see LUA_BASE).
                await self._scripts.execute("SET", self._marker, "0", "NX")
                self._marked = True
            res = await self._take(keys=keys, args=args)
        except Exception as e:
            self._unreserve(leases, mine, needs, tokens)
            if not self._fail_open or not is_redis_error(e):
                raise
            log.warning("rate limits unavailable (admitting without limits): %s", e)
            return Ticket(member, (), tokens)
        except BaseException:
            self._unreserve(leases, mine, needs, tokens)
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
            self._unreserve(leases, mine, needs, tokens)
        for i, (lease, slot, (need_r, need_t)) in enumerate(zip(leases, mine, needs, strict=True)):
            rg, rr, rs, tg, tr, ts, sg = vals[2 + 7 * i : 9 + 7 * i]
            if (d := lease.requests) is not None:
                if rr >= 0:
                    if allowed:  # what was needed is spent; the rest is credit
                        d.credit += rg - need_r
                    d.remaining, d.reset_s, d.at = rr, rs / 1000, now
                req_h = tightest(req_h, d.check(now))
            if (d := lease.tokens) is not None and tokens > 0:
                if tr >= 0:
                    if allowed:
                        d.credit += tg - need_t
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
    def _arrived(leases: list[LimitLease], asked: list[tuple[int, int, int]]) -> None:
        """A Redis call is answered (or failed): its extras are no longer in flight."""
        for lease, (extra_r, extra_t, extra_s) in zip(leases, asked, strict=True):
            if lease.requests is not None:
                lease.requests.asked -= extra_r
            if lease.tokens is not None:
                lease.tokens.asked -= extra_t
            lease.slots_asked -= extra_s

    @staticmethod
    def _unreserve(
        leases: list[LimitLease],
        mine: list[str | None],
        needs: list[tuple[int, int]],
        tokens: int,
    ) -> None:
        """Put back the slots and credit taken from leases for a request not admitted."""
        for lease, slot, (need_r, need_t) in zip(leases, mine, needs, strict=True):
            if slot is not None and slot in lease.busy:
                lease.busy.discard(slot)
                lease.free.append(slot)
            if lease.requests is not None:
                lease.requests.credit += 1 - need_r
            if lease.tokens is not None and tokens > 0:
                lease.tokens.credit += tokens - need_t

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
            if lease is None or not lease.serves(scope):
                # Its lease went back meanwhile (the limits changed): settle in Redis alone.
                if slot or (delta and scope.limits.tokens_per_minute):
                    self._send([_Give(scope, tokens=delta, freed=[slot] if slot else [])])
                continue
            if (d := lease.tokens) is not None and delta:
                d.credit += delta
            if slot is not None:
                if slot in lease.busy:
                    lease.busy.discard(slot)
                    lease.free.append(slot)
                else:  # expired while held (no longer counted) or from a lease gone back
                    self._send([_Give(scope, freed=[slot])])
            if not self._over_cap(lease):
                continue
            if self.share == 0:
                # Nothing is kept: it goes now, in this loop iteration's write (with the
                # ledger's settlement on a shared client), as an exact limiter's would.
                self._send([self._hand_back(lease)])
            else:  # the settlements of this loop iteration go back in one call a lease
                self._due[scope.name] = lease
                self._engine.schedule()

    async def settle_now(self, ticket: Ticket, actual_tokens: int) -> None:
        """Settle and wait until Redis has what went back."""
        self.settle(ticket, actual_tokens)
        await self.flush()

    @staticmethod
    def _over_cap(lease: LimitLease) -> bool:
        for d in (lease.requests, lease.tokens):
            if d is not None and (d.credit > d.cap or d.credit < -d.cap):
                return True
        return len(lease.free) > lease.slot_cap

    def _hand_back_due(self) -> None:
        due, self._due = self._due, {}
        self._send([self._hand_back(lease) for lease in due.values()])

    # -- handing back ------------------------------------------------------------------

    def _hand_back(
        self, lease: LimitLease, *, everything: bool = False, renew: bool = False
    ) -> _Give | None:
        """What ``lease`` gives back beyond its caps (``everything``: all of it but the
        slots in use), and the slots it keeps to renew (``renew``), taken out of it now:
        the caller sends it (see :meth:`_send`). None when there is nothing to send."""
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
        if not (back or freed or kept):
            return None
        return _Give(
            lease.scope,
            requests=back.get("requests", 0),
            tokens=back.get("tokens", 0),
            freed=freed,
            kept=kept,
            lease=lease,
        )

    def _send(self, gives: Iterable[_Give | None]) -> None:
        """Queue the hand-backs now (they leave in this loop iteration's write, without a
        task), up to GIVE_BATCH scopes and about GIVE_MEMBERS slot members a call."""
        keys: list[str] = []
        args: list[Any] = []
        batch: list[_Give] = []
        members = 0
        for g in gives:
            if g is None:
                continue
            base = self._prefix + g.scope.name
            lim = g.scope.limits
            keys += [base + ":r", base + ":t", base + ":c"]
            args += [lim.requests_per_minute or 0, lim.tokens_per_minute or 0]
            args += [g.requests, g.tokens, len(g.freed), len(g.kept), *g.freed, *g.kept]
            batch.append(g)
            members += len(g.freed) + len(g.kept)
            if len(batch) >= GIVE_BATCH or members >= GIVE_MEMBERS:
                self._submit_give(keys, args, batch)
                keys, args, batch, members = [], [], [], 0
        if batch:
            self._submit_give(keys, args, batch)

    def _submit_give(self, keys: list[str], args: list[Any], batch: list[_Give]) -> None:
        head: list[Any] = [self._now_ms(), len(batch), self._lease_ms]
        fut = self._engine.track(self._give.submit(keys=keys, args=head + args))
        leases = [g.lease for g in batch if g.lease is not None]
        fut.add_done_callback(lambda f: self._given(f, leases))

    def _given(self, fut: asyncio.Future[Any], leases: list[LimitLease]) -> None:
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
        if not lost:
            return
        # Slots that expired in Redis are no longer counted there: never use them again
        # (members are unique to the lease that took them).
        for lease in leases:
            gone = lost.intersection(lease.free) | lost.intersection(lease.busy)
            if gone:
                log.warning(
                    "%d rate-limit slots of %s expired while held", len(gone), lease.scope.name
                )
                lease.free = [m for m in lease.free if m not in gone]
                lease.busy -= gone

    async def upkeep(self, now: float) -> None:
        """One round: leases unused for ``idle_s`` go back whole (and are forgotten once
        empty); slots held longer than a quarter of their lease are renewed. A slice of
        UPKEEP_SLICE leases at a time, their hand-backs sent in a few calls, and the event
        loop serves requests between slices: a thousand tenants' leases never hold it for
        the whole round."""
        engine = self._engine
        gives: list[_Give | None] = []
        for i, lease in enumerate(engine, 1):
            idle = engine.idle(lease, now)
            renew = bool(lease.free or lease.busy) and engine.renewal_due(lease, now)
            if idle or renew:
                if renew:
                    lease.renewed_at = now
                gives.append(self._hand_back(lease, everything=idle, renew=renew))
                if idle:
                    for d in (lease.requests, lease.tokens):
                        if d is not None:
                            d.block = 0
                    lease.slot_block = 0
            if idle and lease.empty():
                engine.forget(lease)
            if i % UPKEEP_SLICE == 0:
                self._send(gives)
                gives = []
                await asyncio.sleep(0)
        self._send(gives)

    # -- closing -----------------------------------------------------------------------

    async def flush(self) -> None:
        """Hand back what is due now, and wait until Redis has it."""
        self._engine.unschedule()
        self._hand_back_due()
        await self._engine.drain()

    async def aclose(self) -> None:
        """Hand every lease back (slots still in use expire with their lease) and close."""
        await self._engine.close()
        gives = [self._hand_back(lease, everything=True) for lease in self._engine]
        for lease in self._engine:
            self._engine.forget(lease)
        self._send(gives)
        await self.flush()
        await self._scripts.aclose()


class LeasedRateLimiter(RedisRateLimiter):
    """The Redis limiter leasing 1% of each limit by default (the gateway's setting)."""

    def __init__(self, redis: Redis, prefix: str = "tokenomy:rl:", **kw: Any) -> None:
        kw.setdefault("share", 0.01)
        super().__init__(redis, prefix, **kw)
