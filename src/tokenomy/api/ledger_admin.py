"""Admin HTTP API for the ledger: organisations, projects, money, budgets, statements.

Every route is guarded by the admin key. Amounts travel as decimal strings ("12.50") and
are turned into integer nanos by :func:`tokenomy.billing.money.parse_nanos`; every input is
checked before anything is written, so a refused request changes nothing. After a change
the gateway's in-memory accounts are refreshed at once.

Parsing, presentation and posting live in :mod:`tokenomy.ledger.operations`, shared with
the ``tokenomy`` CLI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from tokenomy.api.admin import require_admin
from tokenomy.api.edge import read_json
from tokenomy.core.errors import InvalidRequest, NotFound
from tokenomy.ledger.accounts import MAX_END_USER, Mode, Org, OrgMeter, Scope, user_scope_id
from tokenomy.ledger.operations import (
    KIND_PATHS,
    amount_field,
    amount_str,
    budget_json,
    choice_field,
    currency_field,
    entry_json,
    idempotency_field,
    load_statement,
    memo_field,
    org_json,
    post_entry,
    project_json,
    request_json,
    text_field,
    time_field,
    token_limit_field,
    tz_field,
)
from tokenomy.ledger.periods import Period
from tokenomy.ledger.store import (
    Kind,
    LedgerError,
    NotFoundError,
)
from tokenomy.services import Services

# ---- HTTP handlers ----------------------------------------------------------------------

T = TypeVar("T")


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _org_id(request: web.Request) -> str:
    return request.match_info["org_id"]


def _not_found(e: NotFoundError) -> NotFound:
    msg = str(e)
    code = "project_not_found" if "project" in msg else "org_not_found"
    return NotFound(msg[:1].upper() + msg[1:] + ".", code=code)


async def _run(fn: Callable[..., T], *args: Any, param: str | None = None, **kw: Any) -> T:
    """Run a blocking ledger call in a thread, mapping its refusals to HTTP errors."""
    try:
        return await asyncio.to_thread(fn, *args, **kw)
    except NotFoundError as e:
        raise _not_found(e) from None
    except LedgerError as e:
        raise InvalidRequest(f"{e}.", param=param) from None


async def _balance_json(svc: Services, org: Org) -> dict[str, Any]:
    durable = await asyncio.to_thread(svc.ledger.balance, org.id)
    live = await svc.live.org_state(OrgMeter(org))
    available = live.balance - live.held - org.floor_nanos
    return {
        "object": "balance",
        "org_id": org.id,
        "currency": org.currency.value,
        "balance": amount_str(durable),
        "balance_nanos": durable,
        "held": amount_str(live.held),
        "held_nanos": live.held,
        "available": amount_str(available),
        "available_nanos": available,
        "credit_limit": amount_str(org.credit_limit_nanos),
    }


async def create_org(request: web.Request) -> web.Response:
    svc = require_admin(request)
    body = await read_json(request, svc)
    name = text_field(body.get("name"), "name")
    currency = currency_field(body.get("currency", "USD"))
    mode = choice_field(body.get("mode", "prepaid"), "mode", [m.value for m in Mode])
    credit = amount_field(body.get("credit_limit", "0"), "credit_limit")
    if mode == Mode.PREPAID and credit:
        raise InvalidRequest(
            "'credit_limit': a prepaid organisation has no credit line.", param="credit_limit"
        )
    org = await _run(
        svc.ledger.create_org, name, currency, mode=mode, credit_limit_nanos=credit, param="name"
    )
    await svc.refresh_accounts()
    return _json(org_json(org), status=201)


async def list_orgs(request: web.Request) -> web.Response:
    svc = require_admin(request)
    orgs = await asyncio.to_thread(svc.ledger.all_orgs)
    return _json({"object": "list", "data": [org_json(o) for o in orgs]})


async def get_org(request: web.Request) -> web.Response:
    svc = require_admin(request)
    org = await _run(svc.ledger.org, _org_id(request))
    return _json({**org_json(org), "balance": await _balance_json(svc, org)})


async def get_balance(request: web.Request) -> web.Response:
    svc = require_admin(request)
    org = await _run(svc.ledger.org, _org_id(request))
    return _json(await _balance_json(svc, org))


async def create_project(request: web.Request) -> web.Response:
    svc = require_admin(request)
    org_id = _org_id(request)
    await _run(svc.ledger.org, org_id)
    body = await read_json(request, svc)
    name = text_field(body.get("name"), "name")
    project = await _run(svc.ledger.create_project, org_id, name, param="name")
    await svc.refresh_accounts()
    return _json(project_json(project), status=201)


async def list_projects(request: web.Request) -> web.Response:
    svc = require_admin(request)
    org_id = _org_id(request)
    await _run(svc.ledger.org, org_id)
    projects = await asyncio.to_thread(svc.ledger.all_projects, org_id)
    return _json({"object": "list", "data": [project_json(p) for p in projects]})


def _poster(kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def post(request: web.Request) -> web.Response:
        svc = require_admin(request)
        org_id = _org_id(request)
        await _run(svc.ledger.org, org_id)
        body = await read_json(request, svc)
        amount = amount_field(body.get("amount"), "amount", allow_negative=kind == Kind.ADJUSTMENT)
        memo = memo_field(body.get("memo"))
        key = idempotency_field(
            body.get("idempotency_key") or request.headers.get("Idempotency-Key")
        )
        if amount < 0:
            # The store checks the durable balance; open holds are only live: keep them
            # covered too, so a negative adjustment cannot push an org below its floor.
            org = svc.ledger.org(org_id)
            state = await svc.live.org_state(OrgMeter(org))
            available = state.admin - state.used - state.held - org.floor_nanos
            if amount + available < 0:
                raise InvalidRequest(
                    f"'amount': only {amount_str(max(available, 0))} {org.currency.value} is "
                    "free of open holds; the adjustment would take the balance below its floor.",
                    param="amount",
                )
        entry, replay = await _run(
            post_entry, svc.ledger, kind, org_id, amount, memo, key, param="amount"
        )
        await svc.refresh_accounts()
        return _json({**entry_json(entry), "replayed": replay}, status=200 if replay else 201)

    return post


async def create_budget(request: web.Request) -> web.Response:
    svc = require_admin(request)
    body = await read_json(request, svc)
    scope = choice_field(body.get("scope"), "scope", [s.value for s in Scope])
    if scope == Scope.USER:
        scope_id = _user_scope_id(body)
    else:
        scope_id = text_field(body.get("scope_id"), "scope_id", max_len=40)
    period = choice_field(body.get("period"), "period", [p.value for p in Period])
    raw_amount = body.get("amount")
    amount = None if raw_amount is None else amount_field(raw_amount, "amount")
    tokens = token_limit_field(body.get("token_limit"))
    if amount is None and tokens is None:
        raise InvalidRequest(
            "A budget needs an 'amount', a 'token_limit', or both.", param="amount"
        )
    tz = tz_field(body.get("tz", "UTC"))
    budget = await _run(
        svc.ledger.set_budget,
        scope,
        scope_id,
        period,
        amount_nanos=amount,
        token_limit=tokens,
        tz=tz,
        param="scope_id",
    )
    await svc.refresh_accounts()
    return _json(budget_json(budget), status=201)


def _user_scope_id(body: dict[str, Any]) -> str:
    """An end user's budget names the user in ``scope_id`` and the org in ``org_id`` (or
    both in ``scope_id`` as ``<org id>:<user>``)."""
    org_id = body.get("org_id")
    if org_id is None:
        sid = text_field(body.get("scope_id"), "scope_id", max_len=40 + 1 + MAX_END_USER)
        if ":" not in sid:
            raise InvalidRequest(
                "An end user's budget needs 'org_id' (or 'scope_id' as '<org id>:<user>').",
                param="org_id",
            )
        return sid
    org_id = text_field(org_id, "org_id", max_len=40)
    return user_scope_id(org_id, text_field(body.get("scope_id"), "scope_id", max_len=MAX_END_USER))


async def list_budgets(request: web.Request) -> web.Response:
    svc = require_admin(request)
    budgets = await asyncio.to_thread(svc.ledger.all_budgets)
    scope, scope_id = request.query.get("scope"), request.query.get("scope_id")
    budgets = [
        b
        for b in budgets
        if (scope is None or b.scope.value == scope)
        and (scope_id is None or b.scope_id == scope_id)
    ]
    return _json({"object": "list", "data": [budget_json(b) for b in budgets]})


async def delete_budget(request: web.Request) -> web.Response:
    svc = require_admin(request)
    budget_id = request.match_info["budget_id"]
    if not await asyncio.to_thread(svc.ledger.delete_budget, budget_id):
        raise NotFound(f"No budget with id '{budget_id}'.", code="budget_not_found")
    await svc.refresh_accounts()
    return _json({"id": budget_id, "object": "budget", "deleted": True})


async def get_statement(request: web.Request) -> web.Response:
    svc = require_admin(request)
    org_id = _org_id(request)
    await _run(svc.ledger.org, org_id)
    fmt = choice_field(request.query.get("format", "json"), "format", ["json", "csv"])
    since = time_field(request.query.get("since"), "since")
    until = time_field(request.query.get("until"), "until")
    st = await _run(load_statement, svc.ledger, org_id, since, until)
    if fmt == "csv":
        return web.Response(
            text=st.to_csv(),
            content_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="statement-{org_id}.csv"'},
        )
    return _json(st.to_json())


async def get_request(request: web.Request) -> web.Response:
    svc = require_admin(request)
    request_id = request.match_info["request_id"]
    row = await asyncio.to_thread(svc.ledger.request, request_id)
    if row is None and svc.usage_writer.pending:
        # The record may still be queued in the batched writer: write it out and look again.
        await svc.usage_writer.flush()
        row = await asyncio.to_thread(svc.ledger.request, request_id)
    if row is None:
        raise NotFound(f"No request with id '{request_id}'.", code="request_not_found")
    return _json(request_json(row))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/orgs", list_orgs)
    app.router.add_post("/admin/orgs", create_org)
    app.router.add_get("/admin/orgs/{org_id}", get_org)
    app.router.add_get("/admin/orgs/{org_id}/balance", get_balance)
    app.router.add_get("/admin/orgs/{org_id}/projects", list_projects)
    app.router.add_post("/admin/orgs/{org_id}/projects", create_project)
    for kind, segment in KIND_PATHS.items():
        app.router.add_post(f"/admin/orgs/{{org_id}}/{segment}", _poster(kind))
    app.router.add_get("/admin/orgs/{org_id}/statement", get_statement)
    app.router.add_get("/admin/budgets", list_budgets)
    app.router.add_post("/admin/budgets", create_budget)
    app.router.add_delete("/admin/budgets/{budget_id}", delete_budget)
    app.router.add_get("/admin/requests/{request_id}", get_request)
