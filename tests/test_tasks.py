"""Tasks: the calls of one agent run grouped by name, and a budget that holds across all
of them, parallel calls included (one more level of the ledger's two-phase holds)."""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import func, select

from tests.conftest import ADMIN_KEY, Gateway, make_config, sim_faults, throwaway_postgres
from tests.needs import require_redis
from tests.servers import ThreadServer
from tokenomy.app import app_for
from tokenomy.services import build_services
from tokenomy.store.schema import usage_events

MSG = [{"role": "user", "content": "hi"}]


def nanos(cost: Any) -> int:
    return int(Decimal(str(cost)) * 10**9)


def clear_faults(sim_url: str) -> None:
    """Drop the scripted faults no call consumed."""
    httpx.delete(f"{sim_url}/_sim/faults").raise_for_status()


def api(gateway: Gateway, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=gateway.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def make_task(gateway: Gateway, key: str, budget: dict[str, Any] | None = None) -> dict[str, Any]:
    r = api(gateway, key).post("/tasks", json={"budget": budget} if budget else {})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def one_hold(gateway: Gateway, key: str) -> int:
    """What one call of the tests below holds (its worst case), from a call outside any task."""
    c = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="single", messages=MSG, max_tokens=10)  # type: ignore[arg-type]
    (row,) = gateway.wait_events(1, request_id=raw.headers["x-request-id"])
    held: int = row["held_nanos"]
    assert held > row["cost_nanos"] > 0
    return held


