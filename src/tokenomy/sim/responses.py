"""``POST /v1/responses``: OpenAI's Responses API, whole and as its semantic event stream.

The request is read as the chat request it amounts to (the same answers, token counts,
prompt cache and faults as ``/v1/chat/completions``); the answer goes out as a Response
object, or as the documented events (``response.created`` … ``response.completed``) with
the usage OpenAI reports: ``input_tokens`` (with ``input_tokens_details.cached_tokens``),
``output_tokens`` (with ``output_tokens_details.reasoning_tokens``).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from tokenomy.sim import sse
from tokenomy.sim.answer import Answer
from tokenomy.sim.errors import Dialect
from tokenomy.sim.gate import bad_request, meet_fault, read_body
from tokenomy.sim.openai_chat import parse_chat
from tokenomy.sim.state import STATE, PromptUsage
from tokenomy.sim.text import split_even, split_pieces
from tokenomy.sim.usage import openai_usage

_D = Dialect.OPENAI
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
JSON = dict[str, Any]


async def responses(request: web.Request) -> web.StreamResponse:
    """Answer a Responses request, as a Response object or as its event stream."""
    state = request.app[STATE]
    body = await read_body(request, _D)
    chat = chat_body(body)
    req = parse_chat(request, chat, state.settings.usage_style(str(body.get("model"))))
    model = req.ask.model
    plan = await meet_fault(request, _D, model, req.stream)
    prompt = state.prompt_usage(
        model,
        req.ask.prompt,
        lambda: state.counter.count_messages(model, req.messages, req.tools),
    )
    answer = state.answer(req.ask, 0)
    resp = _response(body, "resp_" + state.next_id(), model)
    usage = _usage(req.style, prompt, answer)
    if not req.stream:
        await sse.wait_generation(request, plan, answer.output_tokens)
        resp["output"] = [item for item, _ in _items(answer, resp["id"][5:])]
        _finish(resp, answer, usage)
        return web.Response(body=orjson.dumps(resp), content_type="application/json")
    stream = await sse.open_stream(request, {})
    size = state.settings.stream_chunk_words
    await sse.send_events(request, stream, _events(resp, answer, usage, size), plan)
    return stream


def chat_body(body: JSON) -> JSON:
    """The chat request a Responses request amounts to (400 when its input is malformed)."""
    messages: list[JSON] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    inp = body.get("input")
    if isinstance(inp, str):
        messages.append({"role": "user", "content": inp})
    elif isinstance(inp, list) and inp:
        for item in inp:
            _add_item(messages, item)
    else:
        raise bad_request(_D, "input must be a string or a non-empty array", "input")
    out: JSON = {"model": body.get("model"), "messages": messages, "stream": body.get("stream")}
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    tools = [
        {"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
        for t in body.get("tools") or ()
        if isinstance(t, dict) and t.get("type") == "function"
    ]
    if tools:
        out["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        out["tool_choice"] = choice
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        out["response_format"] = {"type": "json_schema", "json_schema": fmt}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    return out


def _add_item(messages: list[JSON], item: Any) -> None:
    if not isinstance(item, dict):
        raise bad_request(_D, "each input item must be an object", "input")
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = _ROLES.get(str(item.get("role")))
        if role is None:
            raise bad_request(_D, "input message role is invalid", "input")
        content = item.get("content")
        if isinstance(content, list):
            content = "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
        messages.append({"role": role, "content": content if isinstance(content, str) else ""})
    elif kind == "function_call":
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments")},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        out = item.get("output")
        text = out if isinstance(out, str) else orjson.dumps(out).decode()
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
    elif kind != "reasoning":  # a prior turn's reasoning is read, not answered
        raise bad_request(_D, f"input item type {kind!r} is not supported", "input")


def _response(body: JSON, rid: str, model: str) -> JSON:
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True) is not False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def _usage(style: str, prompt: PromptUsage, a: Answer) -> JSON | None:
    chat = openai_usage(style, prompt, a.output_tokens, a.reasoning_tokens)
    if chat is None:
        return None  # a silent vendor's model
    return {
        "input_tokens": prompt.tokens,
        "input_tokens_details": {"cached_tokens": prompt.cached},
        "output_tokens": a.output_tokens,
        "output_tokens_details": {"reasoning_tokens": a.reasoning_tokens},
        "total_tokens": prompt.tokens + a.output_tokens,
    }


def _items(a: Answer, seed: str) -> list[tuple[JSON, list[str]]]:
    """The output items of an answer (ids made from ``seed``), each with the pieces its
    stream sends."""
    out: list[tuple[JSON, list[str]]] = []
    if a.reasoning:
        item = {
            "id": "rs_" + seed,
            "type": "reasoning",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": a.reasoning}],
        }
        out.append((item, []))
    if a.tool_call is None or a.text:
        part = {"type": "output_text", "text": a.text, "annotations": [], "logprobs": []}
        msg = {
            "id": "msg_" + seed,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
        out.append((msg, split_pieces(a.text)))
    if a.tool_call is not None:
        c = a.tool_call
        fc = {
            "id": "fc_" + c.id,
            "type": "function_call",
            "status": "completed",
            "call_id": "call_" + c.id,
            "name": c.name,
            "arguments": c.arguments,
        }
        out.append((fc, split_even(c.arguments, 8)))
    return out


def _finish(resp: JSON, a: Answer, usage: JSON | None) -> None:
    if a.finish == "length":
        resp["status"] = "incomplete"
        resp["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        resp["status"] = "completed"
    resp["usage"] = usage


class _Events:
    """Numbered events (``sequence_number``), each with its share of the answer's tokens."""

    def __init__(self) -> None:
        self.out: list[sse.Event] = []

    def add(self, kind: str, weight: float = 0.0, **fields: Any) -> None:
        data = {"type": kind, "sequence_number": len(self.out), **fields}
        self.out.append((sse.named_frame(kind.encode(), data), weight))


