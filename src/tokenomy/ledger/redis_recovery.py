"""Rebuilding live balances in Redis when Redis has lost them (a FLUSHDB, a restart
without persistence, an eviction), in one step for every org, by one process at a time.

``epoch`` holds a generation id, set by the rebuild; while it is missing the state is
lost and the ledger's scripts change no counter: a hold is refused (the caller waits for
the rebuild, then answers 503), and a settlement or a lease's usage is kept in the
``unposted`` hash instead, one entry per request and meter. The process that first sees
the loss publishes its open holds there too (and the usage it counted that the writer
has not committed yet), takes the ``rebuild`` lock (SET NX), waits
``grace_s`` for the other processes to see it, and rebuilds:

1. it reads the unposted request ids, then, in one database snapshot, every org's totals,
   every budget's current bucket and which of those requests the database already has;
2. one script, if no entry arrived meanwhile, writes every counter from the snapshot,
   adds the unposted usage the snapshot did not have (usage the writer had committed is
   in the totals and is not added again), holds the published open holds again (and
   any hold whose record survived, as when only the marker was lost or an older
   version made it), and sets the new epoch. Entries that arrived meanwhile send it back to step 1.

So each request's usage is counted once: by the database snapshot or by the unposted
entry, never both. Open holds the rebuild missed (published too late) are held again by
their process at once, past the floor, since their requests are already running.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from tokenomy.ledger.live import Loader, TotalsSnapshot
from tokenomy.malloc_arenas import release_free_memory
from tokenomy.store.scripts import Scripts, script_client

log = logging.getLogger(__name__)

#: The rebuild lock's lifetime: longer than any rebuild, short enough to survive its
#: holder's crash.
LOCK_MS = 30_000
#: Rounds of step 1 before the rebuild counts entries that keep arriving as not recorded
#: (they are counted twice at worst: never less).
MAX_ROUNDS = 20
#: How often a process waiting for another's rebuild publishes its open holds again.
POLL_S = 0.01

# KEYS: unposted, epoch.  ARGV: field, value, ...
# Open holds are published only while the state is lost: after the rebuild the process
# holds again itself those the rebuild did not (1: published, 0: too late).
PUBLISH = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: lock.  ARGV: token
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: epoch, unposted, holds.
# ARGV: new epoch, key prefix, final ('1': entries not checked count as not recorded),
#       org count, (org key, admin, used)..., bucket count, (bucket key, spent, tokens,
#       expire-at ms or -1)..., checked count, (request id, '1' recorded / '0' not)...
# Unposted entries: 'u <request id> <meter key>' = '<nanos> <tokens> <o|b>' (usage);
# 'h <hold id>' = '<nanos> <tokens> <org flag> <expires ms> <meter keys>' (open hold).
FINALIZE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'done' end
local function I(x) return string.format('%d', x) end
local final = ARGV[3] == '1'
local j = 4
local norgs = tonumber(ARGV[j]); local orgs_at = j + 1; j = j + 1 + 3 * norgs
local nbud = tonumber(ARGV[j]); local bud_at = j + 1; j = j + 1 + 4 * nbud
local nchk = tonumber(ARGV[j]); j = j + 1
local recorded = {}
for i = 1, nchk do recorded[ARGV[j]] = ARGV[j + 1]; j = j + 2 end
local entries = redis.call('HGETALL', KEYS[2])
if not final then
  for i = 1, #entries, 2 do
    local rid = string.match(entries[i], '^u (%S+) ')
    if rid and recorded[rid] == nil then return 'again' end
  end
end
-- Holds that survived (only the marker was lost, or an older version made them) are
-- kept and counted again below; none survive a FLUSHDB or a restart.
local kept = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local h = redis.call('HMGET', ARGV[2] .. 'hold:' .. id, 'amount', 'tokens', 'org', 'keys')
  if h[1] then kept[#kept + 1] = h else redis.call('ZREM', KEYS[3], id) end
end
for i = 0, norgs - 1 do
  local k = orgs_at + 3 * i
  redis.call('DEL', ARGV[k])
  redis.call('HSET', ARGV[k], 'admin', ARGV[k + 1], 'used', ARGV[k + 2], 'held', '0')
end
for i = 0, nbud - 1 do
  local k = bud_at + 4 * i
  redis.call('DEL', ARGV[k])
  redis.call('HSET', ARGV[k], 'spent', ARGV[k + 1], 'held', '0', 'tspent', ARGV[k + 2],
             'theld', '0')
  if ARGV[k + 3] ~= '-1' then redis.call('PEXPIREAT', ARGV[k], ARGV[k + 3]) end
end
-- A hold record keeps its amounts negated.
local function hold_on(keys, org, a, t)
  local first = true
  for k in string.gmatch(keys, '%S+') do
    if redis.call('EXISTS', k) == 1 then
      redis.call('HINCRBY', k, 'held', a)
      if not (first and org == '1') then redis.call('HINCRBY', k, 'theld', t) end
    end
    first = false
  end
end
for _, h in ipairs(kept) do
  hold_on(h[4], h[3], I(-tonumber(h[1])), I(-tonumber(h[2])))
end
local added, held = 0, 0
for i = 1, #entries, 2 do
  local f, v = entries[i], entries[i + 1]
  local rid, mk = string.match(f, '^u (%S+) (%S+)$')
  if rid then
    if recorded[rid] ~= '1' and redis.call('EXISTS', mk) == 1 then
      local a, t, kind = string.match(v, '^(%S+) (%S+) (%S+)$')
      if kind == 'o' then
        redis.call('HINCRBY', mk, 'used', a)
      else
        redis.call('HINCRBY', mk, 'spent', a)
        redis.call('HINCRBY', mk, 'tspent', t)
      end
      added = added + 1
    end
  else
    local id = string.match(f, '^h (%S+)$')
    local a, t, org, exp, keys = string.match(v, '^(%S+) (%S+) (%S+) (%S+) (.*)$')
    local rec = id and ARGV[2] .. 'hold:' .. id
    if id and a and redis.call('EXISTS', rec) == 0 then
      hold_on(keys, org, a, t)
      redis.call('HSET', rec, 'amount', I(-tonumber(a)), 'tokens', I(-tonumber(t)),
                 'org', org, 'keys', keys)
      redis.call('PEXPIREAT', rec, tonumber(exp) + 86400000)
      redis.call('ZADD', KEYS[3], exp, id)
      held = held + 1
    end
  end
end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1])
return {'ok', added, held}
"""


