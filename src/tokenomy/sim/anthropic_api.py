"""``POST /v1/messages``: Anthropic's Messages dialect, plain and streamed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tokenomy.sim import sse
from tokenomy.sim.answer import Answer, Ask
from tokenomy.sim.errors import Dialect
from tokenomy.sim.gate import bad_request, int_field, meet_fault, model_of, read_body
from tokenomy.sim.openai_stream import group_pieces
from tokenomy.sim.prefix_cache import ONE_HOUR_S
from tokenomy.sim.state import STATE
from tokenomy.sim.text import split_even, split_pieces
from tokenomy.sim.toolcalls import ToolChoice, ToolSpec, choose_tool, content_text
from tokenomy.sim.usage import anthropic_usage

_D = Dialect.ANTHROPIC
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_ROLES = ("user", "assistant")
_ARG_PIECE_CHARS = 12


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """The parts of a Messages request the simulation acts on."""

    ask: Ask
    stream: bool
    cache_write: bool
    #: A ``cache_control`` asked for the one-hour cache.
    one_hour: bool = False
    head: Any = None


async def messages(request: web.Request) -> web.StreamResponse:
    """Answer a Messages request, as a message or as Anthropic's event stream."""
    state = request.app[STATE]
    body = await read_body(request, _D)
    req = parse_messages(request, body)
    model = req.ask.model
    plan = await meet_fault(request, _D, model, req.stream)
    prompt = state.prompt_usage(
        model,
        req.ask.prompt,
        lambda: state.counter.count_anthropic_request(model, body),
        lambda: state.chain(model, req.head, body["messages"]),
        ONE_HOUR_S if req.one_hour else None,
    )
    answer = state.answer(req.ask, 0)
    usage = anthropic_usage(prompt, answer.output_tokens, req.cache_write, req.one_hour)
    message: dict[str, Any] = {
        "id": "msg_sim" + state.next_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
    }
    if not req.stream:
        await sse.wait_generation(request, plan, answer.output_tokens)
        message["content"] = _content(answer)
        message["stop_reason"] = _STOP_REASONS[answer.finish]
        message["stop_sequence"] = answer.stop_sequence
        message["usage"] = usage
        return web.Response(body=orjson.dumps(message), content_type="application/json")
    events = _events(message, answer, usage, state.settings.stream_chunk_words)
    resp = await sse.open_stream(request, {})
    await sse.send_events(request, resp, events, plan)
    return resp


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages/count_tokens``: the prompt's input tokens."""
    state = request.app[STATE]
    body = await read_body(request, _D)
    model = model_of(request, body, _D)
    _check_messages(body)
    tokens = state.counter.count_anthropic_request(model, body)
    return web.Response(
        body=orjson.dumps({"input_tokens": tokens}), content_type="application/json"
    )


