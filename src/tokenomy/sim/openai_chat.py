"""``POST /v1/chat/completions``: OpenAI's chat dialect, plain and streamed."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tokenomy.sim import sse
from tokenomy.sim.answer import Answer, Ask
from tokenomy.sim.errors import Dialect
from tokenomy.sim.gate import bad_request, int_field, meet_fault, model_of, read_body, stop_field
from tokenomy.sim.openai_stream import Delta, chunk_events, group_pieces
from tokenomy.sim.prefix_cache import ONE_DAY_S
from tokenomy.sim.state import STATE, PromptUsage
from tokenomy.sim.text import split_even, split_pieces
from tokenomy.sim.toolcalls import ToolChoice, ToolSpec, choose_tool, content_text
from tokenomy.sim.usage import openai_usage

_D = Dialect.OPENAI
_ARG_PIECE_CHARS = 8  # real vendors stream a few characters of arguments per chunk
_FINGERPRINT = "fp_tokenomy_sim"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a chat request the simulation acts on."""

    ask: Ask
    n: int
    stream: bool
    include_usage: bool
    style: str
    messages: list[dict[str, Any]]
    tools: list[Any] | None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Answer a chat completion request, as JSON or as a stream of chunks."""
    state = request.app[STATE]
    body = await read_body(request, _D)
    req = parse_chat(request, body, state.settings.usage_style(str(body.get("model"))))
    model = req.ask.model
    plan = await meet_fault(request, _D, model, req.stream)
    prompt = state.prompt_usage(
        model,
        req.ask.prompt,
        lambda: state.counter.count_messages(model, req.messages, req.tools),
        lambda: state.chain(model, req.tools, req.messages),
        # OpenAI's extended prompt caching keeps a prefix for a day.
        ONE_DAY_S if body.get("prompt_cache_retention") == "24h" else None,
    )
    answers = [state.answer(req.ask, i) for i in range(req.n)]
    head = {"id": "chatcmpl-" + state.next_id(), "created": int(time.time()), "model": model}
    if not req.stream:
        await sse.wait_generation(request, plan, sum(a.output_tokens for a in answers))
        body_out = orjson.dumps(_completion(req, head, answers, prompt))
        return web.Response(body=body_out, content_type="application/json")
    resp = await sse.open_stream(request, {})
    events = _stream_events(req, head, answers, prompt, state.settings.stream_chunk_words)
    await sse.send_events(request, resp, events, plan)
    return resp


def parse_chat(request: web.Request, body: dict[str, Any], style: str) -> ChatRequest:
    """Validate a chat request (400 in OpenAI's format when it is wrong)."""
    model = model_of(request, body, _D)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request(_D, "messages must be a non-empty array", "messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise bad_request(_D, "each message must be an object with a role", "messages")
    n = int_field(body, "n", _D, high=128) or 1
    max_tokens = int_field(body, "max_completion_tokens", _D)
    if max_tokens is None:
        max_tokens = int_field(body, "max_tokens", _D)
    tools = _tools(body)
    tool = choose_tool(tools, _tool_choice(body, tools), _last_user_text(messages))
    fmt = body.get("response_format")
    fmt = fmt if isinstance(fmt, dict) else {}
    schema = fmt.get("json_schema")
    schema = schema.get("schema") if isinstance(schema, dict) else None
    raw_tools = body.get("tools") or None
    ask = Ask(
        model=model,
        prompt=hashlib.blake2b(orjson.dumps([messages, raw_tools]), digest_size=16).digest(),
        max_tokens=max_tokens,
        stops=stop_field(body, "stop", _D),
        tool_name=tool.name if tool else None,
        tool_schema=orjson.dumps(tool.schema) if tool else b"{}",
        json_object=fmt.get("type") == "json_object",
        json_schema=orjson.dumps(schema) if fmt.get("type") == "json_schema" else None,
        reasoning=style == "deepseek" and "reasoner" in model,
    )
    opts = body.get("stream_options")
    return ChatRequest(
        ask=ask,
        n=n,
        stream=body.get("stream") is True,
        include_usage=isinstance(opts, dict) and opts.get("include_usage") is True,
        style=style,
        messages=messages,
        tools=raw_tools,
    )


def _tools(body: dict[str, Any]) -> list[ToolSpec]:
    tools = body.get("tools")
    if tools is None:
        return []
    specs: list[ToolSpec] = []
    for tool in tools if isinstance(tools, list) else [None]:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_request(_D, "each tool must have a function with a name", "tools")
        params = fn.get("parameters")
        specs.append(ToolSpec(fn["name"], params if isinstance(params, dict) else {}))
    return specs


def _tool_choice(body: dict[str, Any], tools: list[ToolSpec]) -> ToolChoice:
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "none", "required"):
        return ToolChoice(mode=choice or "auto")
    fn = choice.get("function") if isinstance(choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or all(t.name != name for t in tools):
        raise bad_request(_D, "tool_choice must name a function in tools", "tool_choice")
    return ToolChoice(mode="required", name=name)


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user turn; empty after a tool result, so "auto" answers in text."""
    if messages and messages[-1].get("role") == "tool":
        return ""
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def _completion(
    req: ChatRequest, head: dict[str, Any], answers: list[Answer], prompt: PromptUsage
) -> dict[str, Any]:
    choices = []
    for i, a in enumerate(answers):
        message: dict[str, Any] = {"role": "assistant", "content": a.text, "refusal": None}
        if req.ask.reasoning:
            message["reasoning_content"] = a.reasoning
        if a.tool_call is not None:
            message["content"] = a.text or None
            call = a.tool_call
            message["tool_calls"] = [
                {
                    "id": "call_" + call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
            ]
        choices.append(
            {"index": i, "message": message, "logprobs": None, "finish_reason": a.finish}
        )
    out = {"object": "chat.completion", **head, "choices": choices}
    usage = openai_usage(
        req.style,
        prompt,
        sum(a.output_tokens for a in answers),
        sum(a.reasoning_tokens for a in answers),
    )
    if usage is not None:
        out["usage"] = usage
    out["system_fingerprint"] = _FINGERPRINT
    return out


def _stream_events(
    req: ChatRequest,
    head: dict[str, Any],
    answers: list[Answer],
    prompt: PromptUsage,
    size: int,
) -> list[sse.Event]:
    """Per choice: a role chunk, reasoning, content or tool-call chunks, a finish chunk."""
    choices = [_choice_deltas(a, req.ask.reasoning, size) for a in answers]
    usage = openai_usage(
        req.style,
        prompt,
        sum(a.output_tokens for a in answers),
        sum(a.reasoning_tokens for a in answers),
    )
    chunk_head = {"object": "chat.completion.chunk", **head, "system_fingerprint": _FINGERPRINT}
    return chunk_events(chunk_head, choices, req.style, req.include_usage, usage, nest="delta")


def _choice_deltas(a: Answer, reasoning: bool, size: int) -> list[Delta]:
    first: dict[str, Any] = {"role": "assistant", "content": "" if a.tool_call is None else None}
    parts: list[dict[str, Any]] = []
    if reasoning:
        first = {"role": "assistant", "content": None, "reasoning_content": ""}
        for piece in group_pieces(split_pieces(a.reasoning), size):
            parts.append({"content": None, "reasoning_content": piece})
    if a.tool_call is None:
        parts += [{"content": p} for p in group_pieces(split_pieces(a.text), size)]
    else:
        call = a.tool_call
        opening = {"name": call.name, "arguments": ""}
        parts.append(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_" + call.id, "type": "function", "function": opening}
                ]
            }
        )
        for piece in split_even(call.arguments, _ARG_PIECE_CHARS):
            parts.append({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    # Pace by tokens: each chunk stands for an equal share of the answer's output tokens.
    weight = a.output_tokens / max(1, len(parts))
    return [
        Delta(first, None, 0.0),
        *(Delta(p, None, weight) for p in parts),
        Delta({}, a.finish, 0.0),
    ]