class Recovery:
    """Detects lost live state and rebuilds it (see the module's docstring).

    ``inflight`` gives this process's open holds as unposted entries; ``reassert`` holds
    them again when they were published too late.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        loader: Loader,
        *,
        grace_s: float = 0.5,
        scripts: Scripts | None = None,
    ) -> None:
        self.r = client
        self.loader = loader
        self.p = prefix
        self.epoch_key = prefix + "epoch"
        self.unposted_key = prefix + "unposted"
        self.grace_s = grace_s
        self.inflight: Callable[[], dict[str, str]] = dict
        self.reassert: Callable[[], Awaitable[None]] = _nothing
        on = script_client(client, scripts)
        self._publish = on.register_script(PUBLISH)
        self._unlock = on.register_script(UNLOCK)
        self._finalize = on.register_script(FINALIZE)
        self._task: asyncio.Task[None] | None = None
        #: Whether this process has seen live state: before that, a missing epoch is a
        #: new Redis, and nothing of this process's is in flight to wait for.
        self.seen = False
        #: Rebuilds this process made, and losses it saw (exported as metrics).
        self.rebuilds = 0
        self.losses = 0
        #: The epoch this process last recovered into.
        self.epoch: bytes | str | None = None

    def start(self) -> asyncio.Task[None]:
        """Recover in the background, once at a time."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self._task

    async def wait(self, timeout_s: float) -> bool:
        """Recover (or wait for the recovery under way); whether it finished in time."""
        task = self.start()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            return False
        except Exception as e:  # logged once by _run; the caller answers 503
            log.debug("ledger recovery failed: %s", e)
            return False
        return True

    async def _run(self) -> None:
        try:
            await self._recover()
        except Exception as e:
            log.error("rebuilding the live ledger state failed (retried on next use): %s", e)
            raise

    async def _recover(self) -> None:
        # Always: a process that saw no live state yet (a new replica, an idle one) has
        # nothing in flight, but the others may, and they need the time to publish it.
        grace = self.grace_s
        lock = self.p + "rebuild"
        lost = False
        while not await self.r.exists(self.epoch_key):
            if not lost and self.seen:
                self.losses += 1
                log.warning("Redis has lost the live ledger state: rebuilding it from the database")
            lost = True
            # Again and again: lost again meanwhile, Redis took the entries with it.
            await self._publish_inflight()
            token = secrets.token_hex(8)
            if await self.r.set(lock, token, nx=True, px=LOCK_MS):
                try:
                    await asyncio.sleep(grace)
                    await self._rebuild()
                finally:
                    await self._unlock(keys=[lock], args=[token])
                break
            await asyncio.sleep(POLL_S)
        # Published too late (this process saw the loss only once it was rebuilt: a new
        # epoch), or lost again before the rebuild read them: the open holds the rebuild
        # did not hold again are held now (a hold it did is left as it is).
        epoch = await self.r.get(self.epoch_key)
        if lost or (self.seen and epoch != self.epoch):
            await self.reassert()
        self.epoch = epoch
        self.seen = True

    async def _publish_inflight(self) -> None:
        fields = self.inflight()
        if fields:
            args = [x for kv in fields.items() for x in kv]
            await self._publish(keys=[self.unposted_key, self.epoch_key], args=args)

    async def _rebuild(self) -> None:
        await self._publish_inflight()
        # Totals read once; later rounds ask the same snapshot only about the requests.
        snap = await asyncio.to_thread(self.loader.live_snapshot, int(time.time() * 1000))
        try:
            await self._rebuild_from(snap)
        finally:
            await asyncio.to_thread(snap.close)

    async def _rebuild_from(self, totals: TotalsSnapshot) -> None:
        head: list[Any] = [len(totals.orgs)]
        for org_id, (admin, used) in totals.orgs.items():
            head += [f"{self.p}org:{org_id}", admin, used]
        head.append(len(totals.budgets))
        for key, (nanos, tokens, until) in totals.budgets.items():
            head += [self.p + key, nanos, tokens, -1 if until is None else until]
        for round_ in range(MAX_ROUNDS + 1):
            if round_:
                await self._publish_inflight()
            names = [_s(f) for f in await self.r.hkeys(self.unposted_key)]
            rids = {f.split(" ")[1] for f in names if f.startswith("u ")}
            recorded = await asyncio.to_thread(totals.recorded, rids)
            final = round_ == MAX_ROUNDS
            args: list[Any] = [secrets.token_hex(8), self.p, "1" if final else "0", *head]
            args.append(len(rids))
            for rid in rids:
                args += [rid, "1" if rid in recorded else "0"]
            keys = [self.epoch_key, self.unposted_key, self.p + "holds"]
            res = await self._finalize(keys=keys, args=args)
            if isinstance(res, list):
                self.rebuilds += 1
                release_free_memory()  # the snapshot and the call's arguments, for every org
                log.warning(
                    "live ledger state rebuilt from the database: %d orgs, %d budget "
                    "buckets, %d unposted usage entries added, %d open holds held again",
                    len(totals.orgs),
                    len(totals.budgets),
                    int(res[1]),
                    int(res[2]),
                )
                return
            if _s(res) == "done":
                return


async def _nothing() -> None:
    return None


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
