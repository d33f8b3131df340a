"""Conversation translation: OpenAI ``messages`` <-> Anthropic ``system`` + ``messages``.

OpenAI puts system prompts, tool results and turns in one list; Anthropic takes the system
prompt at the top level, tool results as ``tool_result`` blocks inside a user turn, and
expects user and assistant turns to alternate. Both directions live here.
"""

from __future__ import annotations

from typing import Any

from tokenomy.core.errors import InvalidRequest
from tokenomy.providers.translate_content import (
    JSON,
    anthropic_tool_id,
    anthropic_user_part,
    arguments_to_input,
    input_to_arguments,
    openai_text_blocks,
    openai_user_blocks,
    text_of,
)

# --- OpenAI -> Anthropic --------------------------------------------------------------------


def openai_messages_to_anthropic(messages: Any) -> tuple[list[JSON], list[JSON]]:
    """OpenAI messages as (Anthropic system text blocks, alternating Anthropic messages).

    System and developer messages, wherever they appear, are gathered into the top-level
    system prompt (their position in the conversation is lost); tool messages become
    ``tool_result`` blocks; consecutive turns of the same role are merged into one.
    """
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    system: list[JSON] = []
    turns: list[JSON] = []
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"{param} must be an object", param=param)
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(openai_text_blocks(msg.get("content"), param=f"{param}.content"))
        elif role == "user":
            blocks = openai_user_blocks(msg.get("content"), param=f"{param}.content")
            _append_turn(turns, "user", blocks)
        elif role == "assistant":
            _append_turn(turns, "assistant", _assistant_blocks(msg, param=param))
        elif role == "tool":
            _append_turn(turns, "user", [_tool_result_block(msg, param=param)])
        else:
            raise InvalidRequest(f"message role {role!r} is not supported", param=f"{param}.role")
    return system, [_finish_turn(turn) for turn in turns]


def _append_turn(turns: list[JSON], role: str, blocks: list[JSON]) -> None:
    if not blocks:
        return  # an empty turn would be rejected; dropping it lets its neighbours merge
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": list(blocks)})


def _finish_turn(turn: JSON) -> JSON:
    blocks: list[JSON] = turn["content"]
    if turn["role"] == "user":
        # Anthropic wants tool_result blocks before any other content of the user turn.
        blocks = [b for b in blocks if b["type"] == "tool_result"] + [
            b for b in blocks if b["type"] != "tool_result"
        ]
    if len(blocks) == 1 and blocks[0].keys() == {"type", "text"}:
        return {"role": turn["role"], "content": blocks[0]["text"]}
    return {"role": turn["role"], "content": blocks}


def _assistant_blocks(msg: JSON, *, param: str) -> list[JSON]:
    blocks = _signed_thinking_blocks(msg.get("thinking_blocks"))
    # reasoning_content without a signature cannot be replayed to Anthropic, so it is dropped.
    blocks += openai_text_blocks(msg.get("content"), param=f"{param}.content")
    refusal = msg.get("refusal")
    if isinstance(refusal, str) and refusal and not blocks:
        blocks.append({"type": "text", "text": refusal})
    calls = msg.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest("tool_calls must be a list", param=f"{param}.tool_calls")
    for j, call in enumerate(calls):
        blocks.append(_tool_use_block(call, param=f"{param}.tool_calls[{j}]"))
    return blocks


def _signed_thinking_blocks(value: Any) -> list[JSON]:
    """Thinking blocks a client replays (LiteLLM's ``thinking_blocks`` convention).

    Only signed ones are kept: Anthropic rejects thinking it did not sign.
    """
    blocks: list[JSON] = []
    for b in value if isinstance(value, list) else []:
        if not isinstance(b, dict):
            continue
        if b.get("type") == "thinking" and b.get("signature"):
            blocks.append(
                {"type": "thinking", "thinking": b.get("thinking", ""), "signature": b["signature"]}
            )
        elif b.get("type") == "redacted_thinking" and b.get("data"):
            blocks.append({"type": "redacted_thinking", "data": b["data"]})
    return blocks


