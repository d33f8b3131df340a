"""Cache affinity: the calls of one task (or sharing one long prompt prefix) go back to the
deployment that served the last of them while its prompt cache is warm.

Prompt caches live per deployment and expire (Anthropic: 5 minutes, or an hour on
request; OpenAI: minutes, or 24 hours on request): a call routed elsewhere re-pays its
whole context at the full input price. The :class:`AffinityStage` finds the call's key
before the ledger holds (one map read), the router puts the remembered deployment first
unless health, the request's ``provider`` preferences or its price limits say otherwise
(:func:`apply`), and the stage remembers where a successful call was served (one write).
The map is in process memory on one node, in Redis when several replicas share state
(``tokenomy.store.redis_affinity``).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tokenomy.core.call import CacheAffinity, Call, named_task
from tokenomy.core.registry import Deployment
from tokenomy.routing.health import BreakerState, HealthBoard
from tokenomy.routing.preferences import Candidate, Needs, Preferences, exclusion

Clock = Callable[[], float]

#: A cache lives this long unless the vendor documents another lifetime (Anthropic's and,
#: at least, OpenAI's in-memory cache).
DEFAULT_TTL_S = 300.0
#: Anthropic's ``cache_control: {"type": "ephemeral", "ttl": "1h"}``.
ONE_HOUR_S = 3600.0
#: OpenAI's ``prompt_cache_retention: "24h"`` (extended prompt caching).
ONE_DAY_S = 86_400.0
#: Without a task, calls whose prompts agree on this many leading characters share a key.
PREFIX_CHARS = 8192
#: Prompts shorter than this (bytes, about 1,024 tokens: the least OpenAI and Anthropic
#: cache) have no cache to keep warm, so no key is worked out for them.
MIN_PROMPT_BYTES = 4096
#: How long past its cache's end an entry is kept, to say "expired" rather than "miss".
EXPIRED_GRACE_S = 3600.0
#: Entries kept in process memory at most (the oldest written go first).
MEMORY_ENTRIES = 100_000


class AffinityMap(Protocol):
    """Where each key's calls were last served: ``(deployment id, warm until)``."""

    async def get(self, key: str) -> tuple[str, float] | None: ...

    async def put(self, key: str, deployment_id: str, warm_until: float) -> None: ...


class MemoryAffinity:
    """The map in process memory (one gateway process)."""

    def __init__(self, clock: Clock = time.time, capacity: int = MEMORY_ENTRIES) -> None:
        self.clock = clock
        self.capacity = capacity
        #: Oldest written first. Ordered: a plain dict emptied from the front is scanned
        #: past every slot emptied before (it compacts only when it grows), and dropping
        #: the oldest cost 26 µs a write at 100,000 entries.
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def get(self, key: str) -> tuple[str, float] | None:
        hit = self._entries.get(key)
        if hit is not None and hit[1] + EXPIRED_GRACE_S < self.clock():
            del self._entries[key]
            return None
        return hit

    async def put(self, key: str, deployment_id: str, warm_until: float) -> None:
        entries = self._entries
        entries[key] = (deployment_id, warm_until)
        entries.move_to_end(key)  # the newest written
        if len(entries) > self.capacity:
            entries.popitem(last=False)


def requested_ttl(body: dict[str, Any]) -> float | None:
    """The cache lifetime the request asks for: an hour for Anthropic's ``cache_control``
    with ``ttl: "1h"`` on any tool, system block or message part, a day for OpenAI's
    ``prompt_cache_retention: "24h"``; None when it asks for none."""
    if body.get("prompt_cache_retention") == "24h":
        return ONE_DAY_S
    if _one_hour(body.get("cache_control")):  # a top-level breakpoint
        return ONE_HOUR_S
    for block in _blocks(body.get("tools")):
        if _one_hour(block.get("cache_control")):
            return ONE_HOUR_S
    for block in _blocks(body.get("system")):
        if _one_hour(block.get("cache_control")):
            return ONE_HOUR_S
    for m in _blocks(body.get("messages")):
        if _one_hour(m.get("cache_control")):
            return ONE_HOUR_S
        for block in _blocks(m.get("content")):
            if _one_hour(block.get("cache_control")):
                return ONE_HOUR_S
    return None


def _blocks(v: Any) -> list[dict[str, Any]]:
    return [b for b in v if isinstance(b, dict)] if isinstance(v, list) else []


def _one_hour(cc: Any) -> bool:
    return isinstance(cc, dict) and cc.get("ttl") == "1h"


