"""``POST /v1/completions``: OpenAI's legacy text-completion dialect, plain and streamed."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson
from aiohttp import web

from tokenomy.sim import sse
from tokenomy.sim.answer import Answer, Ask
from tokenomy.sim.errors import Dialect
from tokenomy.sim.gate import bad_request, int_field, meet_fault, model_of, read_body, stop_field
from tokenomy.sim.openai_stream import Delta, chunk_events, group_pieces
from tokenomy.sim.state import STATE
from tokenomy.sim.text import split_pieces
from tokenomy.sim.usage import openai_usage

_D = Dialect.OPENAI


async def completions(request: web.Request) -> web.StreamResponse:
    """Answer each prompt ``n`` times, choice ``index`` = prompt number * n + answer number."""
    state = request.app[STATE]
    body = await read_body(request, _D)
    model = model_of(request, body, _D)
    prompts = _prompts(body.get("prompt"))
    n = int_field(body, "n", _D, high=128) or 1
    stops = stop_field(body, "stop", _D)
    max_tokens = int_field(body, "max_tokens", _D)
    stream = body.get("stream") is True
    opts = body.get("stream_options")
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    style = state.settings.usage_style(model)
    plan = await meet_fault(request, _D, model, stream)

    digests = [hashlib.blake2b(p.encode(), digest_size=16).digest() for p in prompts]
    prompt = state.prompt_usage(
        model,
        hashlib.blake2b(b"".join(digests), digest_size=16).digest(),
        lambda: sum(state.counter.count_text(model, p) for p in prompts),
    )
    answers: list[Answer] = []
    for digest in digests:
        ask = Ask(model=model, prompt=digest, max_tokens=max_tokens, stops=stops)
        answers += [state.answer(ask, i) for i in range(n)]
    usage = openai_usage(style, prompt, sum(a.output_tokens for a in answers), 0)
    head = {
        "id": "cmpl-" + state.next_id(),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    if not stream:
        await sse.wait_generation(request, plan, sum(a.output_tokens for a in answers))
        choices = [
            {"text": a.text, "index": i, "logprobs": None, "finish_reason": a.finish}
            for i, a in enumerate(answers)
        ]
        out: dict[str, Any] = {**head, "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return web.Response(body=orjson.dumps(out), content_type="application/json")
    size = state.settings.stream_chunk_words
    deltas = [_deltas(a, size) for a in answers]
    events = chunk_events(head, deltas, style, include_usage, usage, nest=None)
    resp = await sse.open_stream(request, {})
    await sse.send_events(request, resp, events, plan)
    return resp


def _prompts(value: Any) -> list[str]:
    """The prompt(s): a string, strings, or token arrays (kept as their decimal text)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(p, str) for p in value):
            return list(value)
        if all(isinstance(t, int) for t in value):
            return [" ".join(map(str, value))]
        if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in value):
            return [" ".join(map(str, p)) for p in value]
    raise bad_request(_D, "prompt must be a string, strings, or token arrays", "prompt")


def _deltas(a: Answer, size: int) -> list[Delta]:
    pieces = group_pieces(split_pieces(a.text), size)
    weight = a.output_tokens / max(1, len(pieces))
    return [Delta({"text": p}, None, weight) for p in pieces] + [Delta({"text": ""}, a.finish, 0)]
