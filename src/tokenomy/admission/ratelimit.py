"""Rate limits per key, organisation and model: requests/minute, tokens/minute, concurrency.

Algorithm: GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp).
Each limit ``L`` per minute replenishes continuously at ``L/60`` per second up to a full
minute's worth, as OpenAI's limits do; a scope's whole state is its *theoretical arrival
time*, so a check is O(1), needs no timer, and fits in one Redis value. Chosen over a
sliding log (memory grows with the limit) and a sliding-window counter (an approximation
that can overshoot), and because tokens have a variable cost: a request reserves its
estimated tokens up front, and ``settle`` moves the timestamp by the difference once the
actual count is known (refunds never bank more than a full bucket). Over a long run the
admitted rate is at most ``L`` per minute; from idle, a burst of up to ``L`` is allowed.

Concurrency is a count of open tickets; in Redis a sorted set of ticket ids scored by a
lease expiry, so a replica that dies mid-request cannot leak slots forever.

Both backends check every scope of a request and commit only if all pass (in Redis, one
Lua script), so a refusal by the org limit consumes nothing from the key's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tokenomy.core.call import CallKey
from tokenomy.core.errors import RateLimited
from tokenomy.core.ids import UniqueIds

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tokenomy.core.call import Call
    from tokenomy.store.redis_scripts import ScriptClient

log = logging.getLogger(__name__)

PERIOD_S = 60.0
#: Slack for float rounding: L requests in a fresh minute must all pass.
_EPS_S = 1e-6


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-minute request and token limits and a concurrency cap; None means no limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent: int | None = None

    def __post_init__(self) -> None:
        for v in (self.requests_per_minute, self.tokens_per_minute, self.concurrent):
            if v is not None and v <= 0:
                raise ValueError("limits must be positive (or None for no limit)")


@dataclass(frozen=True, slots=True)
class Scope:
    """One limited thing a request counts against, e.g. ``Scope("org", "acme", limits)``."""

    kind: str
    id: str
    limits: Limits
    #: ``kind:id``, and the keys of its requests and tokens cells (worked out once).
    name: str = field(init=False, compare=False)
    requests_key: str = field(init=False, compare=False, repr=False)
    tokens_key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        name = f"{self.kind}:{self.id}"
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "requests_key", name + ":r")
        object.__setattr__(self, "tokens_key", name + ":t")


@dataclass(slots=True)
class Ticket:
    """An admission: what it reserved, and the rate-limit headers to send back."""

    id: str
    scopes: tuple[Scope, ...]
    tokens: int
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False


class RateLimiter(Protocol):
    async def acquire(self, scopes: Sequence[Scope], tokens: int) -> Ticket:
        """Admit a request reserving ``tokens``, or raise RateLimited (429)."""
        ...

    def settle(self, ticket: Ticket, actual_tokens: int) -> None:
        """Correct the reservation to the actual count and free the concurrency slot.

        Idempotent; never blocks (the Redis backend finishes in the background)."""
        ...

    async def aclose(self) -> None: ...


#: One GCRA check: (allowed, wait_s, new_tat, remaining, reset_s).
_Cell = tuple[bool, float, float, int, float]


@dataclass(slots=True)
class LimitView:
    """One dimension (requests or tokens) of one scope: its limit, remaining and reset."""

    limit: int
    remaining: int
    reset_s: float


def format_reset(seconds: float) -> str:
    """OpenAI's duration style: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        ms = math.ceil(seconds * 1000)
        return f"{ms if ms > 0 else 0}ms"
    minutes, secs = divmod(seconds, 60)
    s = f"{round(secs, 3):g}s"
    return f"{int(minutes)}m{s}" if minutes else s


