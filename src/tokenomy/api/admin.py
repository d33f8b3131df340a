"""Admin HTTP API, guarded by the admin key: API keys today, accounts and money later."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import orjson
from aiohttp import web

from tokenomy.api.edge import presented_key, read_json, services
from tokenomy.errors import GatewayError, InvalidRequest, NotFound, Unauthorized
from tokenomy.services import Services
from tokenomy.store.keys import ApiKey


class AdminDisabled(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "admin_disabled"


def require_admin(request: web.Request) -> Services:
    svc = services(request)
    if not svc.admin_key:
        raise AdminDisabled(
            f"The admin API is disabled: set {svc.config.admin.key_env} to enable it."
        )
    given = presented_key(request) or ""
    if not secrets.compare_digest(given.encode(), svc.admin_key.encode()):
        raise Unauthorized("The admin API needs the admin key.")
    return svc


def key_json(k: ApiKey) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "models": sorted(k.allowed_models) if k.allowed_models is not None else None,
        "org_id": k.org_id,
        "project_id": k.project_id,
        "created_ms": k.created_ms,
        "revoked_ms": k.revoked_ms,
    }


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


async def list_keys(request: web.Request) -> web.Response:
    svc = require_admin(request)
    include = request.query.get("include_revoked") in ("1", "true")
    keys = await asyncio.to_thread(svc.keys.all, include)
    return _json({"object": "list", "data": [key_json(k) for k in keys]})


async def create_key(request: web.Request) -> web.Response:
    svc = require_admin(request)
    body = await read_json(request, svc)
    name = body.get("name", "")
    models = body.get("models")
    if not isinstance(name, str) or len(name) > 200:
        raise InvalidRequest("'name' must be a string of at most 200 characters.", param="name")
    if models is not None and (
        not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)
    ):
        raise InvalidRequest("'models' must be an array of model names.", param="models")
    unknown = [m for m in models or () if svc.registry.get(m) is None]
    if unknown:
        raise InvalidRequest(f"Unknown models: {', '.join(unknown)}.", param="models")
    secret, rec = await asyncio.to_thread(svc.keys.create, name, allowed_models=models)
    svc.key_cache.put(secret, rec)
    return _json({**key_json(rec), "key": secret}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    svc = require_admin(request)
    key_id = request.match_info["key_id"]
    if not await asyncio.to_thread(svc.keys.revoke, key_id):
        raise NotFound(f"No active key with id '{key_id}'.", code="key_not_found")
    svc.key_cache.revoke_local(key_id)
    return _json({"id": key_id, "revoked": True})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/keys", list_keys)
    app.router.add_post("/admin/keys", create_key)
    app.router.add_delete("/admin/keys/{key_id}", revoke_key)
