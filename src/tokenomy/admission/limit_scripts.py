"""The Lua scripts of the Redis rate limiter (see :mod:`tokenomy.admission.redis_limiter`).

Keys per scope: its requests and tokens TAT cells, and its sorted set of slots by expiry.
A process that leases nothing asks for no extras and gives back at once, so leasing and
exact processes count against one limit through the same two scripts.
"""

from __future__ import annotations

# Every script starts here: ``now`` in ms, from ARGV[1], or the Redis server's clock (one
# clock for all replicas) when ARGV[1] is negative. Times are stored with all 17 digits:
# tostring keeps 14, which near 1.7e12 ms is 0.01 ms, more than a request's share of a
# limit of a million a minute (and a token's of any large token limit).
LUA_CLOCK = """
local function ms(x) return string.format('%.17g', x) end
if redis.replicate_commands then pcall(redis.replicate_commands) end
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

#: After LUA_CLOCK and P: ``base``, the theoretical arrival time a missing GCRA key starts
#: from. The limiter's state marker is the last key (when the keys are three per scope and
#: one): set when a limiter starts, so a missing marker means Redis lost the state. For a
#: period from then a missing key counts as a whole window used: a loss does not hand
#: every limit out again (the steady rate goes on).
LUA_BASE = """
local base = now
if #KEYS % 3 == 1 then
  local since = redis.call('GET', KEYS[#KEYS])
  if not since then
    redis.call('SET', KEYS[#KEYS], ms(now))
    since = now
  end
  since = tonumber(since)
  if since + P > now then base = since + P end
end
"""

# KEYS: three per scope (requests TAT, tokens TAT, slots zset), the state marker (LUA_BASE).
# ARGV: now_ms (negative: the server's clock), scope count, lease ms, slot member prefix,
#       then per scope: rpm, tpm, concurrency (0 = no limit), the requests and tokens this
#       request needs of Redis (what its lease does not cover, and any debt the lease
#       owes), and the extra requests, tokens and slots wanted beyond that.
# Returns {allowed, wait_ms, then per scope: requests granted, remaining, reset_ms, tokens
# granted, remaining, reset_ms, slots granted}; remaining is -1 for a dimension not asked
# (no limit, or nothing needed). Granted counts include the need; all or nothing for
# those, best effort for the extras.
TAKE = (
    LUA_CLOCK
    + """
local n = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local member = ARGV[4]
local P = 60000
"""
    + LUA_BASE
    + """
local EPS = 0.001
local allowed = 1
local wait = 0
local out = {0, 0}
local sets = {}
local adds = {}
local alone = {}
local function take(key, limit, need, extra)
  local T = P / limit
  local tat = tonumber(redis.call('GET', key) or base)
  if tat < now then tat = now end
  if tat + need * T - now > P + EPS then
    allowed = 0
    if tat + need * T - now - P > wait then wait = tat + need * T - now - P end
    return 0, math.floor((P - (tat - now)) / T + EPS), math.ceil(tat - now)
  end
  local grant = need + extra
  local room = math.floor((P + EPS - (tat - now)) / T)
  if grant > room then grant = room end
  local new = tat + grant * T
  sets[#sets + 1] = {key, new}
  -- Should another cell refuse, this one shows what the need alone would leave.
  alone[#alone + 1] = {#out + 2, tat + need * T, T}
  return grant, math.floor((P - (new - now)) / T + EPS), math.ceil(new - now)
end
for i = 1, n do
  local j = 4 + 8 * (i - 1)
  local rpm, tpm, conc = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  local rneed, tneed = tonumber(ARGV[j + 4]), tonumber(ARGV[j + 5])
  local g, r, t = 0, -1, -1
  if rpm > 0 and rneed > 0 then
    g, r, t = take(KEYS[3 * i - 2], rpm, rneed, tonumber(ARGV[j + 6]))
  end
  out[#out + 1] = g; out[#out + 1] = r; out[#out + 1] = t
  g, r, t = 0, -1, -1
  if tpm > 0 and tneed > 0 then
    g, r, t = take(KEYS[3 * i - 1], tpm, tneed, tonumber(ARGV[j + 7]))
  end
  out[#out + 1] = g; out[#out + 1] = r; out[#out + 1] = t
  g = 0
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3 * i], '-inf', now)
    local room = conc - redis.call('ZCARD', KEYS[3 * i])
    if room < 1 then
      allowed = 0
      if wait < 1000 then wait = 1000 end
    else
      g = 1 + tonumber(ARGV[j + 8])
      if g > room then g = room end
      adds[#adds + 1] = {KEYS[3 * i], g}
    end
  end
  out[#out + 1] = g
end
if allowed == 1 then
  for _, s in ipairs(sets) do
    redis.call('SET', s[1], ms(s[2]), 'PX', math.ceil(s[2] - now) + 1000)
  end
  for _, a in ipairs(adds) do
    for k = 1, a[2] do redis.call('ZADD', a[1], now + lease, member .. ':' .. k) end
    redis.call('PEXPIRE', a[1], lease + 1000)
  end
else
  for _, v in ipairs(alone) do
    out[v[1]] = math.floor((P - (v[2] - now)) / v[3] + EPS)
    out[v[1] + 1] = math.ceil(v[2] - now)
  end
end
out[1] = allowed
out[2] = math.ceil(wait)
return out
"""
)

# KEYS: three per scope (requests TAT, tokens TAT, slots zset).
# ARGV: now_ms (negative: server clock), scope count, lease ms, then per scope: rpm, tpm,
#       requests given back, tokens given back (negative: owed, after an overrun), the
#       number of slots freed and of slots kept, then those members (freed first).
# Returns the kept members that had expired meanwhile (no longer counted).
GIVE = (
    LUA_CLOCK
    + """
local n = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local lost = {}
local function give(key, limit, back)
  local tat = tonumber(redis.call('GET', key) or now)
  if back < 0 and tat < now then tat = now end
  local new = tat - back * 60000 / limit
  if new <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, ms(new), 'PX', math.ceil(new - now) + 1000)
  end
end
local j = 4
for i = 1, n do
  local rpm, tpm = tonumber(ARGV[j]), tonumber(ARGV[j + 1])
  local rb, tb = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  local freed, kept = tonumber(ARGV[j + 4]), tonumber(ARGV[j + 5])
  j = j + 6
  if rpm > 0 and rb ~= 0 then give(KEYS[3 * i - 2], rpm, rb) end
  if tpm > 0 and tb ~= 0 then give(KEYS[3 * i - 1], tpm, tb) end
  for k = 1, freed do
    redis.call('ZREM', KEYS[3 * i], ARGV[j])
    j = j + 1
  end
  for k = 1, kept do
    if redis.call('ZSCORE', KEYS[3 * i], ARGV[j]) then
      redis.call('ZADD', KEYS[3 * i], now + lease, ARGV[j])
    else
      lost[#lost + 1] = ARGV[j]
    end
    j = j + 1
  end
  if kept > 0 then redis.call('PEXPIRE', KEYS[3 * i], lease + 1000) end
end
return lost
"""
)
