"""A prompt cache per deployment, matched on prefixes and cold after a TTL, as vendors run them.

A prompt is read as a chain of prefixes ending at message boundaries (tools and system
first, then each message), each named by a digest of everything before it. A call reads
from the cache the longest prefix the same deployment (here: the same upstream model of
one simulator) saw within its TTL, and leaves all of its own prefixes warm for another
TTL. A call that lands on another deployment finds nothing: that is what cache-aware
routing avoids.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from tokenomy.sim.lru import LRU

#: (digest of the prompt up to a boundary, tokens up to it).
Prefix = tuple[bytes, int]

#: Anthropic's ``cache_control`` ``ttl: "1h"``.
ONE_HOUR_S = 3600.0
#: OpenAI's ``prompt_cache_retention: "24h"``.
ONE_DAY_S = 86_400.0


def chain(
    head: Any, messages: Iterable[Any], tokens_of: Callable[[bytes, Any], int]
) -> list[Prefix]:
    """The prompt's prefixes: ``head`` (tools and system) and then each message, with the
    token count up to each boundary (``tokens_of(digest, message)`` counts one message)."""
    h = hashlib.blake2b(orjson.dumps(head), digest_size=16).digest()
    out: list[Prefix] = []
    total = 0
    for m in messages:
        h = hashlib.blake2b(h + orjson.dumps(m), digest_size=16).digest()
        total += tokens_of(h, m)
        out.append((h, total))
    return out


class PrefixCache:
    """Warm prefixes by deployment: ``(deployment, prefix digest) → warm until``."""

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._warm: LRU[tuple[str, bytes], float] = LRU(capacity)

    def read(self, deployment: str, prefixes: Sequence[Prefix]) -> int:
        """Tokens of the longest prefix ``deployment`` holds warm (0: none)."""
        now = self.clock()
        for digest, tokens in reversed(prefixes):
            until = self._warm.get((deployment, digest))
            if until is not None and until > now:
                return tokens
        return 0

    def write(self, deployment: str, prefixes: Sequence[Prefix], ttl_s: float) -> None:
        """Leave every prefix warm for ``ttl_s`` more seconds (a hit refreshes too)."""
        until = self.clock() + ttl_s
        for digest, _ in prefixes:
            self._warm.put((deployment, digest), until)

    def clear(self) -> None:
        self._warm.clear()
