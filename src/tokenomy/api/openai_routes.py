"""OpenAI-dialect routes: chat completions, legacy completions, embeddings, models."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from tokenomy.api.edge import InferenceRoute, authenticate, services
from tokenomy.core.call import Call
from tokenomy.core.keys import ApiKey
from tokenomy.core.registry import ModelRoute
from tokenomy.gateway import validation
from tokenomy.services import Services


def _chat(body: dict[str, Any], key: ApiKey, svc: Services) -> Call:
    model = validation.require_model(body)
    server = svc.config.server
    stream = validation.check_chat(body, server.max_messages, server.max_choices)
    opts = body.get("stream_options") or {}
    return Call(
        endpoint="chat",
        dialect="openai",
        body=body,
        model=model,
        stream=stream,
        key=key,
        wants_usage=bool(opts.get("include_usage")),
    )


def _completions(body: dict[str, Any], key: ApiKey, svc: Services) -> Call:
    model = validation.require_model(body)
    stream = validation.check_completions(body, svc.config.server.max_choices)
    opts = body.get("stream_options") or {}
    return Call(
        endpoint="completions",
        dialect="openai",
        body=body,
        model=model,
        stream=stream,
        key=key,
        wants_usage=isinstance(opts, dict) and bool(opts.get("include_usage")),
    )


def _embeddings(body: dict[str, Any], key: ApiKey, svc: Services) -> Call:
    model = validation.require_model(body)
    validation.check_embeddings(body)
    return Call(
        endpoint="embeddings", dialect="openai", body=body, model=model, stream=False, key=key
    )


INFERENCE = (
    InferenceRoute("/v1/chat/completions", _chat),
    InferenceRoute("/v1/completions", _completions),
    InferenceRoute("/v1/embeddings", _embeddings),
)


#: Per-model figures of the job queues (``GET /v1/queue``'s ``models``), when served.
JOB_QUEUES: web.AppKey[Callable[[], list[dict[str, Any]]]] = web.AppKey("job_queues")


async def queue_view(request: web.Request) -> web.Response:
    """Where the key's requests wait: deployment, position and estimated wait."""
    svc = services(request)
    key = authenticate(request.headers, svc)
    entries = [
        {
            "request_id": e.request_id,
            "deployment": e.queue,
            "position": e.position,
            "estimated_wait_s": round(e.estimated_wait_s, 3),
            "waited_s": round(e.waited_s, 3),
            "tier": e.tier,
        }
        for e in svc.queues.view(key.id)
    ]
    body: dict[str, Any] = {"object": "list", "data": entries}
    jobs = request.app.get(JOB_QUEUES)
    # Queued generation jobs, per video model (see api.video_routes); a gateway serving no
    # video model answers as it always did.
    models = jobs() if jobs is not None else []
    if models:
        body["models"] = models
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def list_models(request: web.Request) -> web.Response:
    svc = services(request)
    key = authenticate(request.headers, svc)
    created = int(time.time())
    data = [
        model_card(r, created, svc.model_pricing(r))
        for r in svc.registry.routes
        if key.may_use(r.name)
    ]
    auto = svc.pipeline.auto
    listed = auto.listing(key) if auto is not None else None
    if listed is not None:
        data.append(model_card(listed, created, None))  # its price is the pick's
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
    )


async def get_model(request: web.Request) -> web.Response:
    svc = services(request)
    key = authenticate(request.headers, svc)
    name = request.match_info["model"]
    auto = svc.pipeline.auto
    if auto is not None and name in auto.names:
        listed = auto.listing(key, name)
        if listed is not None:
            card = model_card(listed, int(time.time()), None)
            return web.Response(body=orjson.dumps(card), content_type="application/json")
    route = svc.registry.resolve(name)
    if not key.may_use(route.name):
        route = svc.registry.resolve("\0")  # same 404 as an unknown model: do not leak names
    card = model_card(route, int(time.time()), svc.model_pricing(route))
    return web.Response(body=orjson.dumps(card), content_type="application/json")


def model_card(route: ModelRoute, created: int, pricing: dict[str, str] | None) -> dict[str, Any]:
    vendors = sorted({d.vendor.name for d in route.deployments})
    card: dict[str, Any] = {
        "id": route.name,
        "object": "model",
        "created": created,
        "owned_by": ", ".join(vendors),
        "context_length": route.context_length,
        "max_output_tokens": route.max_output,
        "deployments": [d.id for d in route.deployments],
    }
    if route.description:
        card["description"] = route.description
    if pricing is not None:
        card["pricing"] = pricing
    return card


def add_routes(app: web.Application) -> None:
    """The other routes; ``INFERENCE`` is registered by ``app.app_for``."""
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/queue", queue_view)
    app.router.add_get("/v1/models/{model:.+}", get_model)
