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
from tokenomy.sim.settings import SimSettings

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
    ids: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.settings.seed)
        self.prompts = LRU(self.settings.cache_entries)
        self.answers = LRU(_ANSWER_ENTRIES)

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

    def prompt_usage(self, model: str, digest: bytes, count: Callable[[], int]) -> PromptUsage:
        """Prompt tokens for ``digest`` (``count()`` is called only on first sight), and hits.

        A prompt of at least ``cache_min_tokens`` seen before is a cache hit on its whole
        64-token blocks; real caches match prefixes, which whole prompts are a case of.
        """
        key = (model, digest)
        tokens = self.prompts.get(key)
        first_seen = tokens is None
        if tokens is None:
            tokens = count()
            self.prompts.put(key, tokens)
        cacheable = tokens >= self.settings.cache_min_tokens
        cached = tokens // CACHE_BLOCK * CACHE_BLOCK if cacheable and not first_seen else 0
        return PromptUsage(tokens, cached, first_seen, cacheable)


STATE = web.AppKey("tokenomy_sim_state", SimState)
