"""Streams: OpenAI ``chat.completion.chunk`` dicts <-> Anthropic ``(event, data)`` pairs.

Each translator is a small state machine, one per response: feed it upstream events in
order and write out what it returns, in order. No I/O happens here; SSE framing and
``[DONE]`` belong to the HTTP layer.

What is lost: thinking signatures (OpenAI chunks have no place for them); choices other
than the first; and OpenAI tool-call deltas that return to an earlier tool after a later
one has started (Anthropic blocks are sequential) are sent with their block's original
index after its ``content_block_stop`` -- the official SDKs accumulate them correctly, but
a client that ignores deltas for closed blocks will miss them.
"""

from __future__ import annotations

import json
from typing import Any

from tokenomy.core.usage import Usage, openai_chunk_usage
from tokenomy.providers.translate_content import JSON, as_object
from tokenomy.providers.translate_response import (
    anthropic_stop_reason,
    anthropic_usage,
    openai_finish_reason,
    reasoning_text,
    usage_from_anthropic,
)

Event = tuple[str, dict[str, Any]]
# An open Anthropic block: ("text" | "thinking", None) or ("tool", the OpenAI tool key).
_BlockKey = tuple[str, int | str | None]


class OpenAIToAnthropicStream:
    """Feeds OpenAI chat.completion.chunk dicts, yields Anthropic (event_name, data) pairs.

    Events come in the real Anthropic order: message_start, then each content block as
    start/delta.../stop, then (from :meth:`finish`) message_delta and message_stop.
    """

    def __init__(self, *, model: str, message_id: str, input_tokens_hint: int = 0) -> None:
        self._model = model
        self._message_id = message_id
        self._hint = input_tokens_hint
        self._started = False
        self._finished = False
        self._open: tuple[_BlockKey, int] | None = None
        self._next_index = 0
        self._tools: dict[int | str, int] = {}  # OpenAI tool key -> Anthropic block index
        self._finish_reason: str | None = None
        self._usage: Usage | None = None

    @property
    def usage(self) -> Usage | None:
        """The last usage the upstream reported (OpenAI's figures are cumulative too)."""
        return self._usage

    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """Events for one upstream chunk; message_start comes with the first one."""
        if self._finished or not isinstance(chunk, dict):
            return []
        raw_usage = openai_chunk_usage(chunk)
        if raw_usage is not None:
            # Usage may ride on the final empty-choices chunk, on a chunk with choices, or
            # inside the finishing choice (Kimi).
            self._usage = Usage.from_openai(raw_usage)
        events = self._start()
        if chunk.get("error"):
            return events + self._error(chunk["error"])
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # Anthropic has one choice; n > 1 is refused at request time
            delta = choice.get("delta")
            if isinstance(delta, dict):
                events += self._delta(delta)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                events += self._close()
        return events

    def finish(self, usage: Usage | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Close open blocks, then message_delta (stop_reason, usage) and message_stop.

        ``usage``, when given, overrides the upstream's (the gateway passes its own count
        when the upstream sent none). Idempotent, and empty after an error event.
        """
        if self._finished:
            return []
        events = self._start() + self._close()
        final = usage or self._usage or Usage(input_tokens=self._hint)
        tool_called = bool(self._tools)
        delta = {
            "stop_reason": anthropic_stop_reason(self._finish_reason, tool_called=tool_called),
            "stop_sequence": None,
        }
        events.append(
            (
                "message_delta",
                {"type": "message_delta", "delta": delta, "usage": anthropic_usage(final)},
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        self._finished = True
        return events

    def _start(self) -> list[Event]:
        if self._started:
            return []
        self._started = True
        known = self._usage
        # Only input is known this early; the true totals follow in message_delta.
        usage = (
            Usage(input_tokens=known.input_tokens, cached_tokens=known.cached_tokens)
            if known
            else Usage(input_tokens=self._hint)
        )
        message: JSON = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": anthropic_usage(usage),
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _delta(self, delta: JSON) -> list[Event]:
        events: list[Event] = []
        thinking = reasoning_text(delta)
        if thinking:
            events += self._text_like("thinking", thinking)
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                events += self._text_like("text", text)
        calls = delta.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else []):
            if isinstance(call, dict):
                events += self._tool_delta(call, position)
        return events

    def _text_like(self, kind: str, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open is None or self._open[0][0] != kind:
            block: JSON = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            events += self._begin((kind, None), block)
        delta = {"type": "text_delta", "text": text}
        if kind == "thinking":
            delta = {"type": "thinking_delta", "thinking": text}
        assert self._open is not None
        events.append(_block_delta(self._open[1], delta))
        return events

    def _tool_delta(self, call: JSON, position: int) -> list[Event]:
        key = self._tool_key(call, position)
        fn = as_object(call.get("function"))
        events: list[Event] = []
        index = self._tools.get(key)
        if index is None:
            call_id = call.get("id")
            block: JSON = {
                "type": "tool_use",
                "id": call_id if call_id else f"toolu_{self._message_id}_{len(self._tools)}",
                "name": fn.get("name") or "",
                "input": {},
            }
            events += self._begin(("tool", key), block)
            index = self._tools[key] = self._next_index - 1
        args = fn.get("arguments")
        if isinstance(args, dict):  # a few vendors send an object, not a JSON string
            args = json.dumps(args, ensure_ascii=False, separators=(",", ":"))
        if isinstance(args, str) and args:
            events.append(_block_delta(index, {"type": "input_json_delta", "partial_json": args}))
        return events

    def _tool_key(self, call: JSON, position: int) -> int | str:
        index = call.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            return index
        call_id = call.get("id")
        if isinstance(call_id, str) and call_id:
            return f"id:{call_id}"
        # No index and no id: a continuation of the tool call being streamed, if any.
        if self._open is not None and self._open[0][0] == "tool" and self._open[0][1] is not None:
            return self._open[0][1]
        return position

    def _begin(self, key: _BlockKey, block: JSON) -> list[Event]:
        events = self._close()
        index = self._next_index
        self._next_index += 1
        self._open = (key, index)
        start = {"type": "content_block_start", "index": index, "content_block": block}
        events.append(("content_block_start", start))
        return events

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        index = self._open[1]
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _error(self, error: Any) -> list[Event]:
        self._finished = True  # Anthropic streams end at an error event, without message_stop
        err = error if isinstance(error, dict) else {"message": str(error)}
        message = err.get("message") if isinstance(err.get("message"), str) else "upstream error"
        hint = f"{err.get('type', '')} {err.get('code', '')}".lower()
        etype = "api_error"
        if "rate_limit" in hint:
            etype = "rate_limit_error"
        elif "overload" in hint:
            etype = "overloaded_error"
        return [("error", {"type": "error", "error": {"type": etype, "message": message}})]


def _block_delta(index: int, delta: JSON) -> Event:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


class AnthropicToOpenAIStream:
    """Feeds Anthropic (event_name, data) pairs, yields OpenAI chunk dicts."""

    def __init__(
        self, *, model: str, completion_id: str, created: int, include_usage: bool
    ) -> None:
        self._model = model
        self._id = completion_id
        self._created = created
        self._include_usage = include_usage
        self._tool_ordinal: dict[int, int] = {}  # Anthropic block index -> OpenAI tool index
        self._start_usage: JSON = {}
        self._delta_usage: JSON = {}
        self._stop_reason: str | None = None
        self._done = False
        self._override: Usage | None = None

    @property
    def usage(self) -> Usage | None:
        """Latest known usage: message_start's, overlaid by the last (cumulative) message_delta
        (or the gateway's own count, once given)."""
        if self._override is not None:
            return self._override
        if not self._start_usage and not self._delta_usage:
            return None
        return usage_from_anthropic(self.reported_usage())

    @property
    def reported_output(self) -> bool:
        """Whether the upstream reported its output count (message_start's is a placeholder)."""
        return "output_tokens" in self._delta_usage

    def reported_usage(self) -> JSON:
        """The upstream's usage fields as reported so far (Anthropic's shape)."""
        return {**self._start_usage, **self._delta_usage}

    def override_usage(self, usage: Usage) -> None:
        """Report ``usage`` (the gateway's count, for an upstream that gave none) instead."""
        self._override = usage

    def feed(self, event: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        """Chunks for one upstream event; message_stop yields the finish (and usage) chunks."""
        if self._done or not isinstance(data, dict):
            return []
        kind = event or data.get("type")
        if kind == "message_start":
            message = data.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            self._start_usage = _present(usage)
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self._stop_reason = delta["stop_reason"]
            if isinstance(data.get("usage"), dict):
                self._delta_usage = _present(data["usage"])  # cumulative: replace, never add
            return []
        if kind == "message_stop":
            return self.finish()
        if kind == "error":
            return self._error(data.get("error"))
        return []  # ping, content_block_stop and unknown events carry nothing for OpenAI

    def finish(self) -> list[dict[str, Any]]:
        """The finish chunk and, with include_usage, the usage chunk (``choices: []``).

        Called by feed on message_stop; the gateway may call it to close a stream cut short.
        Idempotent.
        """
        if self._done:
            return []
        self._done = True
        chunks = [self._chunk({}, finish_reason=openai_finish_reason(self._stop_reason))]
        if self._include_usage:
            usage = (self.usage or Usage()).to_openai()
            chunks.append({**self._envelope(), "choices": [], "usage": usage})
        return chunks

    def _block_start(self, data: JSON) -> list[JSON]:
        block = data.get("content_block")
        if not isinstance(block, dict):
            return []
        kind = block.get("type")
        if kind == "tool_use":
            ordinal = self._tool_ordinal.setdefault(_index(data), len(self._tool_ordinal))
            call = {
                "index": ordinal,
                "id": block.get("id", ""),
                "type": "function",
                "function": {"name": block.get("name", ""), "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if kind == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if kind == "thinking" and block.get("thinking"):
            return [self._chunk({"reasoning_content": block["thinking"]})]
        return []  # redacted thinking and server-tool blocks have no OpenAI form

    def _block_delta(self, data: JSON) -> list[JSON]:
        delta = data.get("delta")
        kind = delta.get("type") if isinstance(delta, dict) else None
        if kind == "text_delta" and delta and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "thinking_delta" and delta and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        ordinal = self._tool_ordinal.get(_index(data))
        if (
            kind == "input_json_delta"
            and delta
            and delta.get("partial_json")
            and ordinal is not None
        ):
            call = {"index": ordinal, "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        return []  # signature and citation deltas have no OpenAI form

    def _error(self, error: Any) -> list[JSON]:
        # The OpenAI SDKs raise APIError on a data line holding an "error" object.
        self._done = True
        err = error if isinstance(error, dict) else {}
        body = {
            "message": err.get("message") or "upstream stream error",
            "type": err.get("type") or "api_error",
            "param": None,
            "code": None,
        }
        return [{"error": body}]

    def _envelope(self) -> JSON:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }

    def _chunk(self, delta: JSON, *, finish_reason: str | None = None) -> JSON:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk = {**self._envelope(), "choices": [choice]}
        if self._include_usage:
            chunk["usage"] = None  # as OpenAI does on every chunk but the usage one
        return chunk


def _present(usage: Any) -> JSON:
    return {k: v for k, v in usage.items() if v is not None} if isinstance(usage, dict) else {}


def _index(data: JSON) -> int:
    index = data.get("index")
    return index if isinstance(index, int) else -1