def parse_messages(request: web.Request, body: dict[str, Any]) -> MessagesRequest:
    """Validate a Messages request (400 in Anthropic's format when it is wrong)."""
    model = model_of(request, body, _D)
    if body.get("max_tokens") is None:
        raise bad_request(_D, "max_tokens: Field required")
    max_tokens = int_field(body, "max_tokens", _D)
    messages = _check_messages(body)
    stops = body.get("stop_sequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request(_D, "stop_sequences: Input should be a valid list of strings")
    tools = _tools(body)
    tool = choose_tool(tools, _tool_choice(body, tools), _last_user_text(messages))
    seen = orjson.dumps([body.get("system"), messages, body.get("tools")])
    ask = Ask(
        model=model,
        prompt=hashlib.blake2b(seen, digest_size=16).digest(),
        max_tokens=max_tokens,
        stops=tuple(stops),
        tool_name=tool.name if tool else None,
        tool_schema=orjson.dumps(tool.schema) if tool else b"{}",
        lead_text=True,
    )
    return MessagesRequest(
        ask,
        body.get("stream") is True,
        b'"cache_control"' in seen,
        one_hour=b'"ttl":"1h"' in seen,
        head=[body.get("tools"), body.get("system")],
    )


def _check_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request(_D, "messages: Field required (a non-empty list)")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise bad_request(_D, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if not isinstance(m.get("content"), str | list):
            raise bad_request(_D, f"messages.{i}.content: Field required")
    return messages


def _tools(body: dict[str, Any]) -> list[ToolSpec]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise bad_request(_D, "tools: Input should be a valid list")
    specs = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise bad_request(_D, f"tools.{i}.name: Field required")
        schema = tool.get("input_schema")
        specs.append(ToolSpec(tool["name"], schema if isinstance(schema, dict) else {}))
    return specs


def _tool_choice(body: dict[str, Any], tools: list[ToolSpec]) -> ToolChoice:
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if choice is None or kind == "auto":
        return ToolChoice()
    if kind == "none":
        return ToolChoice(mode="none")
    if kind == "any":
        return ToolChoice(mode="required")
    name = choice.get("name") if isinstance(choice, dict) else None
    if kind != "tool" or not isinstance(name, str) or all(t.name != name for t in tools):
        raise bad_request(_D, "tool_choice: must be auto, any, none, or a tool in tools")
    return ToolChoice(mode="required", name=name)


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user turn; empty after a tool result, so "auto" answers in text."""
    last = messages[-1].get("content") if messages else None
    if isinstance(last, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in last
    ):
        return ""
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def _content(a: Answer) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if a.text or a.tool_call is None:
        blocks.append({"type": "text", "text": a.text})
    if a.tool_call is not None:
        call = a.tool_call
        blocks.append(
            {
                "type": "tool_use",
                "id": "toolu_" + call.id,
                "name": call.name,
                "input": orjson.loads(call.arguments),
            }
        )
    return blocks


def _events(
    message: dict[str, Any], a: Answer, usage: dict[str, Any], size: int
) -> list[sse.Event]:
    """message_start, ping, each block's start/deltas/stop, message_delta, message_stop."""
    frame = sse.named_frame
    # message_start reports output_tokens 1; message_delta the cumulative final count.
    opening = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    head = [(frame(b"message_start", {"type": "message_start", "message": opening}), 0.0)]
    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    if a.text or a.tool_call is None:
        texts = group_pieces(split_pieces(a.text), size)
        deltas = [{"type": "text_delta", "text": t} for t in texts]
        blocks.append(({"type": "text", "text": ""}, deltas))
    if a.tool_call is not None:
        call = a.tool_call
        block = {"type": "tool_use", "id": "toolu_" + call.id, "name": call.name, "input": {}}
        parts = ["", *split_even(call.arguments, _ARG_PIECE_CHARS)]
        blocks.append((block, [{"type": "input_json_delta", "partial_json": p} for p in parts]))
    weight = a.output_tokens / max(1, sum(len(d) for _, d in blocks))
    body: list[sse.Event] = []
    for index, (block, deltas) in enumerate(blocks):
        start = {"type": "content_block_start", "index": index, "content_block": block}
        body.append((frame(b"content_block_start", start), 0.0))
        if index == 0:
            body.append((frame(b"ping", {"type": "ping"}), 0.0))
        for delta in deltas:
            event = {"type": "content_block_delta", "index": index, "delta": delta}
            body.append((frame(b"content_block_delta", event), weight))
        stop = {"type": "content_block_stop", "index": index}
        body.append((frame(b"content_block_stop", stop), 0.0))
    final = {
        "type": "message_delta",
        "delta": {"stop_reason": _STOP_REASONS[a.finish], "stop_sequence": a.stop_sequence},
        "usage": {k: v for k, v in usage.items() if k != "service_tier"},
    }
    tail = [
        (frame(b"message_delta", final), 0.0),
        (frame(b"message_stop", {"type": "message_stop"}), 0.0),
    ]
    return head + body + tail
