"""Live balances in Redis with each gateway process holding a small lease of a busy meter.

Holding and settling in Redis costs two script calls a request, and Redis's own CPU as
much again: on two cores, the largest share of the machine a request took besides the
gateway itself. Here a process that sees a meter (an org's balance, a budget's bucket)
busy reserves ``share`` of what the meter has free as one hold of its own, admits the
next requests' holds against that reserve in memory, and posts their usage in one script
call per ``flush_s`` for all its meters, which also sets the reserve to ``share`` of what
is free again. A meter with little usage (fewer than ``POST_ITEMS`` requests) waits up
to ``post_max_s`` for more: the usage a reserve covers needs no posting to keep the floor.
What a reserve holds is held in Redis, so **no balance goes below its
floor and no budget over its limit**; another process may be refused early by at most
``share`` of what was free per process holding a lease. A hold a lease cannot cover goes
to Redis exactly (after giving back this process's own unused reserve, when that is what
stood in the way), so near the floor every request is exact.

What a crash costs: a lease is an ordinary hold record, released by the expiry sweep
``lease_ttl_s`` after its last renewal (the record itself outlives that deadline, so the
sweep always finds what to release); the usage settled and not posted before a crash
(the last ``flush_s``, or ``post_max_s`` for a meter with little usage; never more than
its reserve) reaches the durable ledger (if the writer committed it) but not Redis's live
counters, which read that much high until the meter is rebuilt. ``held`` as Redis shows
it counts unused reserves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from operator import attrgetter
from typing import Any

from redis import exceptions as rx

from tokenomy.core.ids import UniqueIds
from tokenomy.ledger.accounts import BudgetMeter, OrgMeter
from tokenomy.ledger.lease_script import SYNC
from tokenomy.ledger.live import BudgetState, Hold, LiveStateUnavailable, OrgState, Shortfall
from tokenomy.ledger.meter_lease import MeterLease
from tokenomy.ledger.redis_live import RECENT_COMMITS_S, RECORD_MARGIN_MS, RedisLedger
from tokenomy.store.lease_engine import LeaseEngine
from tokenomy.store.writer import Item

log = logging.getLogger(__name__)

#: Holds a meter must see in one second, the exact way, before this process leases it:
#: a meter used now and then (less than once a second) costs fewer calls held exactly
#: than leased; one with a few requests a second is leased, for its holds then cost no
#: call of their own (only a share of the syncs every meter's usage rides in). At 8, an
#: org among many with a few requests a second each paid two calls a request for good.
HOT_HOLDS = 2
#: The most leases one sync call carries: Redis runs a script whole, and one over a
#: thousand idle leases held it (and every request's call behind it) for 13 ms; in slices
#: the request path's calls are answered between them.
SYNC_SLICE = 64
#: ``post_max_s`` in sync intervals (``flush_s``) by default (2 s at 50 ms), and never more
#: than half of how long the ledger remembers the writer's commits (see RECENT_COMMITS_S).
#: At 0.25 s (half the rebuild's grace, as it was bounded), an org with a few requests a
#: second was posted at every one or two of them: over half of Redis's CPU with 1,000
#: orgs in rotation. Seeing a loss in time no longer depends on it (see loss_check_s).
POST_MAX_FLUSHES = 40


class LeasedLedger:
    """A :class:`RedisLedger` whose busy meters are admitted from per-process leases.

    ``share`` is the part of a meter's free funds (and tokens) one process reserves;
    ``flush_s`` how long settled usage waits before it is posted (with every other
    meter's, in one call), and ``post_max_s`` (default 40 of those) how long a lease
    with fewer than ``POST_ITEMS`` requests' usage may wait for more; ``idle_s`` how
    long an unused reserve is kept.
    """

    def __init__(
        self,
        inner: RedisLedger,
        *,
        share: float = 0.01,
        flush_s: float = 0.05,
        post_max_s: float | None = None,
        idle_s: float = 1.0,
        lease_ttl_s: float = 60.0,
        hot_holds: int = HOT_HOLDS,
    ) -> None:
        if not 0 < share <= 0.5:
            raise ValueError("share must be above 0 and at most 0.5")
        self.inner = inner
        self._p = inner.p
        self._share_ppm = int(share * 1_000_000)
        self._flush_s = flush_s
        if post_max_s is None:
            post_max_s = min(POST_MAX_FLUSHES * flush_s, RECENT_COMMITS_S / 2)
        self.post_max_s = post_max_s
        #: When Redis last answered a sync of this process (monotonic clock): see
        #: loss_check_s.
        self._called_at = 0.0
        self._ttl_s = lease_ttl_s
        self._hot = hot_holds
        self._sync_script = inner.register_script(SYNC)
        self._ids = UniqueIds("lease:")
        self._engine: LeaseEngine[MeterLease] = LeaseEngine(
            "ledger",
            idle_s=idle_s,
            renew_s=lease_ttl_s / 4,
            clock=time.monotonic,
            upkeep=self.upkeep,
            due=self._background_sync,
            again_s=flush_s,
        )
        self._leases = self._engine.leases
        #: Holds admitted from leases, by id, until settled.
        self._local: dict[str, Hold] = {}
        #: Exact holds per meter in the current second: (second, count).
        self._heat: dict[str, tuple[int, int]] = {}
        #: Meters to lease or grow at the next sync.
        self._wanted: set[str] = set()
        #: Leases whose settled usage waits to be posted, in the order it began waiting
        #: (oldest first): a round looks at those old enough, not at every lease. An
        #: entry whose usage went meanwhile, or whose lease was given back, is dropped
        #: when reached.
        self._waiting: dict[str, MeterLease] = {}
        self._lock = asyncio.Lock()
        #: Holds admitted from leases (no Redis call), script calls that synced leases,
        #: and those that failed: exported as metrics.
        self.leased_holds = 0
        self.syncs = 0
        self.sync_failures = 0
        inner.recovery.inflight = self._inflight
        inner.recovery.reassert = self._reassert

    # -- holds -------------------------------------------------------------------------

    async def hold(self, hold: Hold) -> None:
        if hold.id in self._local:
            return
        leases = self._leases_of(hold)
        if leases is not None and all(ls.covers(hold.amount, hold.tokens) for ls in leases):
            now = time.monotonic()
            for ls in leases:
                ls.held += hold.amount
                ls.theld += hold.tokens
                ls.used_at = now
                ls.unit, ls.tunit = hold.amount, hold.tokens
            self._local[hold.id] = hold
            self.leased_holds += 1
            return
        try:
            await self.inner.hold(hold)
        except Shortfall:
            # This process's own unused reserve may be what stands in the way: give it
            # back and ask again, so a lease never refuses what exact holds would admit.
            mine = [ls for ls in self._meter_leases(hold) if ls.reserve or ls.treserve]
            if not mine:
                raise
            try:
                await self.sync(mine, give_back=True)
            except (rx.ConnectionError, rx.TimeoutError) as e:
                raise LiveStateUnavailable(f"live balances are unreachable: {e}") from e
            await self.inner.hold(hold)
            return
        self._warm(hold)

    @staticmethod
    def _meters(hold: Hold) -> Iterator[tuple[str, OrgMeter | None, BudgetMeter | None]]:
        """(key, org meter, budget meter) of every meter the hold is on, org first."""
        if hold.org is not None:
            yield hold.org.key, hold.org, None
        for m in hold.budgets:
            yield m.key, None, m

    def _meter_keys(self, hold: Hold) -> Iterator[str]:
        return (key for key, _, _ in self._meters(hold))

    def _meter_leases(self, hold: Hold) -> list[MeterLease]:
        return [ls for k in self._meter_keys(hold) if (ls := self._leases.get(k)) is not None]

    def _leases_of(self, hold: Hold) -> list[MeterLease] | None:
        """The leases of every meter of the hold, or None when one has none."""
        out: list[MeterLease] = []
        for key, org, budget in self._meters(hold):
            ls = self._leases.get(key)
            if ls is None:
                return None
            # The newest Org (its floor) or Budget (its limits), for the next sync.
            if org is not None:
                ls.org = org
            else:
                ls.budget = budget
            out.append(ls)
        return out

    def _warm(self, hold: Hold) -> None:
        """Count an exact hold on its meters; a meter gone hot is leased at the next sync."""
        second = int(time.monotonic())
        meters = list(self._meters(hold))
        hot = False
        for key, _, _ in meters:
            at, n = self._heat.get(key, (second, 0))
            n = n + 1 if at == second else 1
            if len(self._heat) > 65_536:  # bounded: many meters come and go
                self._heat.clear()
            self._heat[key] = (second, n)
            if n >= self._hot or key in self._leases:
                hot = True
        if not hot:
            return
        for key, org, budget in meters:
            ls = self._lease_for(key, org, budget)
            ls.unit, ls.tunit = hold.amount, hold.tokens
            self._wanted.add(key)
        # A lease synced just now and still short cannot cover this hold (it is over its
        # share of what is free): asking again at once would cost a call per request. A
        # sync in flight counts as just now: asked at once meanwhile, the next sync started
        # the moment it ended, back to back.
        now = time.monotonic()
        recent = self._lock.locked() or any(
            now - ls.renewed_at < self._flush_s for ls in self._meter_leases(hold)
        )
        self._schedule(self._flush_s if recent else 0.0)

    def _lease_for(self, key: str, org: OrgMeter | None, budget: BudgetMeter | None) -> MeterLease:
        ls = self._leases.get(key)
        if ls is None:
            ls = self._engine.add(MeterLease(self._ids.next(), org, budget, key=key))
        return ls

    # -- settling ----------------------------------------------------------------------

    async def settle_soon(self, hold: Hold, amount: int, tokens: int) -> None:
        if self._local.pop(hold.id, None) is None:
            await self.inner.settle_soon(hold, amount, tokens)
            return
        now = time.monotonic()
        for key in self._meter_keys(hold):
            ls = self._leases[key]
            ls.held -= hold.amount
            ls.theld -= hold.tokens
            ls.used += amount
            ls.tused += tokens
            if not ls.items:
                ls.since = now
                self._waiting.pop(key, None)
                self._waiting[key] = ls
            ls.items.append((hold.id, amount, tokens))
            if ls.post_due_early():
                self._wanted.add(key)
        self._schedule(self._flush_s)

    async def settle(self, hold: Hold, amount: int, tokens: int) -> None:
        if hold.id not in self._local:
            await self.inner.settle(hold, amount, tokens)
            return
        await self.settle_soon(hold, amount, tokens)
        await self.flush()

    # -- syncing with Redis ------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        self._engine.schedule(delay)

    @property
    def loss_check_s(self) -> float:
        """How long this process goes without a sync Redis answered, while usage waits
        to be posted, before a round sends one (so at most this and a sync interval):
        half the grace a rebuild gives every process to hand over what it has. Posted
        after another replica's rebuild, usage the writer had committed meanwhile would
        count twice, so waiting usage must reach the rebuild (see sync)."""
        return self.inner.recovery.grace_s / 2

    async def _background_sync(self) -> None:
        try:
            wanted, self._wanted = self._wanted, set()
            now = time.monotonic()
            due = [ls for key in wanted if (ls := self._leases.get(key)) is not None]
            oldest = self._old_enough(now, due, wanted)  # of the leases whose usage waits
            waiting = oldest is not None
            if not due and oldest is not None and now - self._called_at >= self.loss_check_s:
                # No sync for a while: the usage that waited longest goes early, and the
                # call sees a loss in time. One lease's work, not every waiting lease's.
                due.append(oldest)
            if due:
                await self.sync(due)
            if waiting:
                # Usage left waiting is posted when due even if no request comes: this
                # round ends by scheduling the next, a sync interval from now.
                self._schedule(self._flush_s)
            self._engine.worked("syncing ledger leases with Redis")
        except Exception as e:
            # The usage it carried is posted again (see _sync); the next sync sets the
            # reserves afresh, and until then holds go exact once they run out.
            self._engine.failed("syncing ledger leases with Redis", e)
            self._engine.retry()

    def _old_enough(self, now: float, due: list[MeterLease], wanted: set[str]) -> MeterLease | None:
        """Add to ``due`` the leases whose usage has waited ``post_max_s`` (those in
        ``wanted`` are there already); the lease whose usage waited longest of the rest."""
        stale: list[str] = []
        oldest = None
        for key, ls in self._waiting.items():
            if not ls.items or self._leases.get(key) is not ls:
                stale.append(key)  # posted, or given back, since it began waiting
            elif not (ls.used or ls.tused):
                continue  # settled at nothing so far (failed calls): nothing to post yet
            elif now - ls.since < self.post_max_s:
                oldest = ls  # and every one after it waited less
                break
            elif key not in wanted:
                due.append(ls)
        for key in stale:
            del self._waiting[key]
        return oldest

    def _rewait(self) -> None:
        """The waiting leases in order again, after a failed call put usage back with
        the time it began waiting (and cut the reserves: half of one may be used now)."""
        waiting = sorted((ls for ls in self._leases.values() if ls.items), key=attrgetter("since"))
        self._waiting = {ls.key: ls for ls in waiting}
        self._wanted.update(ls.key for ls in waiting if ls.post_due_early())

    async def sync(self, leases: list[MeterLease], *, give_back: bool = False) -> bool:
        """Post the leases' settled usage and set their reserves: ``share`` of what is
        free (never less than they hold now), or (``give_back``) only what is in use.

        One call at a time: the usage a call posts leaves the leases when it is sent, so
        two calls in flight never post it twice. At most SYNC_SLICE leases a call, each
        sent once the one before is answered. True when Redis had lost the state (the
        usage went to the rebuild, and every other lease's waiting usage with it)."""
        async with self._lock:
            lost = await self._sync_slices(leases, give_back)
            if lost:
                # What the other leases wait to post goes to the rebuild now too, checked
                # there against the database. Posted after it, usage the writer had
                # committed meanwhile would count twice.
                sent = set(map(id, leases))
                rest = [
                    ls
                    for ls in self._leases.values()
                    if (ls.used or ls.tused) and id(ls) not in sent
                ]
                await self._sync_slices(rest, False)
        return lost

    async def _sync_slices(self, leases: list[MeterLease], give_back: bool) -> bool:
        """The leases synced SYNC_SLICE at a time, in turn; whether the state was lost."""
        lost = False
        for i in range(0, len(leases), SYNC_SLICE):
            lost = await self._sync(leases[i : i + SYNC_SLICE], give_back) or lost
        return lost

    async def _sync(self, leases: list[MeterLease], give_back: bool) -> bool:
        keys: list[str] = [self._p + "holds"]
        posted: list[tuple[MeterLease, int, int, list[tuple[str, int, int]], float]] = []
        items: list[Any] = []
        # The record outlives its deadline in the holds set by a day, as a hold's does:
        # the expiry sweep releases by the set and needs the record to know how much.
        record_ms = int(self._ttl_s * 1000) + RECORD_MARGIN_MS
        args: list[Any] = [int((time.time() + self._ttl_s) * 1000), record_ms, len(leases)]
        for ls in leases:
            used, tused = ls.used, ls.tused
            posted.append((ls, used, tused, ls.items, ls.since))
            for rid, nanos, toks in ls.items:
                items += [len(posted), rid, nanos, toks]
            keys += [self._p + ls.key, self._p + "hold:" + ls.id]
            args += self._post_args(ls, give_back)
        keys += self.inner.tail_keys
        args.append(len(items) // 4)
        args += items
        self.syncs += 1
        try:
            res = await self._sync_script(keys=keys, args=args)
        except BaseException:
            self.sync_failures += 1
            # Kept to be posted again: Redis gone or restarted empty took none of it (the
            # next call finds the state lost and hands it to the rebuild, which adds
            # what the database lacks); a call that timed out after Redis applied it is
            # recognised by its base, and only the usage it did not carry is added.
            # Nothing more is admitted from these reserves until a call succeeds.
            for ls, used, tused, done, since in posted:
                ls.used += used
                ls.tused += tused
                ls.items[:0] = done
                if done:  # as old as its oldest usage, not a request settled meanwhile
                    ls.since = since
                ls.reserve, ls.treserve = min(ls.reserve, ls.held), min(ls.treserve, ls.theld)
            self._rewait()
            raise
        now = self._called_at = time.monotonic()  # answered: a loss would have shown
        for ls in leases:
            ls.answered += 1
        if int(res[0]) == -1:
            # The state is lost: the usage and what each lease keeps are with the rebuild.
            for ls in leases:
                ls.reserve, ls.treserve = ls.keep
                ls.renewed_at = now
            self.inner.recovery.start()
            return True
        for i, ls in enumerate(leases):
            ok, reserve, treserve = (int(v) for v in res[3 * i : 3 * i + 3])
            if ok:
                kind = "o" if ls.org is not None else "b"
                for rid, nanos, toks in posted[i][3]:
                    self.inner.counted(rid, (self._p + ls.key, nanos, toks, kind))
            # A meter gone from Redis had nothing to post against (rebuilt from the
            # database, it counts what the writer recorded) and holds no reserve.
            ls.reserve, ls.treserve = (reserve, treserve) if ok else (0, 0)
            ls.renewed_at = now
            if ls.post_due_early():
                self._wanted.add(ls.key)  # settled meanwhile, and half the new reserve
        return False

    def _post_args(self, ls: MeterLease, give_back: bool) -> list[Any]:
        """A lease's part of a sync call; its usage leaves it (posted, or put back when
        the call fails)."""
        if ls.org is not None:
            kind, bound, tbound = "o", ls.org.org.floor_nanos, -1
        else:
            assert ls.budget is not None
            b = ls.budget.budget
            kind = "b"
            bound = -1 if b.amount_nanos is None else b.amount_nanos
            tbound = -1 if b.token_limit is None else b.token_limit
        used, tused = ls.used, ls.tused
        # Posted usage stops being reserve: the room left (reserve - held - used) is
        # the same before and after.
        ls.used = ls.tused = 0
        ls.items = []
        ls.reserve -= min(used, ls.reserve)
        ls.treserve -= min(tused, ls.treserve)
        if give_back:
            # Admitted from now on only against what stays; Redis keeps what is in use.
            ls.reserve, ls.treserve = min(ls.reserve, ls.held), min(ls.treserve, ls.theld)
            keep, tkeep = ls.held, ls.theld
        else:
            # Never less than this process counts on (holds admitted meanwhile).
            keep, tkeep = max(ls.reserve, ls.held), max(ls.treserve, ls.theld)
        share = 0 if give_back else self._share_ppm
        if ls.force:
            # What a rebuild missed: held again whatever is free (keep already counts
            # the reserve the process admits against, and what is in use).
            share, ls.force = -1, False
        ls.keep = (keep, tkeep)
        return [
            kind,
            bound,
            tbound,
            used,
            tused,
            share,
            keep,
            tkeep,
            ls.id,
            ls.answered,
            ls.unit,
            ls.tunit,
        ]

    def _inflight(self) -> dict[str, str]:
        """Open holds to publish when the state is lost: the exact ones, and what each
        lease has in use: its open holds and the usage it has not posted, which its
        next sync takes out of the reserve (from now on it admits against no more)."""
        out = self.inner.inflight()
        expires = int((time.time() + self._ttl_s) * 1000)
        for ls in self._leases.values():
            ls.reserve, ls.treserve = ls.held + ls.used, ls.theld + ls.tused
            if ls.reserve or ls.treserve:
                flag = 1 if ls.org is not None else 0
                what = f"{ls.reserve} {ls.treserve} {flag} {expires} {self._p}{ls.key}"
                out["h " + ls.id] = what
        return out

    async def _reassert(self) -> None:
        """After a rebuild that missed this process's open holds: hold them again (the
        exact ones now, the leases' at their next sync, at least what is in use)."""
        await self.inner.reassert()
        for ls in self._leases.values():
            if ls.held or ls.theld:
                ls.force = True
                self._wanted.add(ls.key)
        self._schedule(0.0)

    def watch_commits(self) -> Callable[[Sequence[Item]], None]:
        """See RedisLedger.watch_commits: the usage leases post is kept the same way."""
        return self.inner.watch_commits()

    async def flush(self) -> None:
        """Post every lease's settled usage now and wait until Redis has it."""
        self._engine.unschedule()
        due = [ls for ls in self._leases.values() if ls.used or ls.tused]
        if due:
            try:
                await self.sync(due)
            except BaseException:
                # Put back (see _sync): a round posts it later, and checks for a loss.
                self._schedule(self._flush_s)
                raise

    async def upkeep(self, now: float) -> None:
        """Give back reserves unused for ``idle_s`` (forgetting leases left empty) and
        renew those kept longer than a quarter of their time to live."""
        idle: list[MeterLease] = []
        kept: list[MeterLease] = []
        for ls in self._engine:  # split in one pass: never ``ls in idle`` (n x n compares)
            (idle if self._engine.idle(ls, now) else kept).append(ls)
        back = [ls for ls in idle if ls.reserve or ls.treserve or ls.used or ls.tused]
        if back:
            await self.sync(back, give_back=True)
        old = [
            ls for ls in kept if (ls.reserve or ls.treserve) and self._engine.renewal_due(ls, now)
        ]
        if old:
            await self.sync(old)
        for ls in idle:
            if ls.empty():
                self._engine.forget(ls)

    # -- views and the rest ------------------------------------------------------------

    async def org_state(self, meter: OrgMeter) -> OrgState:
        """As Redis has it once this process's usage is posted, its unused reserve not
        counted as held."""
        await self.flush()
        # Read with no sync in flight: one Redis has applied and this process has not
        # heard back from would count its new reserve as held.
        async with self._lock:
            st = await self.inner.org_state(meter)
            ls = self._leases.get(meter.key)
            if ls is not None:
                st.held -= ls.reserve - ls.held
        return st

    async def budget_state(self, meter: BudgetMeter) -> BudgetState:
        await self.flush()
        async with self._lock:  # as org_state
            st = await self.inner.budget_state(meter)
            ls = self._leases.get(meter.key)
            if ls is not None:
                st.held -= ls.reserve - ls.held
                st.tokens_held -= ls.treserve - ls.theld
        return st

    async def expire(self, now: float | None = None) -> int:
        """Release expired holds: those in Redis (a crashed process's leases among them)
        and this process's own admitted from leases (stuck requests)."""
        return self.expire_local(time.time() if now is None else now) + await self.inner.expire(now)

    def expire_local(self, now: float) -> int:
        stale = [h for h in self._local.values() if h.expires_at <= now]
        for h in stale:
            del self._local[h.id]
            for key in self._meter_keys(h):
                ls = self._leases[key]
                ls.held -= h.amount
                ls.theld -= h.tokens
        return len(stale)

    async def set_admin_total(self, org_id: str, admin_nanos: int) -> None:
        await self.inner.set_admin_total(org_id, admin_nanos)

    async def set_admin_totals(self, totals: Mapping[str, int]) -> None:
        await self.inner.set_admin_totals(totals)

    async def close(self) -> None:
        """Post what is settled, give every reserve back (what is still in use stays held
        until its lease expires) and close."""
        await self._engine.close()
        await self.flush()
        if self._leases:
            try:
                await self.sync(list(self._leases.values()), give_back=True)
            except Exception as e:
                log.warning("giving ledger leases back failed (they expire): %s", e)
        self._leases.clear()
        await self.inner.close()
