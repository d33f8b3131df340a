"""``/_sim/*``: scripting faults and reading what was served, for tests and demos."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tokenomy.sim.errors import Dialect
from tokenomy.sim.faults import parse_fault
from tokenomy.sim.gate import bad_request, read_body
from tokenomy.sim.state import STATE

_D = Dialect.OPENAI


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


async def push_faults(request: web.Request) -> web.StreamResponse:
    """Queue faults for a model: ``{"model": "<name or *>", "faults": ["429", "ok", ...]}``."""
    state = request.app[STATE]
    body = await read_body(request, _D)
    model, tokens = body.get("model", "*"), body.get("faults")
    if not isinstance(model, str) or not isinstance(tokens, list):
        raise bad_request(_D, 'expected {"model": str, "faults": [str, ...]}')
    try:
        faults = [parse_fault(str(t), state.settings) for t in tokens]
    except ValueError as exc:
        raise bad_request(_D, str(exc), "faults") from None
    state.script.push(model, faults)
    return _json({"pending": state.script.pending()})


async def list_faults(request: web.Request) -> web.StreamResponse:
    return _json({"pending": request.app[STATE].script.pending()})


async def clear_faults(request: web.Request) -> web.StreamResponse:
    request.app[STATE].script.clear()
    return _json({"pending": {}})


async def get_stats(request: web.Request) -> web.StreamResponse:
    """Requests served per model and outcome: ``{"total": n, "models": {m: {"200": k}}}``."""
    return _json(request.app[STATE].stats.snapshot())


async def clear_stats(request: web.Request) -> web.StreamResponse:
    request.app[STATE].stats.clear()
    return _json(request.app[STATE].stats.snapshot())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/_sim/faults", push_faults)
    app.router.add_get("/_sim/faults", list_faults)
    app.router.add_delete("/_sim/faults", clear_faults)
    app.router.add_get("/_sim/stats", get_stats)
    app.router.add_delete("/_sim/stats", clear_stats)
