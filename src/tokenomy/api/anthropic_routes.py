"""Anthropic-dialect route: POST /v1/messages, for any model behind the gateway."""

from __future__ import annotations

from aiohttp import web

from tokenomy.api.edge import authenticate, read_json, serve_call, services
from tokenomy.gateway import validation
from tokenomy.gateway.call import Call


async def messages(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    key = authenticate(request, svc)
    body = await read_json(request, svc)
    model = validation.require_model(body)
    stream = validation.check_messages(body, svc.config.server.max_messages)
    call = Call(
        endpoint="messages", dialect="anthropic", body=body, model=model, stream=stream, key=key
    )
    return await serve_call(request, svc, call)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
