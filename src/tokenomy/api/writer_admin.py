"""``GET /admin/dead-letters``: the records the database refused, for an operator."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from tokenomy.api.admin import require_admin
from tokenomy.core.errors import InvalidRequest
from tokenomy.store.dead_letters import list_dead_letters


async def get_dead_letters(request: web.Request) -> web.Response:
    svc = require_admin(request)
    text = request.query.get("limit", "100")
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 10_000:
        raise InvalidRequest("limit must be a whole number from 1 to 10000.", param="limit")
    letters = await asyncio.to_thread(list_dead_letters, svc.engine, int(text))
    body = {"object": "list", "data": letters}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/dead-letters", get_dead_letters)
