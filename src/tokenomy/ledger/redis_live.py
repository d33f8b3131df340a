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
from typing import Any

import redis.asyncio as aioredis

from tokenomy.ledger.accounts import BudgetMeter, OrgMeter
from tokenomy.ledger.live import BudgetState, Hold, Loader, OrgState, Shortfall
from tokenomy.store.redis_scripts import Script, ScriptClient

log = logging.getLogger(__name__)

# KEYS: hold, holds, [org], budgets...   ARGV: id, amount, tokens, expires_ms, has_org,
# floor, -amount, -tokens, record ttl ms, then (limit, tlimit) per budget, -1 meaning
# none. Amounts travel as strings and reach HINCRBY untouched: Lua would print a large
# number as 1e+14.
_HOLD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'dup'} end
for i = 3, #KEYS do
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
for i = first_budget, #KEYS do
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
for i = 3, #KEYS do
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

# KEYS: hold, holds, [org], budgets...   ARGV: id, amount, tokens, has_org
_SETTLE = (
    _RELEASE_BODY
    + """
release(KEYS[1], KEYS[2], ARGV[1])
local first_budget = 3
if ARGV[4] == '1' then
  first_budget = 4
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HINCRBY', KEYS[3], 'used', ARGV[2]) end
end
for i = first_budget, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBY', KEYS[i], 'spent', ARGV[2])
    redis.call('HINCRBY', KEYS[i], 'tspent', ARGV[3])
  end
end
return 1
"""
)

# KEYS: holds; ARGV: now_ms, prefix, max
_EXPIRE = (
    _RELEASE_BODY
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for _, id in ipairs(ids) do
  n = n + release(ARGV[2] .. 'hold:' .. id, KEYS[1], id)
  redis.call('ZREM', KEYS[1], id)
end
return n
"""
)

# KEYS: org; ARGV: admin
_SET_ADMIN = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'admin', ARGV[1]) end
return 1
"""


class RedisLedger:
    def __init__(
        self,
        client: aioredis.Redis,
        loader: Loader,
        prefix: str = "tk:",
        *,
        scripts: ScriptClient | None = None,
    ) -> None:
        self.r = client
        self.loader = loader
        self.p = prefix
        # Scripts go over the lean pipelined client when there is one (the request path's
        # hold and settle); loading meters and admin reads stay on redis-py.
        self._scripts = scripts
        self._hold = self.register_script(_HOLD)
        self._settle = self.register_script(_SETTLE)
        self._expire = self.register_script(_EXPIRE)
        self._set_admin = self.register_script(_SET_ADMIN)
        #: Settlements queued by settle_soon and not answered yet (close waits for them).
        self._pending: set[asyncio.Future[Any]] = set()

    def register_script(self, source: str) -> Any:
        """A Lua script on the lean pipelined client when there is one, else on redis-py
        (for scripts that work on this ledger's keys, as leases do)."""
        if self._scripts is not None:
            return self._scripts.register_script(source)
        return self.r.register_script(source)

    @classmethod
    def from_url(cls, url: str, loader: Loader, prefix: str = "tk:") -> RedisLedger:
        scripts = ScriptClient.for_url(url)
        return cls(aioredis.Redis.from_url(url), loader, prefix, scripts=scripts)

    def _keys(self, hold: Hold) -> list[str]:
        keys = [self.p + "hold:" + hold.id, self.p + "holds"]
        if hold.org is not None:
            keys.append(self.p + hold.org.key)
        keys += [self.p + m.key for m in hold.budgets]
        return keys

    async def hold(self, hold: Hold) -> None:
        keys = self._keys(hold)
        args: list[Any] = [
            hold.id,
            hold.amount,
            hold.tokens,
            int(hold.expires_at * 1000),
            1 if hold.org is not None else 0,
            hold.org.org.floor_nanos if hold.org is not None else 0,
            -hold.amount,
            -hold.tokens,
            # The record outlives the hold's expiry by a day, so a dup is still recognised.
            int(max(hold.expires_at - time.time(), 0) * 1000) + 86_400_000,
        ]
        for m in hold.budgets:
            b = m.budget
            args += [
                -1 if b.amount_nanos is None else b.amount_nanos,
                -1 if b.token_limit is None else b.token_limit,
            ]
        for _ in range(len(keys)):
            res = await self._hold(keys=keys, args=args)
            status = _s(res[0])
            if status in ("ok", "dup"):
                return
            if status == "missing":
                await self._rebuild(hold, int(res[1]))
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
        raise RuntimeError("live ledger state could not be rebuilt")

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
            # A bucket outlives its period by a week, for statements and late settles.
            pipe.pexpireat(key, meter.end_ms + 7 * 86_400_000)
        await pipe.execute()

    def _settle_args(self, hold: Hold, amount: int, tokens: int) -> list[str | int]:
        return [hold.id, amount, tokens, 1 if hold.org is not None else 0]

    async def settle(self, hold: Hold, amount: int, tokens: int) -> None:
        await self._settle(keys=self._keys(hold), args=self._settle_args(hold, amount, tokens))

    async def settle_soon(self, hold: Hold, amount: int, tokens: int) -> None:
        script = self._settle
        if not isinstance(script, Script):  # redis-py serves this URL: wait as settle does
            try:
                await self.settle(hold, amount, tokens)
            except Exception as e:
                _log_settle_failure(hold.id, e)
            return
        # Queued at once, it leaves in this loop iteration's write, with the rate
        # limiter's settlement: the request's end waits for no round trip to Redis. Its
        # bytes go out before the response's end can reach the client, so a client that
        # asks next finds the hold settled.
        fut = script.submit(keys=self._keys(hold), args=self._settle_args(hold, amount, tokens))
        self._pending.add(fut)
        fut.add_done_callback(lambda f: self._settled(f, hold.id))

    def _settled(self, fut: asyncio.Future[Any], hold_id: str) -> None:
        self._pending.discard(fut)
        if not fut.cancelled() and (e := fut.exception()) is not None:
            _log_settle_failure(hold_id, e)

    async def expire(self, now: float | None = None) -> int:
        now_ms = int((time.time() if now is None else now) * 1000)
        n = await self._expire(keys=[self.p + "holds"], args=[now_ms, self.p, 1000])
        return int(n)

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
        await self._set_admin(keys=[f"{self.p}org:{org_id}"], args=[admin_nanos])

    async def close(self) -> None:
        while self._pending:  # failures are logged by _settled
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        await self.r.aclose()
        if self._scripts is not None:
            await self._scripts.aclose()


def _log_settle_failure(hold_id: str, e: BaseException) -> None:
    # The durable record is written regardless; the hold is released when it expires.
    log.error("settling hold %s in Redis failed (it is released at expiry): %s", hold_id, e)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
