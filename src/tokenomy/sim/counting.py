"""The token counter the simulator reports usage with.

The gateway's own ``TokenCounter`` is preferred so that its local counts of a cut stream
agree with the usage the simulator would have reported; a rough estimate stands in when
that module is not importable, so the simulator works on its own.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import orjson


class Counter(Protocol):
    """What the simulator needs from a tokenizer."""

    def count_text(self, model: str, text: str) -> int: ...

    def count_messages(
        self, model: str, messages: list[dict[str, Any]], tools: list[Any] | None = None
    ) -> int: ...

    def count_anthropic_request(self, model: str, body: dict[str, Any]) -> int: ...


class EstimateCounter:
    """About four characters a token: ``len(text) // 4 + 1``, the same for every model."""

    def count_text(self, model: str, text: str) -> int:
        return len(text) // 4 + 1

    def count_messages(
        self, model: str, messages: list[dict[str, Any]], tools: list[Any] | None = None
    ) -> int:
        # Three tokens of framing per message and for the reply, as OpenAI's cookbook counts.
        total = 3
        for message in messages:
            total += 3 + self.count_text(model, _content_text(message.get("content")))
            for call in message.get("tool_calls") or ():
                total += self.count_text(model, _compact(call))
        if tools:
            total += self.count_text(model, _compact(tools))
        return total

    def count_anthropic_request(self, model: str, body: dict[str, Any]) -> int:
        total = 3 + self.count_text(model, _content_text(body.get("system")))
        for message in body.get("messages") or ():
            if isinstance(message, dict):
                total += 3 + self.count_text(model, _content_text(message.get("content")))
        if body.get("tools"):
            total += self.count_text(model, _compact(body["tools"]))
        return total


def default_counter() -> Counter:
    """The gateway's ``TokenCounter`` if it imports, else :class:`EstimateCounter`."""
    try:
        module = importlib.import_module("tokenomy.core.tokencount")
        counter: Counter = module.TokenCounter()
    except Exception:  # the real one is optional: any failure means "use the estimate"
        return EstimateCounter()
    return counter


def _content_text(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a block list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, dict):
                text = block.get("text")
                parts.append(text if isinstance(text, str) else _compact(block))
            elif isinstance(block, str):
                parts.append(block)
        return "".join(parts)
    return "" if content is None else _compact(content)


def _compact(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()
