"""Everything the simulator remembers, held on the app (never in module globals)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tokenomy.sim.answer import Answer, Ask, make_answer
from tokenomy.sim.counting import Counter
from tokenomy.sim.faults import Fault, FaultScript, next_fault
from tokenomy.sim.lru import LRU
from tokenomy.sim.prefix_cache import Prefix, PrefixCache, chain
from tokenomy.sim.settings import SimSettings
from tokenomy.sim.toolcalls import content_text

#: Bound on memoised answers; benchmarks repeat a few prompts, tests a few dozen.
_ANSWER_ENTRIES = 2048
#: OpenAI reports cache hits in whole blocks; the sim uses 64-token blocks.
CACHE_BLOCK = 64


@dataclass(frozen=True, slots=True)
class PromptUsage:
    """Prompt tokens of one request, and how many of them were read from the prompt cache."""

    tokens: int
    cached: int
    first_seen: bool
    #: Long enough to be cached (``cache_min_tokens``); ``cached`` is 0 on a first sight.
    cacheable: bool


class Stats:
    """Requests served per model and outcome ("200", "429", "timeout", "disconnect", ...)."""

    def __init__(self) -> None:
        self._counts: dict[str, dict[str, int]] = {}

    def record(self, model: str, outcome: str) -> None:
        per_model = self._counts.setdefault(model, {})
        per_model[outcome] = per_model.get(outcome, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        models = {m: dict(c) for m, c in self._counts.items()}
        return {"total": sum(sum(c.values()) for c in models.values()), "models": models}

    def clear(self) -> None:
        self._counts.clear()


@dataclass
class SimState:
    """The simulator's memory: settings, counter, fault script, stats and bounded caches."""

    settings: SimSettings
    counter: Counter
    script: FaultScript = field(default_factory=FaultScript)
    stats: Stats = field(default_factory=Stats)
    rng: random.Random = field(init=False)
    prompts: LRU[tuple[str, bytes], int] = field(init=False)
    answers: LRU[tuple[Ask, int], Answer] = field(init=False)
    #: Each deployment's (upstream model's) warm prompt prefixes.
    prefixes: PrefixCache = field(init=False)
    #: Tokens of one message, by the digest of the prompt up to and including it.
    message_tokens: LRU[bytes, int] = field(init=False)
    ids: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.settings.seed)
        self.prompts = LRU(self.settings.cache_entries)
        self.answers = LRU(_ANSWER_ENTRIES)
        # An agent's prompt is a prefix per message: room for many messages per prompt.
        self.prefixes = PrefixCache(self.settings.cache_entries * 16)
        self.message_tokens = LRU(self.settings.cache_entries * 16)

    def next_id(self) -> str:
        """A response id unique within this app (24 hex digits, like the vendors' ids)."""
        self.ids += 1
        return f"{self.settings.seed & 0xFFFF:04x}{self.ids:020x}"

    def fault(self, model: str) -> Fault | None:
        return next_fault(self.script, self.rng, self.settings, model)

    def answer(self, ask: Ask, index: int) -> Answer:
        """The answer to ``ask`` (memoised: generating and counting is the sim's main cost)."""
        key = (ask, index)
        found = self.answers.get(key)
        if found is None:
            found = make_answer(self.settings, self.counter, ask, index)
            self.answers.put(key, found)
        return found

    def prompt_usage(
        self,
        model: str,
        digest: bytes,
        count: Callable[[], int],
        prefixes: Callable[[], list[Prefix]] | None = None,
        ttl_s: float | None = None,
    ) -> PromptUsage:
        """Prompt tokens for ``digest`` (``count()`` is called only on first sight), and hits.

        The deployment (``model``) reads the longest prefix it saw within the cache's TTL,
        of the prompt's ``prefixes()`` (asked only for a prompt long enough to cache) and
        the whole prompt, in whole 64-token blocks when that is at least
        ``cache_min_tokens``; the prompt's prefixes then stay warm for ``ttl_s`` (default
        ``cache_ttl_s``).
        """
        key = (model, digest)
        tokens = self.prompts.get(key)
        first_seen = tokens is None
        if tokens is None:
            tokens = count()
            self.prompts.put(key, tokens)
        cacheable = tokens >= self.settings.cache_min_tokens
        cached = 0
        if cacheable:
            every = [*(prefixes() if prefixes is not None else ()), (digest, tokens)]
            hit = min(self.prefixes.read(model, every), tokens)
            if hit >= self.settings.cache_min_tokens:
                cached = hit // CACHE_BLOCK * CACHE_BLOCK
            self.prefixes.write(model, every, ttl_s or self.settings.cache_ttl_s)
        return PromptUsage(tokens, cached, first_seen, cacheable)

    def chain(self, model: str, head: Any, messages: list[Any]) -> list[Prefix]:
        """The prompt's prefixes at message boundaries (see ``prefix_cache.chain``)."""

        def tokens_of(digest: bytes, m: Any) -> int:
            n = self.message_tokens.get(digest)
            if n is None:
                text = content_text(m.get("content")) if isinstance(m, dict) else ""
                n = 3 + self.counter.count_text(model, text)
                self.message_tokens.put(digest, n)
            return n

        return chain(head, messages, tokens_of)


STATE = web.AppKey("tokenomy_sim_state", SimState)
