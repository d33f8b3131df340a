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
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from tokenomy.core.call import CallKey
from tokenomy.core.errors import RateLimited
from tokenomy.core.ids import UniqueIds

if TYPE_CHECKING:
    from tokenomy.core.call import Call

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
