"""Metering: the vendor's usage when it reported one, else our own count of what flowed.

Counting needs the prompt (from the request body) and the produced text (collected by the
relay). The vendor's count always wins when it is present, because it is what the vendor
bills; ours is the fallback for cut-off streams, gone clients and silent vendors.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenomy.core.call import CHAT_BODIES, Call
from tokenomy.core.tokencount import TokenCounter
from tokenomy.core.usage import Usage, UsageSource


def count_prompt(counter: TokenCounter, call: Call) -> int:
    model = call.deployment.upstream_model if call.deployment else call.model
    b = call.body
    if call.endpoint == "messages":
        return counter.count_anthropic_request(model, b)
    if call.endpoint in CHAT_BODIES:
        return counter.count_messages(model, b.get("messages") or [], b.get("tools"))
    inp = b.get("prompt") if call.endpoint == "completions" else b.get("input")
    texts = [inp] if isinstance(inp, str) else [x for x in (inp or []) if isinstance(x, str)]
    # Pre-tokenised input (lists of ints) is already counted.
    ints = sum(len(x) for x in (inp or []) if isinstance(x, list)) if isinstance(inp, list) else 0
    return sum(counter.count_text(model, t) for t in texts) + ints


def counted_usage(counter: TokenCounter, call: Call) -> Usage:
    """Usage from our own tokenizer: the whole prompt, and the output seen so far."""
    model = call.deployment.upstream_model if call.deployment else call.model
    out = "".join(call.output_text)
    return Usage(
        input_tokens=count_prompt(counter, call),
        output_tokens=counter.count_text(model, out) if out else 0,
        source=UsageSource.COUNTED,
    )


def openai_chunk_text(data: bytes) -> str:
    """The text an OpenAI stream chunk carries (content, reasoning and tool arguments)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ""
    parts: list[str] = []
    for ch in obj.get("choices") or ():
        d = ch.get("delta") or {}
        _message_text(d, parts)
        if isinstance(ch.get("text"), str):  # legacy completions
            parts.append(ch["text"])
    return "".join(parts)


def anthropic_delta_text(data: bytes) -> str:
    try:
        d = orjson.loads(data).get("delta") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return str(d.get("text") or d.get("partial_json") or d.get("thinking") or "")


def openai_response_text(obj: dict[str, Any]) -> str:
    parts: list[str] = []
    for ch in obj.get("choices") or ():
        _message_text(ch.get("message") or {}, parts)
        if isinstance(ch.get("text"), str):
            parts.append(ch["text"])
    return "".join(parts)


def anthropic_response_text(obj: dict[str, Any]) -> str:
    parts: list[str] = []
    for block in obj.get("content") or ():
        if block.get("type") == "text":
            parts.append(str(block.get("text") or ""))
        elif block.get("type") == "thinking":
            parts.append(str(block.get("thinking") or ""))
        elif block.get("type") == "tool_use":
            parts.append(block.get("name") or "")
            parts.append(orjson.dumps(block.get("input") or {}).decode())
    return "".join(parts)


def _message_text(m: dict[str, Any], parts: list[str]) -> None:
    # Reasoning is "reasoning_content" (DeepSeek, Qwen, Kimi) or "reasoning" (vLLM,
    # OpenRouter); some servers send both with the same text, so count it once.
    for k in ("reasoning_content", "reasoning"):
        v = m.get(k)
        if isinstance(v, str) and v:
            parts.append(v)
            break
    for k in ("content", "refusal"):
        v = m.get(k)
        if isinstance(v, str):
            parts.append(v)
    for tc in m.get("tool_calls") or ():
        fn = tc.get("function") or {}
        parts.append(str(fn.get("name") or ""))
        parts.append(str(fn.get("arguments") or ""))