def _events(resp: JSON, a: Answer, usage: JSON | None, size: int) -> list[sse.Event]:
    ev = _Events()
    snap = orjson.loads(orjson.dumps(resp))
    ev.add("response.created", response=snap)
    ev.add("response.in_progress", response=snap)
    items = _items(a, resp["id"][5:])
    pieces = sum(len(p) for _, p in items) or 1
    weight = a.output_tokens / pieces
    for i, (item, parts) in enumerate(items):
        kind = item["type"]
        opened = {**item, "status": "in_progress"}
        if kind == "message":
            opened["content"] = []
        elif kind == "function_call":
            opened["arguments"] = ""
        ev.add("response.output_item.added", output_index=i, item=opened)
        where = {"item_id": item["id"], "output_index": i}
        if kind == "message":
            part = item["content"][0]
            empty = {**part, "text": ""}
            ev.add("response.content_part.added", **where, content_index=0, part=empty)
            for p in _grouped(parts, size):
                ev.add(
                    "response.output_text.delta",
                    weight * len(p),
                    **where,
                    content_index=0,
                    delta="".join(p),
                    logprobs=[],
                )
            ev.add(
                "response.output_text.done",
                **where,
                content_index=0,
                text=part["text"],
                logprobs=[],
            )
            ev.add("response.content_part.done", **where, content_index=0, part=part)
        elif kind == "function_call":
            for piece in parts:
                ev.add("response.function_call_arguments.delta", weight, **where, delta=piece)
            ev.add(
                "response.function_call_arguments.done",
                **where,
                name=item["name"],
                arguments=item["arguments"],
            )
        ev.add("response.output_item.done", output_index=i, item=item)
        resp["output"].append(item)
    _finish(resp, a, usage)
    kind = "response.completed" if resp["status"] == "completed" else "response.incomplete"
    ev.add(kind, response=resp)
    return ev.out


def _grouped(pieces: list[str], size: int) -> list[list[str]]:
    size = max(1, size)
    return [pieces[i : i + size] for i in range(0, len(pieces), size)]