def test_parallel_calls_of_a_task_never_exceed_its_budget(gateway: Gateway) -> None:
    org = gateway.new_org(10**10)
    key = gateway.new_key(org_id=org)
    held = one_hold(gateway, key)
    k = 4
    task = make_task(gateway, key, {"amount": str(Decimal(k * held + held // 2) / 10**9)})
    assert task["id"].startswith("task_") and task["budget"]["amount"]
    n = 16
    sim_faults(gateway.sim_url, "single-a", ["slow"] * n)  # every hold is open at once

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as c:
            return await asyncio.gather(
                *(
                    c.post(
                        "/chat/completions",
                        json={"model": "single", "messages": MSG, "max_tokens": 10},
                        headers={"Authorization": f"Bearer {key}", "X-Tokenomy-Task": task["id"]},
                    )
                    for _ in range(n)
                )
            )

    try:
        answers = asyncio.run(run())
    finally:
        clear_faults(gateway.sim_url)  # the refused never reached the simulator
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 402]
    assert len(ok) + len(refused) == n
    assert 1 <= len(ok) <= k
    err = refused[0].json()["error"]
    assert err["code"] == "insufficient_quota" and f"task {task['id']}" in err["message"]
    rows = gateway.wait_events(n, task_id=task["id"])
    assert len(rows) == n  # the refused are recorded too, at no cost
    spent = sum(r["cost_nanos"] for r in rows)
    assert spent == sum(nanos(r.headers["x-tokenomy-cost"]) for r in ok)
    assert spent <= nanos(task["budget"]["amount"])
    view = api(gateway, key).get(f"/tasks/{task['id']}").json()
    assert view["calls"] == n and nanos(view["cost"]) == spent
    assert nanos(view["budget"]["remaining_amount"]) == nanos(task["budget"]["amount"]) - spent


def test_a_token_budget_refuses_the_call_that_would_pass_it(gateway: Gateway) -> None:
    org = gateway.new_org(10**10)
    key = gateway.new_key(org_id=org)
    task = make_task(gateway, key, {"tokens": 1})
    c = openai.OpenAI(
        base_url=gateway.base_url,
        api_key=key,
        max_retries=0,
        default_headers={"X-Tokenomy-Task": task["id"]},
    )
    with pytest.raises(openai.APIStatusError) as e:  # 402 has no class of its own
        c.chat.completions.create(model="sim-small", messages=MSG, max_tokens=5)  # type: ignore[arg-type]
    assert e.value.status_code == 402 and f"task {task['id']}" in e.value.message


def test_another_organisations_task_is_404_and_changes_nothing(gateway: Gateway) -> None:
    owner_key = gateway.new_key(org_id=gateway.new_org(10**10))
    task = make_task(gateway, owner_key, {"amount": "1.00"})
    other_org = gateway.new_org(10**10)
    other = gateway.new_key(org_id=other_org)
    c = openai.OpenAI(
        base_url=gateway.base_url,
        api_key=other,
        max_retries=0,
        default_headers={"X-Tokenomy-Task": task["id"]},
    )
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="sim-small", messages=MSG)  # type: ignore[arg-type]
    assert e.value.body["code"] == "task_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="sim-small", input="hi", metadata={"task_id": task["id"]})
    assert api(gateway, other).get(f"/tasks/{task['id']}").status_code == 404
    assert api(gateway, owner_key).get(f"/tasks/{task['id']}").json()["calls"] == 0
    gateway.flush()
    assert gateway.services.ledger.balance(other_org) == 10**10


@pytest.mark.parametrize(
    ("budget", "param"),
    [
        ({"amount": "ten"}, "budget.amount"),
        ({"amount": 1.5}, "budget.amount"),
        ({"amount": "-1"}, "budget.amount"),
        ({"tokens": -1}, "budget.tokens"),
        ({"tokens": "5"}, "budget.tokens"),
        ("5", "budget"),
    ],
)
def test_a_malformed_budget_is_400_naming_the_field(
    gateway: Gateway, budget: Any, param: str
) -> None:
    key = gateway.new_key(org_id=gateway.new_org(10**9))
    r = api(gateway, key).post("/tasks", json={"budget": budget})
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_a_budget_needs_an_organisation(gateway: Gateway) -> None:
    r = api(gateway, gateway.key).post("/tasks", json={"budget": {"amount": "1"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "budget"


def test_named_task_groups_chat_and_responses_calls(gateway: Gateway) -> None:
    org = gateway.new_org(10**10)
    key = gateway.new_key(org_id=org)
    name = "run-" + org[-8:]
    c = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    c.chat.completions.create(
        model="sim-small", messages=MSG, extra_headers={"X-Tokenomy-Task": name}
    )  # type: ignore[arg-type]
    c.chat.completions.create(model="sim-small", messages=MSG, metadata={"task_id": name})  # type: ignore[arg-type]
    c.responses.create(model="sim-claude", input="hi", metadata={"task_id": name})
    rows = gateway.wait_events(3, task_id=name)
    assert sorted(r["endpoint"] for r in rows) == ["chat", "chat", "responses"]
    view = api(gateway, key).get(f"/tasks/{name}").json()
    assert view["calls"] == 3 and view["budget"] is None
    assert view["usage"]["input_tokens"] == sum(r["input_tokens"] for r in rows)
    assert view["usage"]["output_tokens"] == sum(r["output_tokens"] for r in rows)
    assert nanos(view["cost"]) == sum(r["cost_nanos"] for r in rows) > 0
    assert 0 <= view["cache_hit_rate"] <= 1 and view["duration_ms"] > 0
    # Another organisation's calls under the same name are its own task.
    assert (
        api(gateway, gateway.new_key(org_id=gateway.new_org())).get(f"/tasks/{name}").status_code
        == 404
    )


def test_a_task_budget_holds_across_two_replicas(sim: ThreadServer, tmp_path: Path) -> None:
    """PostgreSQL + Redis, two gateways: parallel calls of one task split between them
    are admitted only as far as the task's budget covers them all at once."""
    env = {**os.environ, "TOKENOMY_ADMIN_KEY": ADMIN_KEY}
    with throwaway_postgres() as db:
        cfg = make_config(sim.url, tmp_path, db_url=db, redis_url=require_redis())
        replicas = [build_services(cfg, env) for _ in range(2)]
        servers = [ThreadServer(lambda s=s: app_for(s)).start() for s in replicas]
        try:
            first = replicas[0]
            org = first.ledger.create_org("two replicas", "USD").id
            first.ledger.post("topup", org, 10**10)
            secret, rec = first.keys.create("replicas", org_id=org)
            for svc, srv in zip(replicas, servers, strict=True):
                svc.key_cache.put(secret, rec)
                srv.call(svc.refresh_accounts())
            head = {"Authorization": f"Bearer {secret}"}
            body = {"model": "single", "messages": MSG, "max_tokens": 10}
            probe = httpx.post(servers[0].url + "/v1/chat/completions", json=body, headers=head)
            servers[0].call(first.usage_writer.flush())
            with first.engine.connect() as conn:
                held = conn.execute(
                    select(usage_events.c.held_nanos).where(
                        usage_events.c.request_id == probe.headers["x-request-id"]
                    )
                ).scalar_one()
            k = 4
            amount = str(Decimal(k * held + held // 2) / 10**9)
            task = httpx.post(
                servers[1].url + "/v1/tasks", json={"budget": {"amount": amount}}, headers=head
            ).json()
            n = 20
            sim_faults(sim.url, "single-a", ["slow"] * n)

            async def run() -> list[httpx.Response]:
                async with httpx.AsyncClient(timeout=30) as c:
                    return await asyncio.gather(
                        *(
                            c.post(
                                servers[i % 2].url + "/v1/chat/completions",
                                json=body,
                                headers={**head, "X-Tokenomy-Task": task["id"]},
                            )
                            for i in range(n)
                        )
                    )

            try:
                answers = asyncio.run(run())
            finally:
                clear_faults(sim.url)
            ok = [r for r in answers if r.status_code == 200]
            assert {r.status_code for r in answers} <= {200, 402}
            assert 1 <= len(ok) <= k
            for svc, srv in zip(replicas, servers, strict=True):
                srv.call(svc.usage_writer.flush())
            with first.engine.connect() as conn:
                spent = conn.execute(
                    select(func.sum(usage_events.c.cost_nanos)).where(
                        usage_events.c.task_id == task["id"]
                    )
                ).scalar_one()
            assert spent == sum(nanos(r.headers["x-tokenomy-cost"]) for r in ok)
            assert spent <= nanos(amount)
            probe_cost = nanos(probe.headers["x-tokenomy-cost"])
            assert first.ledger.balance(org) == 10**10 - probe_cost - spent
        finally:
            for srv in servers:
                srv.stop()


def test_a_budget_below_what_the_task_spent_is_refused_and_changes_nothing(
    gateway: Gateway,
) -> None:
    key = gateway.new_key(org_id=gateway.new_org(10**10))
    task = make_task(gateway, key, {"amount": "5.00", "tokens": 100_000})
    c = openai.OpenAI(
        base_url=gateway.base_url,
        api_key=key,
        max_retries=0,
        default_headers={"X-Tokenomy-Task": task["id"]},
    )
    raw = c.chat.completions.with_raw_response.create(model="sim-small", messages=MSG)  # type: ignore[arg-type]
    spent = nanos(raw.headers["x-tokenomy-cost"])
    used = raw.parse().usage.total_tokens  # type: ignore[union-attr]
    http = api(gateway, key)
    low = str(Decimal(spent - 1) / 10**9)
    r = http.post(f"/tasks/{task['id']}", json={"budget": {"amount": low}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "budget.amount"
    assert "already spent" in r.json()["error"]["message"]
    r = http.post(f"/tasks/{task['id']}", json={"budget": {"tokens": used - 1}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "budget.tokens"
    view = http.get(f"/tasks/{task['id']}").json()
    assert view["budget"]["amount"] == "5" and view["budget"]["tokens"] == 100_000
    # Exactly what was spent is allowed, and then the next call is refused.
    r = http.post(f"/tasks/{task['id']}", json={"budget": {"amount": str(Decimal(spent) / 10**9)}})
    assert r.status_code == 200 and nanos(r.json()["budget"]["amount"]) == spent
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="sim-small", messages=MSG)  # type: ignore[arg-type]
    assert e.value.status_code == 402
    other = gateway.new_key(org_id=gateway.new_org())
    r = api(gateway, other).post(f"/tasks/{task['id']}", json={"budget": {"amount": "9"}})
    assert r.status_code == 404