def prefix_digest(body: dict[str, Any], chars: int = PREFIX_CHARS) -> bytes:
    """A digest of the prompt's first ``chars`` characters of text (system, then messages),
    read from the parsed body: nothing is serialised, and reading stops at ``chars``."""
    h = hashlib.blake2b(digest_size=16)
    left = chars

    def feed(s: str) -> None:
        nonlocal left
        piece = s[:left]
        h.update(piece.encode())
        h.update(b"\x00")
        left -= len(piece)

    for part in _texts(body.get("system")):
        feed(part)
        if left <= 0:
            return h.digest()
    for m in _blocks(body.get("messages")):
        feed(str(m.get("role")))
        for part in _texts(m.get("content")):
            feed(part)
            if left <= 0:
                return h.digest()
    return h.digest()


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict):
            text = part.get("text")
            out.append(text if isinstance(text, str) else str(part.get("type")))
    return out


def affinity_key(call: Call) -> str:
    """The call's key, from its task, its OpenAI ``prompt_cache_key`` or its prompt's
    prefix (the caller checks the prompt is long enough for the last)."""
    assert call.route is not None
    owner = call.key.org_id or call.key.id
    task = named_task(call)
    if isinstance(task, str):
        seed = f"t\x00{owner}\x00{call.route.name}\x00{task}".encode()
    else:
        pck = call.body.get("prompt_cache_key")
        if isinstance(pck, str) and pck:
            seed = f"k\x00{owner}\x00{call.route.name}\x00{pck}".encode()
        else:
            seed = b"p\x00" + f"{owner}\x00{call.route.name}\x00".encode()
            seed += prefix_digest(call.body)
    return hashlib.blake2b(seed, digest_size=16).hexdigest()


class AffinityStage:
    """Finds the call's affinity before routing and remembers where it was served.

    Runs before the ledger stage's hold (which asks for the ranked deployments); the task
    a call names is its key even before the ledger stage has checked it (a name the
    ledger refuses fails the call anyway). A model with one deployment, a batch line, or a
    call with no task and a short prompt costs one length check.
    """

    span_name = "tokenomy.affinity"

    def __init__(
        self,
        store: AffinityMap,
        prompt_bound: Callable[[Call], int],
        *,
        default_ttl_s: float = DEFAULT_TTL_S,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.prompt_bound = prompt_bound
        self.default_ttl_s = default_ttl_s
        self.clock = clock

    async def before(self, call: Call) -> None:
        route = call.route
        if route is None or len(route.deployments) < 2 or call.endpoint == "embeddings":
            return
        if call.body.get("service_tier") == "batch":
            return  # batch lines run at their own pace: no cache to keep warm between them
        if (
            named_task(call) is None
            and "prompt_cache_key" not in call.body
            and self.prompt_bound(call) < MIN_PROMPT_BYTES
        ):
            return
        aff = CacheAffinity(affinity_key(call), ttl_s=requested_ttl(call.body))
        hit = await self.store.get(aff.key)
        if hit is not None:
            if hit[1] > self.clock():
                aff.remembered, aff.warm_until = hit
            else:
                aff.decision = "expired"  # its cache is cold by now: route as if new
        call.affinity = aff

    async def after(self, call: Call) -> None:
        aff, dep = call.affinity, call.deployment
        if aff is None or dep is None or call.status != "ok":
            return
        ttl = aff.ttl_s or dep.vendor.prompt_cache_ttl_s or self.default_ttl_s
        await self.store.put(aff.key, dep.id, self.clock() + ttl)


def apply(
    aff: CacheAffinity,
    order: list[Deployment],
    candidates: Sequence[Candidate],
    prefs: Preferences,
    needs: Needs,
    health: HealthBoard,
) -> list[Deployment]:
    """``order`` with the warm deployment first, when nothing outranks a warm cache;
    ``aff.decision`` says what happened (the ``x-tokenomy-affinity`` header)."""
    dep_id = aff.remembered
    if dep_id is None:
        return order  # "miss", or "expired" as the stage found it
    at = next((i for i, d in enumerate(order) if d.id == dep_id), None)
    if at is None:
        cand = next((c for c in candidates if c.deployment_id == dep_id), None)
        why = exclusion(cand, prefs, needs) if cand is not None else None
        aff.decision = f"yielded:{why or 'unavailable'}"
        return order
    snap = health.snapshot(dep_id)
    if snap is not None and snap.breaker is not BreakerState.CLOSED:
        # Resting after failures, or on probation: a warm cache is no reason to risk it.
        aff.decision = "yielded:unhealthy"
        return order
    if at and prefs.order:
        aff.decision = "yielded:order"  # the request named its providers' order
        return order
    if at and prefs.sort is not None:
        aff.decision = "yielded:sort"  # the request sorts by price, latency or throughput
        return order
    aff.decision = "hit"
    aff.target = dep_id
    if at:
        order = [order[at], *order[:at], *order[at + 1 :]]
    return order
