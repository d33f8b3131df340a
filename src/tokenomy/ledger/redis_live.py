"""Live ledger state in Redis, shared by every replica; each operation is one Lua script.

Keys (under a prefix): ``org:<id>`` hash {admin, used, held}; ``bud:<id>:<start>`` hash
{spent, held, tspent, theld}; ``hold:<id>`` hash {amount, tokens, keys}; ``holds`` a
sorted set of hold ids by expiry. A script that finds a meter missing (first use, or Redis
lost its data) reports it; the caller rebuilds that meter from the database and retries.

Lua numbers are doubles: comparisons are exact up to 2**53 nanos (about 9 million units
of a currency per org); the counters themselves are exact 64-bit integers (HINCRBY).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rx
from sqlalchemy.exc import SQLAlchemyError

from tokenomy.ledger.accounts import BudgetMeter, OrgMeter
from tokenomy.ledger.live import (
    BudgetState,
    Hold,
    LiveStateUnavailable,
    Loader,
    OrgState,
    Shortfall,
)
from tokenomy.ledger.redis_recovery import Recovery
from tokenomy.ledger.snapshot import BUCKET_GRACE_MS
from tokenomy.store.redis_scripts import ScriptClient
from tokenomy.store.schema import usage_events
from tokenomy.store.scripts import Script, Scripts, script_client
from tokenomy.store.writer import Item

log = logging.getLogger(__name__)

#: How long a hold waits for lost live state to be rebuilt before it is answered 503.
RECOVER_WAIT_S = 5.0
#: A floor no balance reaches: holds of requests already running, held again after a
#: rebuild, are not refused.
_NO_FLOOR = -(2**60)
#: How long a hold's (or a lease's) record outlives its deadline in the holds set: were
#: both to end together, Redis would drop the record before the sweep released it, and
#: the hold of a process killed outright would stay held for good; and a hold asked again
#: is still recognised as a duplicate.
RECORD_MARGIN_MS = 86_400_000
#: How long usage counted in Redis waits for the writer's commit before this process
#: stops publishing it after a loss (a writer that far behind is reported unhealthy).
UNCOMMITTED_MAX_S = 600.0
#: How long a request the writer committed is remembered: a lease posts its usage up to
#: 2.5 s after settling (2 s by default: leased.POST_MAX_FLUSHES), often after the commit,
#: and usage counted then must not wait as uncommitted (ten minutes, handed to any
#: rebuild meanwhile).
RECENT_COMMITS_S = 5.0

#: One meter's part of a request's usage: (meter key with prefix, nanos, tokens, kind
#: 'o' org or 'b' budget), as an unposted entry has it.
Usage = tuple[str, int, int, str]

# KEYS: hold, holds, [org], budgets..., unposted, epoch   ARGV: id, amount, tokens,
# expires_ms, has_org, floor, -amount, -tokens, record ttl ms, then (limit, tlimit) per
# budget, -1 meaning none. Amounts travel as strings and reach HINCRBY untouched: Lua
# would print a large number as 1e+14. No epoch: the state is lost (see redis_recovery).
_HOLD = """
if redis.call('EXISTS', KEYS[#KEYS]) == 0 then return {'lost'} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'dup'} end
local last = #KEYS - 2
for i = 3, last do
  if redis.call('EXISTS', KEYS[i]) == 0 then return {'missing', i - 3} end
end
local amount = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local has_org = ARGV[5] == '1'
local first_budget = 3
if has_org then
  first_budget = 4
  local v = redis.call('HMGET', KEYS[3], 'admin', 'used', 'held')
  local avail = tonumber(v[1]) - tonumber(v[2]) - tonumber(v[3]) - tonumber(ARGV[6])
  if amount > avail then return {'short', 0, tostring(avail), 'money'} end
end
for i = first_budget, last do
  local j = 10 + (i - first_budget) * 2
  local limit, tlimit = tonumber(ARGV[j]), tonumber(ARGV[j + 1])
  local v = redis.call('HMGET', KEYS[i], 'spent', 'held', 'tspent', 'theld')
  if limit >= 0 and tonumber(v[1]) + tonumber(v[2]) + amount > limit then
    return {'short', i - 3, tostring(limit - tonumber(v[1]) - tonumber(v[2])), 'money'}
  end
  if tlimit >= 0 and tonumber(v[3]) + tonumber(v[4]) + tokens > tlimit then
    return {'short', i - 3, tostring(tlimit - tonumber(v[3]) - tonumber(v[4])), 'tokens'}
  end
end
local keys = {}
for i = 3, last do
  redis.call('HINCRBY', KEYS[i], 'held', ARGV[2])
  if i >= first_budget then redis.call('HINCRBY', KEYS[i], 'theld', ARGV[3]) end
  keys[#keys + 1] = KEYS[i]
end
redis.call('HSET', KEYS[1], 'amount', ARGV[7], 'tokens', ARGV[8],
           'org', has_org and '1' or '0', 'keys', table.concat(keys, ' '))
redis.call('PEXPIRE', KEYS[1], ARGV[9])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return {'ok'}
"""

# Releases one hold by its record, which keeps the NEGATED amounts ready for HINCRBY.
_RELEASE_BODY = """
local function release(hkey, zkey, id)
  local h = redis.call('HMGET', hkey, 'amount', 'tokens', 'org', 'keys')
  if not h[1] then return 0 end
  local first = true
  for k in string.gmatch(h[4], '%S+') do
    if redis.call('EXISTS', k) == 1 then
      redis.call('HINCRBY', k, 'held', h[1])
      if not (first and h[3] == '1') then redis.call('HINCRBY', k, 'theld', h[2]) end
    end
    first = false
  end
  redis.call('DEL', hkey)
  redis.call('ZREM', zkey, id)
  return 1
end
"""

# KEYS: hold, holds, [org], budgets..., unposted, epoch   ARGV: id, amount, tokens, has_org
# Returns 1, or 0 when the state is lost: the usage is then kept in ``unposted`` for the
# rebuild (and the hold, if its process published it as open, is not held again).
_SETTLE = (
    _RELEASE_BODY
    + """
local last = #KEYS - 2
local first_budget = 3
if ARGV[4] == '1' then first_budget = 4 end
if redis.call('EXISTS', KEYS[#KEYS]) == 0 then
  local U = KEYS[#KEYS - 1]
  redis.call('HDEL', U, 'h ' .. ARGV[1])
  if first_budget == 4 then
    redis.call('HSET', U, 'u ' .. ARGV[1] .. ' ' .. KEYS[3], ARGV[2] .. ' 0 o')
  end
  for i = first_budget, last do
    redis.call('HSET', U, 'u ' .. ARGV[1] .. ' ' .. KEYS[i], ARGV[2] .. ' ' .. ARGV[3] .. ' b')
  end
  return 0
end
release(KEYS[1], KEYS[2], ARGV[1])
if first_budget == 4 and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HINCRBY', KEYS[3], 'used', ARGV[2])
end
for i = first_budget, last do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBY', KEYS[i], 'spent', ARGV[2])
    redis.call('HINCRBY', KEYS[i], 'tspent', ARGV[3])
  end
end
return 1
"""
)

# KEYS: holds, epoch; ARGV: now_ms, prefix, max. Returns -1 when the state is lost.
_EXPIRE = (
    _RELEASE_BODY
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for _, id in ipairs(ids) do
  n = n + release(ARGV[2] .. 'hold:' .. id, KEYS[1], id)
  redis.call('ZREM', KEYS[1], id)
end
return n
"""
)

# KEYS: orgs; ARGV: their admin totals. An org not loaded is left alone (it is loaded
# from the database, with its total, when first held).
_SET_ADMIN = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HSET', KEYS[i], 'admin', ARGV[i]) end
end
return 1
"""
#: Orgs set in one call at most: a call holds Redis for every other client meanwhile.
SET_ADMIN_BATCH = 500


class RedisLedger:
    def __init__(
        self,
        client: aioredis.Redis,
        loader: Loader,
        prefix: str = "tk:",
        *,
        scripts: Scripts | None = None,
    ) -> None:
        self.r = client
        self.loader = loader
        self.p = prefix
        # Scripts go over the lean pipelined client when there is one (the request path's
        # hold and settle); loading meters and admin reads stay on redis-py.
        self._scripts = script_client(client, scripts)
        self._hold = self.register_script(_HOLD)
        self._settle = self.register_script(_SETTLE)
        self._expire = self.register_script(_EXPIRE)
        self._set_admin = self.register_script(_SET_ADMIN)
        #: Settlements queued by settle_soon and not answered yet (close waits for them).
        self._pending: set[asyncio.Future[Any]] = set()
        #: This process's holds in Redis not settled yet, to hold again after a rebuild.
        self._open: dict[str, Hold] = {}
        #: The last keys of every script call on holds: where usage waits while the state
        #: is lost, and the marker whose absence says it is.
        self.tail_keys = [prefix + "unposted", prefix + "epoch"]
        # Recovery's scripts stay on redis-py: they run while the lean client may rest.
        self.recovery = Recovery(client, prefix, loader)
        self.recovery.inflight = self.inflight
        self.recovery.reassert = self.reassert
        #: Usage counted in Redis the writer has not reported committed yet, by request
        #: (with when it was counted): a rebuild's snapshot lacks it, so it is published
        #: after a loss. Kept only once the writer reports commits (watch_commits).
        self._uncommitted: OrderedDict[str, tuple[float, list[Usage]]] | None = None
        #: Requests the writer committed in the last RECENT_COMMITS_S, with when, oldest
        #: first. Ordered dicts: a plain dict emptied from the front is scanned past every
        #: slot emptied before (it does not compact as it shrinks), and forgetting a
        #: burst's commits stalled the event loop for seconds.
        self._recent: OrderedDict[str, float] = OrderedDict()
        #: Whether Redis is unreachable (logged once per outage, not per request).
        self._outage = False

    def register_script(self, source: str) -> Script:
        """A Lua script on this ledger's script client (for scripts that work on its
        keys, as leases do)."""
        return self._scripts.register_script(source)

    @classmethod
    def from_url(cls, url: str, loader: Loader, prefix: str = "tk:") -> RedisLedger:
        scripts = ScriptClient.for_url(url)
        return cls(aioredis.Redis.from_url(url), loader, prefix, scripts=scripts)

    def _keys(self, hold: Hold) -> list[str]:
        keys = [self.p + "hold:" + hold.id, self.p + "holds"]
        if hold.org is not None:
            keys.append(self.p + hold.org.key)
        keys += [self.p + m.key for m in hold.budgets]
        keys += self.tail_keys
        return keys

    async def hold(self, hold: Hold) -> None:
        keys = self._keys(hold)
        args = self._hold_args(hold)
        for _ in range(len(keys)):
            res = await self._call(self._hold, keys, args)
            status = _s(res[0])
            if status in ("ok", "dup"):
                self._open[hold.id] = hold
                self.recovery.seen = True
                return
            if status == "lost":
                if not await self.recovery.wait(RECOVER_WAIT_S):
                    raise LiveStateUnavailable("live balances are being rebuilt")
                continue
            if status == "missing":
                try:
                    await self._rebuild(hold, int(res[1]))
                except (rx.ConnectionError, rx.TimeoutError, SQLAlchemyError) as e:
                    # Redis or the database gone meanwhile: the client is told to retry.
                    raise LiveStateUnavailable(f"a live balance could not be loaded: {e}") from e
                continue
            idx, available, unit = int(res[1]), int(_s(res[2])), _s(res[3])
            tokens = unit == "tokens"
            if idx == 0 and hold.org is not None:
                what, budget = f"the balance of org {hold.org.org.id}", False
            else:
                offset = 1 if hold.org is not None else 0
                what, budget = hold.budgets[idx - offset].describe(), True
            needed = hold.tokens if tokens else hold.amount
            raise Shortfall(what, needed, available, tokens=tokens, budget=budget)
        raise LiveStateUnavailable("live ledger state could not be rebuilt")

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """A script call; Redis unreachable is LiveStateUnavailable, logged once."""
        try:
            res = await script(keys=keys, args=args)
        except (rx.ConnectionError, rx.TimeoutError) as e:
            if not self._outage:
                self._outage = True
                log.error("Redis is unreachable: holds are refused (503) until it is back: %s", e)
            raise LiveStateUnavailable(f"live balances are unreachable: {e}") from e
        if self._outage:
            self._outage = False
            log.warning("Redis is reachable again")
        return res

    def _hold_args(self, hold: Hold, *, force: bool = False) -> list[Any]:
        args: list[Any] = [
            hold.id,
            hold.amount,
            hold.tokens,
            int(hold.expires_at * 1000),
            1 if hold.org is not None else 0,
            _NO_FLOOR if force else hold.org.org.floor_nanos if hold.org is not None else 0,
            -hold.amount,
            -hold.tokens,
            int(max(hold.expires_at - time.time(), 0) * 1000) + RECORD_MARGIN_MS,
        ]
        for m in hold.budgets:
            b = m.budget
            args += [
                -1 if b.amount_nanos is None or force else b.amount_nanos,
                -1 if b.token_limit is None or force else b.token_limit,
            ]
        return args

    def inflight(self) -> dict[str, str]:
        """This process's open holds, and the usage it counted that the database may not
        have yet, as unposted entries (see redis_recovery: usage the snapshot has is
        not added again)."""
        out = {}
        for h in self._open.values():
            meters = " ".join(self._keys(h)[2:-2])
            flag = 1 if h.org is not None else 0
            out["h " + h.id] = f"{h.amount} {h.tokens} {flag} {int(h.expires_at * 1000)} {meters}"
        for rid, (_, usage) in (self._uncommitted or {}).items():
            for key, nanos, tokens, kind in usage:
                out[f"u {rid} {key}"] = f"{nanos} {tokens} {kind}"
        return out

    def watch_commits(self) -> Callable[[Sequence[Item]], None]:
        """Keep the usage this process counts in Redis until the writer commits it; the
        writer's ``on_flushed`` is the returned callback."""
        if self._uncommitted is None:
            self._uncommitted = OrderedDict()
        return self.committed

    def committed(self, items: Sequence[Item]) -> None:
        """The writer committed these rows: their usage is in the database now."""
        if self._uncommitted is None:
            return
        now = time.monotonic()
        recent = self._recent
        for table, row in items:
            if table is usage_events:
                rid = row["request_id"]
                self._uncommitted.pop(rid, None)
                recent[rid] = now
        cutoff = now - RECENT_COMMITS_S
        while recent:  # oldest first
            rid, at = next(iter(recent.items()))
            if at > cutoff:
                break
            recent.popitem(last=False)

    def counted(self, request_id: str, usage: Usage) -> None:
        """Redis counted one meter's part of a request's usage (see watch_commits)."""
        if self._uncommitted is None or request_id in self._recent:
            return
        entry = self._uncommitted.get(request_id)
        if entry is None:
            self._uncommitted[request_id] = (time.monotonic(), [usage])
        else:
            entry[1].append(usage)

    def _count_settle(self, hold: Hold, amount: int, tokens: int) -> None:
        if self._uncommitted is None or hold.id in self._recent:
            return
        usage: list[Usage] = []
        if hold.org is not None:
            usage.append((self.p + hold.org.key, amount, 0, "o"))
        usage += [(self.p + m.key, amount, tokens, "b") for m in hold.budgets]
        self._uncommitted[hold.id] = (time.monotonic(), usage)

    def _forget_old_usage(self) -> None:
        """Drop usage the writer never reported (a dead letter): memory stays bounded."""
        if not self._uncommitted:
            return
        cutoff = time.monotonic() - UNCOMMITTED_MAX_S
        old = []
        for rid, (at, _) in self._uncommitted.items():  # oldest first
            if at > cutoff:
                break
            old.append(rid)
        for rid in old:
            del self._uncommitted[rid]

    async def reassert(self) -> None:
        """Hold this process's open holds again, past every limit: their requests run."""
        for h in list(self._open.values()):
            # A hold settled while an earlier one was being held again is not held again:
            # its settle went out first on the same connection, so this call would make
            # a phantom hold, kept until its expiry.
            if h.id not in self._open:
                continue
            await self._hold(keys=self._keys(h), args=self._hold_args(h, force=True))

    async def _rebuild(self, hold: Hold, index: int) -> None:
        """Load one missing meter from the database (HSETNX: a concurrent load wins)."""
        if hold.org is not None and index == 0:
            await self._load_org(hold.org)
            return
        meter = hold.budgets[index - (1 if hold.org is not None else 0)]
        await self._load_budget(meter)

    async def _load_org(self, meter: OrgMeter) -> None:
        admin, used = await asyncio.to_thread(self.loader.org_totals, meter.org.id)
        key = self.p + meter.key
        pipe = self.r.pipeline(transaction=True)
        pipe.hsetnx(key, "admin", admin)
        pipe.hsetnx(key, "used", used)
        pipe.hsetnx(key, "held", 0)
        await pipe.execute()

    async def _load_budget(self, meter: BudgetMeter) -> None:
        nanos, tokens = await asyncio.to_thread(self.loader.budget_spent, meter)
        key = self.p + meter.key
        pipe = self.r.pipeline(transaction=True)
        for field_, value in (("spent", nanos), ("held", 0), ("tspent", tokens), ("theld", 0)):
            pipe.hsetnx(key, field_, value)
        if meter.end_ms is not None:
            pipe.pexpireat(key, meter.end_ms + BUCKET_GRACE_MS)
        await pipe.execute()

    def _settle_args(self, hold: Hold, amount: int, tokens: int) -> list[str | int]:
        return [hold.id, amount, tokens, 1 if hold.org is not None else 0]

    async def settle(self, hold: Hold, amount: int, tokens: int) -> None:
        self._open.pop(hold.id, None)
        # Counted before the call: if it fails, the entry only asks the rebuild whether
        # the database has it, and never adds usage the database already counts.
        self._count_settle(hold, amount, tokens)
        keys, args = self._keys(hold), self._settle_args(hold, amount, tokens)
        if int(await self._settle(keys=keys, args=args)) == 0:
            self.recovery.start()  # the usage waits in ``unposted`` for the rebuild

    async def settle_soon(self, hold: Hold, amount: int, tokens: int) -> None:
        self._open.pop(hold.id, None)
        self._count_settle(hold, amount, tokens)
        # Queued at once, it leaves in this loop iteration's write, with the rate
        # limiter's settlement: the request's end waits for no round trip to Redis. Its
        # bytes go out before the response's end can reach the client, so a client that
        # asks next finds the hold settled.
        fut = self._settle.submit(
            keys=self._keys(hold), args=self._settle_args(hold, amount, tokens)
        )
        self._pending.add(fut)
        fut.add_done_callback(lambda f: self._settled(f, hold.id))

    def _settled(self, fut: asyncio.Future[Any], hold_id: str) -> None:
        self._pending.discard(fut)
        if fut.cancelled():
            return
        if (e := fut.exception()) is not None:
            _log_settle_failure(hold_id, e)
        elif int(fut.result()) == 0:
            self.recovery.start()

    async def expire(self, now: float | None = None) -> int:
        at = time.time() if now is None else now
        # Expired holds are released by the sweep: none is held again after a rebuild.
        for h in [h for h in self._open.values() if h.expires_at <= at]:
            del self._open[h.id]
        now_ms = int(at * 1000)
        keys = [self.p + "holds", self.tail_keys[1]]
        self._forget_old_usage()
        n = int(await self._call(self._expire, keys, [now_ms, self.p, 1000]))
        if n < 0:  # the state is lost (the sweep runs on idle replicas too: they notice)
            self.recovery.start()
            return 0
        # Live state seen: should it be lost, this process waits for the others' entries.
        self.recovery.seen = True
        return n

    async def org_state(self, meter: OrgMeter) -> OrgState:
        key = self.p + meter.key
        if not await self.r.exists(key):
            await self._load_org(meter)
        admin, used, held = await self.r.hmget(key, ["admin", "used", "held"])
        return OrgState(int(admin or 0), int(used or 0), int(held or 0))

    async def budget_state(self, meter: BudgetMeter) -> BudgetState:
        key = self.p + meter.key
        if not await self.r.exists(key):
            await self._load_budget(meter)
        v = await self.r.hmget(key, ["spent", "held", "tspent", "theld"])
        return BudgetState(*(int(x or 0) for x in v))

    async def set_admin_total(self, org_id: str, admin_nanos: int) -> None:
        await self.set_admin_totals({org_id: admin_nanos})

    async def set_admin_totals(self, totals: Mapping[str, int]) -> None:
        items = list(totals.items())
        for i in range(0, len(items), SET_ADMIN_BATCH):
            batch = items[i : i + SET_ADMIN_BATCH]
            keys = [f"{self.p}org:{org_id}" for org_id, _ in batch]
            await self._call(self._set_admin, keys, [total for _, total in batch])

    async def close(self) -> None:
        while self._pending:  # failures are logged by _settled
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        await self.r.aclose()
        await self._scripts.aclose()


def _log_settle_failure(hold_id: str, e: BaseException) -> None:
    # The durable record is written regardless; the hold is released when it expires.
    log.error("settling hold %s in Redis failed (it is released at expiry): %s", hold_id, e)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
