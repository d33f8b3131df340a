"""One normalised usage record per request, whichever vendor dialect reported it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class UsageSource(StrEnum):
    """Where the token counts came from: the vendor's own report, or our tokenizer."""

    UPSTREAM = "upstream"
    COUNTED = "counted"


@dataclass(slots=True)
class Usage:
    """Token counts of one request.

    ``input_tokens`` is every prompt token, including ``cached_tokens`` (read from a prompt
    cache) and ``cache_write_tokens`` (written to one), so that uncached input is
    ``input_tokens - cached_tokens - cache_write_tokens``. ``reasoning_tokens`` is part of
    ``output_tokens``, as in OpenAI's usage object. ``cache_write_1h_tokens`` is the part
    of ``cache_write_tokens`` written to a one-hour cache (Anthropic bills it at 2x input,
    a five-minute write at 1.25x).
    """

    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    source: UsageSource = UsageSource.UPSTREAM
    cache_write_1h_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_openai(cls, u: dict[str, Any]) -> Usage:
        """Read an OpenAI-dialect usage object, DeepSeek's cache fields included."""
        prompt = _int(u.get("prompt_tokens"))
        completion = _int(u.get("completion_tokens"))
        pdet = u.get("prompt_tokens_details")
        cdet = u.get("completion_tokens_details")
        cached = _int(pdet.get("cached_tokens")) if isinstance(pdet, dict) else 0
        # DeepSeek reports cache hits in its own field next to prompt_tokens, Kimi in a
        # top-level cached_tokens.
        hits, top = u.get("prompt_cache_hit_tokens"), u.get("cached_tokens")
        if hits is not None or top is not None:
            cached = max(cached, _int(hits), _int(top))
        reasoning = _int(cdet.get("reasoning_tokens")) if isinstance(cdet, dict) else 0
        return cls(
            input_tokens=prompt,
            cached_tokens=min(cached, prompt),
            output_tokens=completion,
            reasoning_tokens=min(reasoning, completion),
        )

    @classmethod
    def from_anthropic(cls, u: dict[str, Any]) -> Usage:
        """Read Anthropic usage, whose ``input_tokens`` excludes cache reads and writes;
        ``cache_creation`` splits the writes by cache lifetime (5 minutes, 1 hour)."""
        uncached = _int(u.get("input_tokens"))
        read = _int(u.get("cache_read_input_tokens"))
        write = _int(u.get("cache_creation_input_tokens"))
        split = u.get("cache_creation")
        hour = _int(split.get("ephemeral_1h_input_tokens")) if isinstance(split, dict) else 0
        if isinstance(split, dict) and "cache_creation_input_tokens" not in u:
            write = _int(split.get("ephemeral_5m_input_tokens")) + hour
        return cls(
            input_tokens=uncached + read + write,
            cached_tokens=read,
            cache_write_tokens=write,
            output_tokens=_int(u.get("output_tokens")),
            cache_write_1h_tokens=min(hour, write),
        )

    def to_openai(self) -> dict[str, Any]:
        """This usage as an OpenAI chat-completions usage object."""
        out: dict[str, Any] = {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }
        return out

    def to_anthropic(self) -> dict[str, Any]:
        """This usage as an Anthropic usage object (input excludes cache reads and writes;
        one-hour writes, when any, split out in ``cache_creation`` as Anthropic does)."""
        out: dict[str, Any] = {
            "input_tokens": max(
                0, self.input_tokens - self.cached_tokens - self.cache_write_tokens
            ),
            "cache_creation_input_tokens": self.cache_write_tokens,
            "cache_read_input_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
        }
        if self.cache_write_1h_tokens:
            out["cache_creation"] = {
                "ephemeral_5m_input_tokens": self.cache_write_tokens - self.cache_write_1h_tokens,
                "ephemeral_1h_input_tokens": self.cache_write_1h_tokens,
            }
        return out


def openai_chunk_usage(chunk: Any) -> dict[str, Any] | None:
    """The usage object of an OpenAI-dialect stream chunk, wherever the vendor put it.

    OpenAI puts it at the top level (on a final ``choices: []`` chunk, or inline on the last
    chunk with some vendors); Kimi puts it inside the finishing choice.
    """
    if not isinstance(chunk, dict):
        return None
    u = chunk.get("usage")
    if isinstance(u, dict):
        return u
    choices = chunk.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        u = choice.get("usage") if isinstance(choice, dict) else None
        if isinstance(u, dict):
            return u
    return None


def _int(v: Any) -> int:
    """A non-negative int from a vendor field that may be missing, null or malformed."""
    if type(v) is int:  # nearly always: a plain JSON integer
        return v if v > 0 else 0
    if isinstance(v, bool) or not isinstance(v, int | float):
        return 0
    return max(0, int(v))
