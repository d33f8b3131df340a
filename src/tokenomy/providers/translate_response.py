"""Non-streaming responses: OpenAI ``chat.completion`` <-> Anthropic ``message``.

Also home to the stop-reason, usage and id mappings that the stream translators share.
What is lost: OpenAI does not say which stop sequence fired (so ``stop`` becomes
``end_turn``, never ``stop_sequence``), and Anthropic's ``stop_sequence`` value, thinking
signatures (kept only in the non-standard ``thinking_blocks`` field) and server-tool
blocks have no place in an OpenAI completion.
"""

from __future__ import annotations

import time
import uuid
from types import MappingProxyType
from typing import Any

from tokenomy.core.usage import Usage
from tokenomy.providers.translate_content import JSON, arguments_to_input
from tokenomy.providers.translate_messages import openai_tool_call

_FINISH_TO_STOP = MappingProxyType(
    {
        "stop": "end_turn",
        "length": "max_tokens",
        "tool_calls": "tool_use",
        "function_call": "tool_use",
        "content_filter": "refusal",
    }
)
_STOP_TO_FINISH = MappingProxyType(
    {
        "end_turn": "stop",
        "stop_sequence": "stop",
        "pause_turn": "stop",
        "max_tokens": "length",
        "model_context_window_exceeded": "length",
        "tool_use": "tool_calls",
        "refusal": "content_filter",
    }
)


def anthropic_stop_reason(finish_reason: Any, *, tool_called: bool) -> str:
    """An OpenAI finish_reason as an Anthropic stop_reason.

    Some OpenAI-dialect vendors finish a tool-calling turn with ``stop``; Anthropic clients
    only run tools on ``tool_use``, so a turn that called a tool says so unless truncated.
    """
    if tool_called and finish_reason not in ("length", "content_filter"):
        return "tool_use"
    if not isinstance(finish_reason, str):
        return "end_turn"
    return _FINISH_TO_STOP.get(finish_reason, "end_turn")


def openai_finish_reason(stop_reason: Any) -> str:
    """An Anthropic stop_reason as an OpenAI finish_reason (unknown ones end normally)."""
    return _STOP_TO_FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def usage_from_anthropic(raw: Any) -> Usage:
    """Anthropic usage, with thinking tokens (``output_tokens_details``) as reasoning tokens."""
    u = raw if isinstance(raw, dict) else {}
    usage = Usage.from_anthropic(u)
    details = u.get("output_tokens_details")
    thinking = details.get("thinking_tokens") if isinstance(details, dict) else None
    if isinstance(thinking, int) and not isinstance(thinking, bool) and thinking > 0:
        usage.reasoning_tokens = min(thinking, usage.output_tokens)
    return usage


def anthropic_usage(usage: Usage) -> JSON:
    """Usage as an Anthropic usage object, reasoning tokens included when known."""
    out = usage.to_anthropic()
    if usage.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return out


def anthropic_message_id(openai_id: Any) -> str:
    """``chatcmpl-abc`` -> ``msg_abc``; a fresh id when the vendor sent none."""
    if isinstance(openai_id, str) and openai_id:
        return "msg_" + openai_id.removeprefix("chatcmpl-")
    return "msg_" + uuid.uuid4().hex


def openai_completion_id(anthropic_id: Any) -> str:
    """``msg_abc`` -> ``chatcmpl-abc``; a fresh id when the vendor sent none."""
    if isinstance(anthropic_id, str) and anthropic_id:
        return "chatcmpl-" + anthropic_id.removeprefix("msg_")
    return "chatcmpl-" + uuid.uuid4().hex


def reasoning_text(message: Any) -> str:
    """A message or delta's reasoning: DeepSeek's ``reasoning_content`` or ``reasoning``."""
    if not isinstance(message, dict):
        return ""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def openai_response_to_anthropic(resp: dict[str, Any], *, model: str) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic ``message`` (first choice only)."""
    message_id = anthropic_message_id(resp.get("id"))
    choices = resp.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") if isinstance(choice, dict) else None
    content = _anthropic_content(message if isinstance(message, dict) else {}, message_id)
    tool_called = any(block["type"] == "tool_use" for block in content)
    raw_usage = resp.get("usage")
    usage = Usage.from_openai(raw_usage) if isinstance(raw_usage, dict) else Usage()
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": anthropic_stop_reason(choice.get("finish_reason"), tool_called=tool_called),
        "stop_sequence": None,
        "usage": anthropic_usage(usage),
    }


def _anthropic_content(message: JSON, message_id: str) -> list[JSON]:
    blocks: list[JSON] = []
    thinking = reasoning_text(message)
    if thinking:
        # No signature exists for another vendor's reasoning; "" keeps the block well-formed.
        blocks.append({"type": "thinking", "thinking": thinking, "signature": ""})
    text = _response_text(message.get("content"))
    refusal = message.get("refusal")
    text = text or (refusal if isinstance(refusal, str) else "")
    if text:
        blocks.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for i, call in enumerate(calls if isinstance(calls, list) else []):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        call_id = call.get("id")
        blocks.append(
            {
                "type": "tool_use",
                "id": call_id
                if isinstance(call_id, str) and call_id
                else f"toolu_{message_id}_{i}",
                "name": fn.get("name") or "",
                "input": arguments_to_input(fn.get("arguments")),
            }
        )
    return blocks


def _response_text(content: Any) -> str:
    # Lenient on purpose: an odd part in a vendor's answer is not the client's error.
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return "".join(
        p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
    )


def anthropic_response_to_openai(
    resp: dict[str, Any], *, model: str, created: int | None = None
) -> dict[str, Any]:
    """An Anthropic ``message`` as an OpenAI ``chat.completion`` with one choice.

    Thinking becomes ``reasoning_content``; signed thinking is also kept in the
    non-standard ``thinking_blocks`` field (LiteLLM's convention) so that a client replaying
    it lets :mod:`translate_request` hand the signature back to Anthropic.
    """
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[JSON] = []
    signed: list[JSON] = []
    content = resp.get("content")
    for block in content if isinstance(content, list) else []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append(openai_tool_call(block))
        elif kind == "thinking":
            thoughts.append(block.get("thinking", ""))
            if block.get("signature"):
                signed.append({k: block[k] for k in ("type", "thinking", "signature")})
        elif kind == "redacted_thinking":
            signed.append({"type": "redacted_thinking", "data": block.get("data", "")})
    message: JSON = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if signed:
        message["thinking_blocks"] = signed
    return {
        "id": openai_completion_id(resp.get("id")),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": openai_finish_reason(resp.get("stop_reason")),
            }
        ],
        "usage": usage_from_anthropic(resp.get("usage")).to_openai(),
    }