def _tool_use_block(call: Any, *, param: str) -> JSON:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise InvalidRequest("a tool call needs function.name", param=param)
    return {
        "type": "tool_use",
        "id": anthropic_tool_id(call.get("id")),
        "name": fn["name"],
        "input": arguments_to_input(fn.get("arguments")),
    }


def _tool_result_block(msg: JSON, *, param: str) -> JSON:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest("a tool message needs tool_call_id", param=f"{param}.tool_call_id")
    block: JSON = {"type": "tool_result", "tool_use_id": anthropic_tool_id(call_id)}
    content = msg.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        parts = openai_text_blocks(content, param=f"{param}.content")
        if parts:
            block["content"] = parts
    return block


# --- Anthropic -> OpenAI --------------------------------------------------------------------


def anthropic_messages_to_openai(system: Any, messages: Any) -> list[JSON]:
    """Anthropic system + messages as one OpenAI message list.

    The system prompt becomes one leading system message (text blocks joined by a blank
    line); each ``tool_result`` block becomes a tool message placed before the rest of its
    user turn, as OpenAI requires tool messages to follow the assistant's tool calls.
    """
    out: list[JSON] = []
    system_text = text_of(system, sep="\n\n", param="system")
    if system_text:
        out.append({"role": "system", "content": system_text})
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"{param} must be an object", param=param)
        role, content = msg.get("role"), msg.get("content")
        if role == "user":
            out.extend(_user_messages(content, param=f"{param}.content"))
        elif role == "assistant":
            out.append(_assistant_message(content, param=f"{param}.content"))
        else:
            raise InvalidRequest(f"message role {role!r} is not supported", param=f"{param}.role")
    return out


def _user_messages(content: Any, *, param: str) -> list[JSON]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"{param} must be a string or a list", param=param)
    tool_messages: list[JSON] = []
    parts: list[JSON] = []
    for i, block in enumerate(content):
        where = f"{param}[{i}]"
        if not isinstance(block, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        if block.get("type") == "tool_result":
            message, images = _tool_message(block, param=where)
            tool_messages.append(message)
            parts.extend(images)  # OpenAI tool messages carry text only
        else:
            parts.append(anthropic_user_part(block, param=where))
    if parts:
        tool_messages.append({"role": "user", "content": _collapse_parts(parts)})
    return tool_messages


def _collapse_parts(parts: list[JSON]) -> str | list[JSON]:
    """Text-only content as one string: the form every OpenAI-dialect vendor accepts."""
    if all(p["type"] == "text" for p in parts):
        return "\n\n".join(p["text"] for p in parts)
    return parts


def _tool_message(block: JSON, *, param: str) -> tuple[JSON, list[JSON]]:
    content = block.get("content")
    texts: list[str] = []
    images: list[JSON] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for j, item in enumerate(content):
            part = anthropic_user_part(item, param=f"{param}.content[{j}]")
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(part)
    message = {
        "role": "tool",
        "tool_call_id": block.get("tool_use_id", ""),
        "content": "\n\n".join(texts),
    }
    return message, images


def _assistant_message(content: Any, *, param: str) -> JSON:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"{param} must be a string or a list", param=param)
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[JSON] = []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "thinking":
            thoughts.append(block.get("thinking", ""))
        elif kind == "tool_use":
            calls.append(openai_tool_call(block))
        elif kind != "redacted_thinking":  # encrypted thinking has no OpenAI form
            where = f"{param}[{i}]"
            msg = f"content block type {kind!r} has no OpenAI equivalent"
            raise InvalidRequest(msg, param=where)
    message: JSON = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    if thoughts:
        # DeepSeek's thinking mode requires reasoning_content back on tool-call turns.
        message["reasoning_content"] = "".join(thoughts)
    return message


def openai_tool_call(block: JSON) -> JSON:
    """An Anthropic tool_use block as an OpenAI tool call."""
    return {
        "id": block.get("id", ""),
        "type": "function",
        "function": {
            "name": block.get("name", ""),
            "arguments": input_to_arguments(block.get("input")),
        },
    }
