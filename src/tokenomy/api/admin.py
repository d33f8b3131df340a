"""Admin HTTP API, guarded by the admin key: API keys today, accounts and money later."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import orjson
from aiohttp import web

from tokenomy.api.edge import presented_key, read_json, services
from tokenomy.core.errors import GatewayError, InvalidRequest, NotFound, Unauthorized
from tokenomy.core.keys import ApiKey
from tokenomy.ledger.store import NotFoundError
from tokenomy.services import Services


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
    given = presented_key(request.headers) or ""
    # surrogatepass: a header that is not UTF-8 arrives with surrogates (and is no match).
    if not secrets.compare_digest(given.encode("utf-8", "surrogatepass"), svc.admin_key.encode()):
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
    if not isinstance(name, str) or len(name) > 200 or not name.isprintable():
        raise InvalidRequest(
            "'name' must be a string of at most 200 printable characters.", param="name"
        )
    if models is not None and (
        not isinstance(models, list)
        or not all(isinstance(m, str) and m and "\0" not in m for m in models)
    ):
        raise InvalidRequest("'models' must be an array of model names.", param="models")
    unknown = [m for m in models or () if svc.registry.get(m) is None]
    if unknown:
        raise InvalidRequest(f"Unknown models: {', '.join(unknown)}.", param="models")
    org_id, project_id = await _key_owner(svc, body.get("org_id"), body.get("project_id"))
    secret, rec = await asyncio.to_thread(
        svc.keys.create, name, allowed_models=models, org_id=org_id, project_id=project_id
    )
    svc.key_cache.put(secret, rec)
    if org_id is not None:
        await svc.refresh_accounts()  # the org may be new to this process (made by the CLI)
    return _json({**key_json(rec), "key": secret}, status=201)


async def _key_owner(svc: Services, org_id: Any, project_id: Any) -> tuple[str | None, str | None]:
    """The org and project a new key bills to; a project implies its org."""
    for field, value in (("org_id", org_id), ("project_id", project_id)):
        if value is not None and not (isinstance(value, str) and value and "\0" not in value):
            raise InvalidRequest(
                f"'{field}' must be a non-empty string (no NUL bytes).", param=field
            )
    if project_id is not None:
        try:
            project = await asyncio.to_thread(svc.ledger.project, project_id)
        except NotFoundError:
            raise InvalidRequest(f"No project '{project_id}'.", param="project_id") from None
        if org_id is not None and org_id != project.org_id:
            raise InvalidRequest(
                f"Project '{project_id}' belongs to org '{project.org_id}', not '{org_id}'.",
                param="project_id",
            )
        org_id = project.org_id
    if org_id is not None:
        try:
            await asyncio.to_thread(svc.ledger.org, org_id)
        except NotFoundError:
            raise InvalidRequest(f"No organisation '{org_id}'.", param="org_id") from None
    return org_id, project_id


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
