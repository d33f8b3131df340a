"""The Lua script of leased live balances (see :mod:`tokenomy.ledger.leased`).

A lease is an ordinary hold record (``hold:<id>`` with negated amounts, in the ``holds``
sorted set by expiry) on one meter, so the hold expiry that releases a crashed request's
hold releases a crashed process's lease the same way.
"""

from __future__ import annotations

# KEYS: holds, then per lease: the meter's hash, the lease's hold record; then unposted,
#       epoch (see redis_recovery).
# ARGV: expiry ms, record ttl ms (a day past the expiry: see redis_live.RECORD_MARGIN_MS),
#       lease count, then per lease (12): kind ('o' org, 'b' budget), money bound (org:
#       its floor; budget: its limit, -1 none), token limit (-1 none), usage to post
#       (nanos, tokens: every usage since the last call Redis answered), share in
#       millionths (0: keep only what is in use; -1: keep it even past the floor, as
#       after a rebuild that missed the lease), nanos and tokens to keep at least, lease
#       id, base (the sequence number of the lease's last answered call), the nanos and
#       tokens of the meter's last hold (a share below it reserves nothing); then the count
#       of requests whose usage this posts, and per request (4): lease index (from 1),
#       request id, nanos, tokens.
#
# Posting is idempotent: the lease's record keeps the base and the usage of the last
# call applied. A call whose answer was lost is posted again with the usage since the
# same base (and any since): only what the applied call did not carry is added.
# Returns per lease: 1 (or 0: the meter is gone, nothing was posted), then the nanos and
# tokens the lease holds now; or {-1} when the state is lost: then nothing is posted, each
# request's usage is kept in ``unposted`` for the rebuild and each lease is published
# there as an open hold of what it keeps.
#
# Posting converts the usage's part of the reserve into usage; then the reserve is set to
# ``share`` of what the meter has free (the lease's own reserve counted as free), at least
# what is in use, and never more than is free: the floor and limits hold in Redis as they
# do for every hold. Lua numbers are doubles: exact up to 2**53 nanos, as for holds.
SYNC = """
local n = tonumber(ARGV[3])
local out = {}
if redis.call('EXISTS', KEYS[#KEYS]) == 0 then
  local U = KEYS[#KEYS - 1]
  local m = tonumber(ARGV[4 + n * 12])
  for i = 0, m - 1 do
    local j = 5 + n * 12 + 4 * i
    local li = tonumber(ARGV[j])
    local kind = ARGV[4 + (li - 1) * 12] == 'o' and 'o' or 'b'
    redis.call('HSET', U, 'u ' .. ARGV[j + 1] .. ' ' .. KEYS[2 * li],
               ARGV[j + 2] .. ' ' .. ARGV[j + 3] .. ' ' .. kind)
  end
  for i = 1, n do
    local j = 4 + (i - 1) * 12
    local keep, tkeep = ARGV[j + 6], ARGV[j + 7]
    if keep == '0' and tkeep == '0' then
      redis.call('HDEL', U, 'h ' .. ARGV[j + 8])
    else
      redis.call('HSET', U, 'h ' .. ARGV[j + 8], keep .. ' ' .. tkeep .. ' ' ..
                 (ARGV[j] == 'o' and '1' or '0') .. ' ' .. ARGV[1] .. ' ' .. KEYS[2 * i])
    end
  end
  return {-1}
end
-- Integers as digits: tostring would write a large one as 1e+14, which HINCRBY refuses.
local function I(x) return string.format('%d', x) end
-- The reserve to hold: share of the pot (what is free, this reserve counted), at least
-- keep, and grown by no more than what is free.
local function retarget(pot, share, keep, R, free, unit)
  local T = 0
  if share > 0 then T = math.floor(pot * share / 1000000) end
  -- A share too small to cover one hold of the meter's size admits nothing and stands
  -- in other processes' way: near the floor only what is in use is held (exact holds).
  if T < unit then T = 0 end
  if T < keep then T = keep end
  if share >= 0 and T - R > free then T = R + math.max(free, 0) end
  return T
end
for i = 1, n do
  local mk, rk = KEYS[2 * i], KEYS[2 * i + 1]
  local j = 4 + (i - 1) * 12
  local kind = ARGV[j]
  local lim, tlim = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2])
  local c, t = tonumber(ARGV[j + 3]), tonumber(ARGV[j + 4])
  local share = tonumber(ARGV[j + 5])
  local keep, tkeep = tonumber(ARGV[j + 6]), tonumber(ARGV[j + 7])
  local id = ARGV[j + 8]
  local unit, tunit = tonumber(ARGV[j + 10]), tonumber(ARGV[j + 11])
  if redis.call('EXISTS', mk) == 0 then
    redis.call('DEL', rk)
    redis.call('ZREM', KEYS[1], id)
    out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = 0
  else
    local rec = redis.call('HMGET', rk, 'amount', 'tokens', 'base', 'sent', 'tsent')
    local R, RT = 0, 0
    if rec[1] then R = -tonumber(rec[1]); RT = -tonumber(rec[2]) end
    if rec[3] and rec[3] == ARGV[j + 9] then
      -- A call since the same base was applied (its answer was lost): it carried part
      -- of this usage already.
      c = math.max(c - tonumber(rec[4]), 0)
      t = math.max(t - tonumber(rec[5]), 0)
    end
    local cr, tr = math.min(c, R), math.min(t, RT)
    R, RT = R - cr, RT - tr
    local T, TT = 0, 0
    if kind == 'o' then
      redis.call('HINCRBY', mk, 'used', I(c))
      local v = redis.call('HMGET', mk, 'admin', 'used', 'held')
      local held = tonumber(v[3]) - cr
      local free = tonumber(v[1]) - tonumber(v[2]) - held - lim
      T = retarget(free + R, share, keep, R, free, unit)
      redis.call('HINCRBY', mk, 'held', I(T - R - cr))
    else
      redis.call('HINCRBY', mk, 'spent', I(c))
      redis.call('HINCRBY', mk, 'tspent', I(t))
      local v = redis.call('HMGET', mk, 'spent', 'held', 'tspent', 'theld')
      local held, theld = tonumber(v[2]) - cr, tonumber(v[4]) - tr
      if lim >= 0 then
        local free = lim - tonumber(v[1]) - held
        T = retarget(free + R, share, keep, R, free, unit)
      end
      if tlim >= 0 then
        local tfree = tlim - tonumber(v[3]) - theld
        TT = retarget(tfree + RT, share, tkeep, RT, tfree, tunit)
      end
      redis.call('HINCRBY', mk, 'held', I(T - R - cr))
      redis.call('HINCRBY', mk, 'theld', I(TT - RT - tr))
    end
    local posted = ARGV[j + 3] ~= '0' or ARGV[j + 4] ~= '0'
    if T == 0 and TT == 0 and not posted then
      redis.call('DEL', rk)
      redis.call('ZREM', KEYS[1], id)
    else
      -- A record holding nothing is kept (out of the holds set) while it may still be
      -- needed to recognise this call posted again.
      redis.call('HSET', rk, 'amount', I(-T), 'tokens', I(-TT),
                 'org', kind == 'o' and '1' or '0', 'keys', mk,
                 'base', ARGV[j + 9], 'sent', ARGV[j + 3], 'tsent', ARGV[j + 4])
      redis.call('PEXPIRE', rk, ARGV[2])
      if T == 0 and TT == 0 then
        redis.call('ZREM', KEYS[1], id)
      else
        redis.call('ZADD', KEYS[1], ARGV[1], id)
      end
    end
    out[#out + 1] = 1; out[#out + 1] = I(T); out[#out + 1] = I(TT)
  end
end
return out
"""
