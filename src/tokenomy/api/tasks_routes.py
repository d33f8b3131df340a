"""Tasks: ``POST /v1/tasks`` makes one (with an optional budget), ``GET /v1/tasks/{id}``
shows what its calls added up to."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from tokenomy.api.edge import authenticate, parse_json, read_body, read_json, services
from tokenomy.billing.call_pricing import units
from tokenomy.billing.money import parse_nanos
from tokenomy.core.errors import InvalidRequest
from tokenomy.core.ids import stamped_id
from tokenomy.ledger.tasks import TASK_PREFIX, owner_of, task_meter, task_not_found
from tokenomy.store.tasks import Task, TaskStore, TaskTotals


def _store(request: web.Request) -> TaskStore:
    store = services(request).tasks
    assert store is not None
    return store


def _budget(body: dict[str, Any]) -> tuple[int | None, int | None]:
    budget = body.get("budget")
    if budget is None:
        return None, None
    if not isinstance(budget, dict):
        raise InvalidRequest("'budget' must be an object.", param="budget")
    nanos = tokens = None
    if budget.get("amount") is not None:
        try:
            nanos = parse_nanos(budget["amount"])
        except ValueError as e:
            raise InvalidRequest(f"Invalid 'budget.amount': {e}.", param="budget.amount") from None
    t = budget.get("tokens")
    if t is not None:
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            raise InvalidRequest(
                "'budget.tokens' must be a non-negative integer.", param="budget.tokens"
            )
        tokens = t
    return nanos, tokens


async def create_task(request: web.Request) -> web.Response:
    svc = services(request)
    key = authenticate(request.headers, svc)
    raw = await read_body(request, svc.config.server.max_body_bytes)
    body = parse_json(raw) if raw.strip() else {}
    nanos, tokens = _budget(body)
    org = svc.accounts.org_of(key) if key.org_id is not None else None
    if (nanos is not None or tokens is not None) and org is None:
        raise InvalidRequest(
            "A task budget needs an API key of an organisation (it is one more level of "
            "the organisation's ledger).",
            param="budget",
        )
    task = Task(
        id=stamped_id(TASK_PREFIX),
        owner=owner_of(key.org_id, key.id),
        created_ms=int(time.time() * 1000),
        currency=org.currency.value if org is not None else None,
        budget_nanos=nanos,
        budget_tokens=tokens,
    )
    await asyncio.to_thread(_store(request).create, task)
    empty = TaskTotals(0, 0, 0, 0, 0, None, None)
    return _json(_task_view(task.id, task, empty))


async def set_task_budget(request: web.Request) -> web.Response:
    """A made task's new budget; one below what the task has already spent is refused
    (400) and changes nothing."""
    svc = services(request)
    key = authenticate(request.headers, svc)
    name = request.match_info["task_id"]
    store = _store(request)
    task = await asyncio.to_thread(store.get, name) if name.startswith(TASK_PREFIX) else None
    if task is None or task.owner != owner_of(key.org_id, key.id):
        raise task_not_found(name)
    body = await read_json(request, svc)
    if "budget" not in body:
        raise InvalidRequest("Missing required parameter: 'budget'.", param="budget")
    nanos, tokens = _budget(body)
    if (nanos is not None or tokens is not None) and key.org_id is None:
        raise InvalidRequest("A task budget needs an API key of an organisation.", param="budget")
    new = replace(task, budget_nanos=nanos, budget_tokens=tokens)
    meter = task_meter(new)
    if meter is not None:
        # The live counters: what the task's settled calls spent, written or not yet.
        st = await svc.live.budget_state(meter)
        if nanos is not None and nanos < st.spent:
            raise InvalidRequest(
                f"The new budget {units(nanos)} is below what task {name} has already spent "
                f"({units(st.spent)}).",
                param="budget.amount",
            )
        if tokens is not None and tokens < st.tokens_spent:
            raise InvalidRequest(
                f"The new token budget {tokens} is below the {st.tokens_spent} tokens task "
                f"{name} has already used.",
                param="budget.tokens",
            )
    await asyncio.to_thread(store.set_budget, new)
    totals = await asyncio.to_thread(store.totals, key.org_id, key.id, name)
    return _json(_task_view(name, new, totals))


async def get_task(request: web.Request) -> web.Response:
    svc = services(request)
    key = authenticate(request.headers, svc)
    name = request.match_info["task_id"]
    store = _store(request)
    task = None
    if name.startswith(TASK_PREFIX):
        task = await asyncio.to_thread(store.get, name)
        if task is None or task.owner != owner_of(key.org_id, key.id):
            raise task_not_found(name)
    totals = await asyncio.to_thread(store.totals, key.org_id, key.id, name)
    if task is None and totals.calls == 0:
        raise task_not_found(name)
    return _json(_task_view(name, task, totals))


def _task_view(name: str, task: Task | None, t: TaskTotals) -> dict[str, Any]:
    """A task as the API shows it: budget, what its calls used, and what is left."""
    view: dict[str, Any] = {
        "id": name,
        "object": "task",
        "created_at": task.created_ms // 1000 if task is not None else None,
        "budget": None,
        "calls": t.calls,
        "usage": {
            "input_tokens": t.input_tokens,
            "cached_tokens": t.cached_tokens,
            "output_tokens": t.output_tokens,
            "total_tokens": t.input_tokens + t.output_tokens,
        },
        "cost": units(t.cost_nanos),
        "currency": task.currency if task is not None else None,
        "cache_hit_rate": round(t.cached_tokens / t.input_tokens, 4) if t.input_tokens else 0.0,
        "duration_ms": (t.last_ms - t.first_ms) if t.first_ms is not None and t.last_ms else 0,
    }
    if task is not None and (task.budget_nanos is not None or task.budget_tokens is not None):
        used = t.input_tokens + t.output_tokens
        view["budget"] = {
            "amount": units(task.budget_nanos) if task.budget_nanos is not None else None,
            "tokens": task.budget_tokens,
            "remaining_amount": (
                units(task.budget_nanos - t.cost_nanos) if task.budget_nanos is not None else None
            ),
            "remaining_tokens": (
                task.budget_tokens - used if task.budget_tokens is not None else None
            ),
        }
    return view


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/tasks", create_task)
    app.router.add_get("/v1/tasks/{task_id}", get_task)
    app.router.add_post("/v1/tasks/{task_id}", set_task_budget)