#: The header names of each dimension: (limit, remaining, reset).
_REQUEST_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)
_TOKEN_HEADERS = (
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def limit_headers(requests: LimitView | None, tokens: LimitView | None) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers OpenAI's clients read, for the dimensions given."""
    h: dict[str, str] = {}
    for names, c in ((_REQUEST_HEADERS, requests), (_TOKEN_HEADERS, tokens)):
        if c is not None:
            limit, remaining, reset = names
            h[limit] = str(c.limit)
            h[remaining] = str(c.remaining if c.remaining > 0 else 0)
            h[reset] = format_reset(c.reset_s)
    return h


def tightest(current: LimitView | None, new: LimitView) -> LimitView:
    """Of two scopes' views of one dimension, the one with less remaining (the headers
    show the limit that will refuse first)."""
    return new if current is None or new.remaining < current.remaining else current


def refusal(
    message: str, retry_after: float | None, requests: LimitView | None, tokens: LimitView | None
) -> RateLimited:
    """The 429 for a refused admission, with the limit headers and when to retry."""
    h = limit_headers(requests, tokens)
    if retry_after is not None:
        h["retry-after-ms"] = str(max(1, math.ceil(retry_after * 1000)))
    return RateLimited(message, retry_after=retry_after, headers=h)


def too_large(scope: Scope, tokens: int) -> RateLimited:
    """The refusal of a request that could never fit the scope's tokens per minute."""
    return RateLimited(
        f"Request too large: it may use {tokens} tokens, more than the "
        f"{scope.limits.tokens_per_minute} tokens per minute allowed for {scope.kind} "
        f"'{scope.id}'. Lower max_tokens or shorten the prompt.",
        code="tokens_exceed_limit",
    )


class MemoryRateLimiter:
    """Limits for one process. All state is in dictionaries; no awaits, so it is atomic."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._open: dict[str, int] = {}
        self._ids = UniqueIds()

    def _gcra(self, key: str, limit: int, cost: int, now: float) -> _Cell:
        """``cost`` units against ``limit``: (allowed, wait_s, new_tat, remaining, reset_s)."""
        t = PERIOD_S / limit
        tat = self._tat.get(key, now)
        if tat < now:
            tat = now
        new = tat + cost * t
        if new - now > PERIOD_S + _EPS_S:
            left = math.floor((PERIOD_S - (tat - now)) / t + _EPS_S)
            return False, new - now - PERIOD_S, tat, left, tat - now
        left = math.floor((PERIOD_S - (new - now)) / t + _EPS_S)
        return True, 0.0, new, left, new - now

    async def acquire(self, scopes: Sequence[Scope], tokens: int) -> Ticket:
        return self.try_acquire(scopes, tokens)

    def try_acquire(self, scopes: Sequence[Scope], tokens: int) -> Ticket:
        """The synchronous body of :meth:`acquire`."""
        now = self._clock()
        commits: list[tuple[str, float]] = []
        # The tightest cell of each dimension, for the headers: (limit, remaining, reset).
        req_h: tuple[int, int, float] | None = None
        tok_h: tuple[int, int, float] | None = None
        wait = 0.0
        refused: str | None = None
        for s in scopes:
            lim = s.limits
            rpm, tpm = lim.requests_per_minute, lim.tokens_per_minute
            if tpm is not None and tokens > tpm:
                raise too_large(s, tokens)
            if rpm is not None:
                ok, w, new, left, reset = self._gcra(s.requests_key, rpm, 1, now)
                if req_h is None or left < req_h[1]:
                    req_h = (rpm, left, reset)
                commits.append((s.requests_key, new))
                if not ok:
                    wait, refused = max(wait, w), refused or f"requests per minute for {s.kind}"
            if tpm is not None and tokens > 0:
                ok, w, new, left, reset = self._gcra(s.tokens_key, tpm, tokens, now)
                if tok_h is None or left < tok_h[1]:
                    tok_h = (tpm, left, reset)
                commits.append((s.tokens_key, new))
                if not ok:
                    wait, refused = max(wait, w), refused or f"tokens per minute for {s.kind}"
            if lim.concurrent is not None and self._open.get(s.name, 0) >= lim.concurrent:
                wait, refused = max(wait, 1.0), refused or f"concurrent requests for {s.kind}"
        requests = LimitView(*req_h) if req_h is not None else None
        tokens_view = LimitView(*tok_h) if tok_h is not None else None
        if refused is not None:
            raise refusal(f"Rate limit reached: {refused}.", wait, requests, tokens_view)
        for key, new in commits:
            self._tat[key] = new
        for s in scopes:
            if s.limits.concurrent is not None:
                self._open[s.name] = self._open.get(s.name, 0) + 1
        return Ticket(self._ids.next(), tuple(scopes), tokens, limit_headers(requests, tokens_view))

    def settle(self, ticket: Ticket, actual_tokens: int) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        now = self._clock()
        delta = actual_tokens - ticket.tokens
        for s in ticket.scopes:
            lim = s.limits
            if lim.tokens_per_minute is not None and delta:
                key = s.tokens_key
                tat = max(self._tat.get(key, now), now) if delta > 0 else self._tat.get(key, now)
                self._tat[key] = max(now, tat + delta * PERIOD_S / lim.tokens_per_minute)
            if lim.concurrent is not None:
                n = self._open.get(s.name, 0) - 1
                if n > 0:
                    self._open[s.name] = n
                else:
                    self._open.pop(s.name, None)

    def in_flight(self, scope: Scope) -> int:
        return self._open.get(scope.name, 0)

    def prune(self) -> None:
        """Forget scopes whose buckets are full again (call now and then to bound memory)."""
        now = self._clock()
        for k in [k for k, tat in self._tat.items() if tat <= now]:
            del self._tat[k]

    async def aclose(self) -> None:
        return None


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

# KEYS: three per scope (requests TAT, tokens TAT, open-tickets zset), the state marker.
# ARGV: now_ms (negative: use the server's clock), scope count, tokens, ticket id, lease ms,
#       then per scope: rpm, tpm, concurrency (0 = no limit).
# Returns: {allowed, wait_ms, then per scope: rpm, remaining, reset_ms, tpm, remaining,
#           reset_ms}; reset and remaining are -1 for a dimension without a limit.
_ACQUIRE = (
    LUA_CLOCK
    + """
local n = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local ticket = ARGV[4]
local lease = tonumber(ARGV[5])
local P = 60000
"""
    + LUA_BASE
    + """
local EPS = 0.001
local allowed = 1
local wait = 0
local out = {0, 0}
local sets = {}
local function gcra(key, limit, units)
  local T = P / limit
  local tat = tonumber(redis.call('GET', key) or base)
  if tat < now then tat = now end
  local new = tat + units * T
  if new - now > P + EPS then
    allowed = 0
    if new - now - P > wait then wait = new - now - P end
    return limit, math.floor((P - (tat - now)) / T + EPS), math.ceil(tat - now)
  end
  sets[#sets + 1] = {key, new}
  return limit, math.floor((P - (new - now)) / T + EPS), math.ceil(new - now)
end
for i = 1, n do
  local rpm = tonumber(ARGV[5 + 3 * i - 2])
  local tpm = tonumber(ARGV[5 + 3 * i - 1])
  local conc = tonumber(ARGV[5 + 3 * i])
  local a, b, c = -1, -1, -1
  if rpm > 0 then a, b, c = gcra(KEYS[3 * i - 2], rpm, 1) end
  out[#out + 1] = a; out[#out + 1] = b; out[#out + 1] = c
  a, b, c = -1, -1, -1
  if tpm > 0 and cost > 0 then a, b, c = gcra(KEYS[3 * i - 1], tpm, cost) end
  out[#out + 1] = a; out[#out + 1] = b; out[#out + 1] = c
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3 * i], '-inf', now)
    if redis.call('ZCARD', KEYS[3 * i]) >= conc then
      allowed = 0
      if wait < 1000 then wait = 1000 end
    end
  end
end
if allowed == 1 then
  for _, s in ipairs(sets) do
    redis.call('SET', s[1], ms(s[2]), 'PX', math.ceil(s[2] - now) + 1000)
  end
  for i = 1, n do
    if tonumber(ARGV[5 + 3 * i]) > 0 then
      redis.call('ZADD', KEYS[3 * i], now + lease, ticket)
      redis.call('PEXPIRE', KEYS[3 * i], lease + 1000)
    end
  end
end
out[1] = allowed
out[2] = math.ceil(wait)
return out
"""
)

# KEYS: two per scope (tokens TAT, open-tickets zset).
# ARGV: now_ms (negative: server clock), scope count, token delta, ticket id, per scope tpm.
_SETTLE = (
    LUA_CLOCK
    + """
local n = tonumber(ARGV[2])
local delta = tonumber(ARGV[3])
for i = 1, n do
  local tpm = tonumber(ARGV[4 + i])
  local key = KEYS[2 * i - 1]
  if tpm > 0 and delta ~= 0 then
    local tat = tonumber(redis.call('GET', key) or now)
    if delta > 0 and tat < now then tat = now end
    local new = tat + delta * 60000 / tpm
    if new <= now then
      redis.call('DEL', key)
    else
      redis.call('SET', key, ms(new), 'PX', math.ceil(new - now) + 1000)
    end
  end
  redis.call('ZREM', KEYS[2 * i], ARGV[4])
end
return 1
"""
)


class RedisRateLimiter:
    """Limits shared by every replica through one Redis; each check is one atomic script.

    Time comes from the Redis server (one clock for all replicas) unless ``clock`` is
    given. With ``fail_open`` (the default) a Redis outage admits requests unlimited,
    logged, rather than failing every call; so give the client a ``BlockingConnectionPool``,
    whose callers wait for a connection, not a plain pool that raises "Too many
    connections" (which would count as an outage). Concurrency slots are leased for
    ``lease_s``: longer than the longest request. Keys share ``prefix``; put a hash tag in
    it (``"{rl}:"``) to keep them in one slot on a Redis Cluster.
    """

    def __init__(
        self,
        redis: Redis,
        prefix: str = "tokenomy:rl:",
        *,
        lease_s: float = 600.0,
        clock: Callable[[], float] | None = None,
        fail_open: bool = True,
        scripts: ScriptClient | None = None,
    ) -> None:
        self._redis = redis
        #: The lean pipelined client for the two script calls a request makes, if given.
        self._scripts = scripts
        self._prefix = prefix
        self._lease_ms = int(lease_s * 1000)
        self._clock = clock
        self._fail_open = fail_open
        register = scripts.register_script if scripts is not None else redis.register_script
        self._acquire = register(_ACQUIRE)
        #: The settle script on the lean client (which can queue a call without a task).
        self._settle_lean = scripts.register_script(_SETTLE) if scripts is not None else None
        self._settle = self._settle_lean or redis.register_script(_SETTLE)
        self._pending: set[asyncio.Future[Any]] = set()
        self._ids = UniqueIds()
        self._marker = prefix + "state"
        self._marked = False

    def _now_ms(self) -> int:
        return -1 if self._clock is None else int(self._clock() * 1000)

    async def acquire(self, scopes: Sequence[Scope], tokens: int) -> Ticket:
        for s in scopes:
            tpm = s.limits.tokens_per_minute
            if tpm is not None and tokens > tpm:
                raise too_large(s, tokens)
        ticket = Ticket(self._ids.next(), tuple(scopes), tokens)
        keys: list[str] = []
        args: list[Any] = [self._now_ms(), len(scopes), tokens, ticket.id, self._lease_ms]
        for s in scopes:
            base = self._prefix + s.name
            keys += [base + ":r", base + ":t", base + ":c"]
            lim = s.limits
            args += [
                lim.requests_per_minute or 0,
                lim.tokens_per_minute or 0,
                lim.concurrent or 0,
            ]
        keys.append(self._marker)
        try:
            if not self._marked:
                self._marked = await start_state(self._redis, self._marker)
            res = await self._acquire(keys=keys, args=args)
        except Exception as e:
            if not self._fail_open or not is_redis_error(e):
                raise
            log.warning("rate limits unavailable (admitting without limits): %s", e)
            return Ticket(ticket.id, (), tokens)
        vals = [int(v) for v in res]
        req_h: LimitView | None = None
        tok_h: LimitView | None = None
        for i in range(len(scopes)):
            r = vals[2 + 6 * i : 8 + 6 * i]
            if r[0] >= 0:
                req_h = tightest(req_h, LimitView(r[0], r[1], r[2] / 1000))
            if r[3] >= 0:
                tok_h = tightest(tok_h, LimitView(r[3], r[4], r[5] / 1000))
        if not vals[0]:
            raise refusal("Rate limit reached.", vals[1] / 1000, req_h, tok_h)
        ticket.headers = limit_headers(req_h, tok_h)
        return ticket

    def settle(self, ticket: Ticket, actual_tokens: int) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        if not ticket.scopes:
            return
        fut: asyncio.Future[Any]
        if self._settle_lean is not None:
            # Queued at once: no task, and it leaves in this loop iteration's write.
            keys, args = self._settle_call(ticket, actual_tokens)
            fut = self._settle_lean.submit(keys=keys, args=args)
            fut.add_done_callback(_log_settle_failure)
        else:
            fut = asyncio.get_running_loop().create_task(self.settle_now(ticket, actual_tokens))
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)

    async def settle_now(self, ticket: Ticket, actual_tokens: int) -> None:
        """Settle and wait for Redis to have it (``settle`` does this in the background)."""
        ticket.settled = True
        keys, args = self._settle_call(ticket, actual_tokens)
        try:
            await self._settle(keys=keys, args=args)
        except Exception as e:
            if not is_redis_error(e):
                raise
            _warn_settle_failed(e)

    def _settle_call(self, ticket: Ticket, actual_tokens: int) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        args: list[Any] = [self._now_ms(), len(ticket.scopes), actual_tokens - ticket.tokens]
        args.append(ticket.id)
        for s in ticket.scopes:
            base = self._prefix + s.name
            keys += [base + ":t", base + ":c"]
            args.append(s.limits.tokens_per_minute or 0)
        return keys, args

    async def flush(self) -> None:
        """Wait for background settlements."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def aclose(self) -> None:
        await self.flush()
        if self._scripts is not None:
            await self._scripts.aclose()


def _warn_settle_failed(e: BaseException) -> None:
    log.warning("settling rate limits failed (the lease will expire): %s", e)


def _log_settle_failure(fut: asyncio.Future[Any]) -> None:
    if fut.cancelled():
        return
    e = fut.exception()
    if e is None:
        return
    if isinstance(e, Exception) and is_redis_error(e):
        _warn_settle_failed(e)
    else:
        log.error("settling rate limits failed", exc_info=e)


async def start_state(redis: Redis, marker: str) -> bool:
    """Mark the limiter's state in Redis as started (unless it is), long ago: a limiter
    starting on a new Redis lets limits burst as usual (see LUA_BASE)."""
    await redis.set(marker, "0", nx=True)
    return True


def is_redis_error(e: Exception) -> bool:
    """Whether ``e`` means Redis could not be reached or answered (fail open on those)."""
    from redis.exceptions import RedisError

    return isinstance(e, RedisError | OSError | asyncio.TimeoutError)


#: The call's admission, settled to its actual usage after the call.
TICKET = CallKey[Ticket]("ratelimit")


class RateLimitStage:
    """The pipeline stage: reserve before the call, correct to actual usage after.

    ``scopes_for`` names the limits a call counts against (key, org, model) and
    ``estimate`` its token reservation (prompt plus max output). The admission's headers
    are left in ``call.ratelimit_headers`` for the response.
    """

    span_name = "tokenomy.admit"

    def __init__(
        self,
        limiter: RateLimiter,
        scopes_for: Callable[[Call], Sequence[Scope]],
        estimate: Callable[[Call], int],
    ) -> None:
        self.limiter = limiter
        self.scopes_for = scopes_for
        self.estimate = estimate

    async def before(self, call: Call) -> None:
        scopes = self.scopes_for(call)
        if not scopes:
            return
        ticket = await self.limiter.acquire(scopes, self.estimate(call))
        call.put(TICKET, ticket)
        call.ratelimit_headers = ticket.headers

    async def after(self, call: Call) -> None:
        ticket = call.get(TICKET)
        if ticket is not None:
            used = call.usage.total_tokens if call.usage is not None else 0
            self.limiter.settle(ticket, used)
