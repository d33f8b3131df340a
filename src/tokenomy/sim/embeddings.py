"""``POST /v1/embeddings``: deterministic unit vectors from a hash of each input."""

from __future__ import annotations

import base64
import hashlib
import math
import sys
from array import array
from typing import Any

import orjson
from aiohttp import web

from tokenomy.sim.errors import Dialect
from tokenomy.sim.gate import bad_request, int_field, meet_fault, model_of, read_body
from tokenomy.sim.sse import hold
from tokenomy.sim.state import STATE

_D = Dialect.OPENAI
_MAX_DIM = 8192


def embed(seed: int, model: str, text: str, dim: int) -> list[float]:
    """A unit vector of ``dim`` floats determined by (seed, model, text)."""
    raw = hashlib.shake_256(f"{seed}\x00{model}\x00{text}".encode()).digest(2 * dim)
    ints = array("h", raw)
    norm = math.hypot(*ints) or 1.0
    return [x / norm for x in ints]


def as_base64(vector: list[float]) -> str:
    """Little-endian float32 bytes in base64, as OpenAI's ``encoding_format: base64``."""
    packed = array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


async def embeddings(request: web.Request) -> web.StreamResponse:
    """One vector per input; usage counts prompt tokens only."""
    state = request.app[STATE]
    body = await read_body(request, _D)
    model = model_of(request, body, _D)
    inputs = _inputs(body.get("input"))
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad_request(_D, "encoding_format must be 'float' or 'base64'", "encoding_format")
    dim = int_field(body, "dimensions", _D, high=_MAX_DIM) or state.settings.embedding_dim
    plan = await meet_fault(request, _D, model, False)
    if plan.ttft_s > 0:
        await hold(request, plan.ttft_s)  # embeddings have latency but no generation
    seed = state.settings.seed
    data = []
    tokens = 0
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            text = item
            tokens += state.counter.count_text(model, item)
        else:
            text = " ".join(map(str, item))
            tokens += len(item)
        vector = embed(seed, model, text, dim)
        value: Any = as_base64(vector) if encoding == "base64" else vector
        data.append({"object": "embedding", "index": i, "embedding": value})
    out = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return web.Response(body=orjson.dumps(out), content_type="application/json")


def _inputs(value: Any) -> list[str | list[int]]:
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) and v for v in value):
            return list(value)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [list(value)]
        if all(isinstance(v, list) and v and all(isinstance(t, int) for t in v) for v in value):
            return list(value)
    raise bad_request(_D, "input must be a non-empty string, strings, or token arrays", "input")
