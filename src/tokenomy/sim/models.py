"""``GET /v1/models``: the simulated models, in OpenAI's or (by header) Anthropic's format."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tokenomy.sim.state import STATE

OWNER = "tokenomy-simulator"
_CREATED = 1_700_000_000  # a fixed date keeps answers byte-for-byte reproducible


def _openai_model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _CREATED, "owned_by": OWNER}


def _anthropic_model(name: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": name,
        "display_name": f"{name} (simulated)",
        "created_at": "2023-11-14T22:13:20Z",
    }


def _is_anthropic(request: web.Request) -> bool:
    return "anthropic-version" in request.headers


async def list_models(request: web.Request) -> web.StreamResponse:
    names = request.app[STATE].settings.models
    out: dict[str, Any]
    if _is_anthropic(request):
        data = [_anthropic_model(n) for n in names]
        out = {
            "data": data,
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    else:
        out = {"object": "list", "data": [_openai_model(n) for n in names]}
    return web.Response(body=orjson.dumps(out), content_type="application/json")


async def get_model(request: web.Request) -> web.StreamResponse:
    """Any model name exists here: the simulator answers for every model."""
    name = request.match_info["model"]
    out = _anthropic_model(name) if _is_anthropic(request) else _openai_model(name)
    return web.Response(body=orjson.dumps(out), content_type="application/json")
