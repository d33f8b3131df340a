"""Anthropic-dialect route: POST /v1/messages, for any model behind the gateway."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tokenomy.api.edge import InferenceRoute, aio_handler
from tokenomy.gateway import validation
from tokenomy.gateway.call import Call
from tokenomy.services import Services
from tokenomy.store.keys import ApiKey


def _messages(body: dict[str, Any], key: ApiKey, svc: Services) -> Call:
    model = validation.require_model(body)
    stream = validation.check_messages(body, svc.config.server.max_messages)
    return Call(
        endpoint="messages", dialect="anthropic", body=body, model=model, stream=stream, key=key
    )


INFERENCE = (InferenceRoute("/v1/messages", _messages, anthropic=True),)


def add_routes(app: web.Application) -> None:
    for route in INFERENCE:
        app.router.add_post(route.path, aio_handler(route))
