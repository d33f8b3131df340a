"""Usage objects as each kind of vendor reports them.

Styles (per upstream model, from ``SimSettings.usage_styles``):

- ``openai``: full usage with ``prompt_tokens_details.cached_tokens`` and
  ``completion_tokens_details.reasoning_tokens``; streamed only when
  ``stream_options.include_usage`` is set, on a final chunk with ``choices: []``.
- ``inline``: the same object, streamed on the last chunk that still has choices, always
  (as several OpenAI-compatible vendors do).
- ``deepseek``: adds ``prompt_cache_hit_tokens``/``prompt_cache_miss_tokens``; models whose
  name contains "reasoner" think first (``reasoning_content``).
- ``none``: never reports usage.
"""

from __future__ import annotations

from typing import Any

from tokenomy.sim.state import CACHE_BLOCK, PromptUsage


def openai_usage(
    style: str, prompt: PromptUsage, completion_tokens: int, reasoning_tokens: int
) -> dict[str, Any] | None:
    """The usage object for ``style``, or None for "none"."""
    if style == "none":
        return None
    usage: dict[str, Any] = {
        "prompt_tokens": prompt.tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt.tokens + completion_tokens,
    }
    if style == "deepseek":
        usage["prompt_tokens_details"] = {"cached_tokens": prompt.cached}
        usage["prompt_cache_hit_tokens"] = prompt.cached
        usage["prompt_cache_miss_tokens"] = prompt.tokens - prompt.cached
        if reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        return usage
    usage["prompt_tokens_details"] = {"cached_tokens": prompt.cached, "audio_tokens": 0}
    usage["completion_tokens_details"] = {
        "reasoning_tokens": reasoning_tokens,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    }
    return usage


def anthropic_usage(
    prompt: PromptUsage, output_tokens: int, cache_write: bool, one_hour: bool = False
) -> dict[str, Any]:
    """Anthropic's usage: ``input_tokens`` excludes cache reads and writes.

    A long prompt that asked for caching (``cache_control``) writes what the deployment's
    cache did not hold yet (in whole blocks), as Anthropic bills it, to the one-hour cache
    when its ``cache_control`` said ``ttl: "1h"``; what it held is read.
    """
    written = 0
    if cache_write and prompt.cacheable:
        written = max(0, prompt.tokens // CACHE_BLOCK * CACHE_BLOCK - prompt.cached)
    return {
        "input_tokens": prompt.tokens - prompt.cached - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": prompt.cached,
        "cache_creation": {
            "ephemeral_5m_input_tokens": 0 if one_hour else written,
            "ephemeral_1h_input_tokens": written if one_hour else 0,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }
