"""End-user budgets: an organisation's budget on one of its end users (OpenAI's ``user`` /
``safety_identifier``, Anthropic's ``metadata.user_id``), held like any other budget, so
parallel calls of one user never together pass it."""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from sqlalchemy import func, select

from tests.conftest import ADMIN_KEY, Gateway, make_config, sim_faults, throwaway_postgres
from tests.needs import require_redis
from tests.servers import ThreadServer
from tests.test_cli_ledger import cli
from tokenomy.app import app_for
from tokenomy.ledger.store import LedgerStore
from tokenomy.services import build_services
from tokenomy.store.db import open_engine
from tokenomy.store.schema import usage_events

MSG = [{"role": "user", "content": "hi"}]


def nanos(cost: Any) -> int:
    return int(Decimal(str(cost)) * 10**9)


def admin(gateway: Gateway) -> httpx.Client:
    return httpx.Client(
        base_url=gateway.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    )


def user_budget(gateway: Gateway, org: str, user: str, **fields: Any) -> dict[str, Any]:
    body = {"scope": "user", "org_id": org, "scope_id": user, "period": "day", **fields}
    r = admin(gateway).post("/admin/budgets", json=body)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def one_hold(gateway: Gateway, key: str) -> int:
    """What one call of these tests holds (its worst case), from a call of no end user."""
    c = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="single", messages=MSG, max_tokens=10)  # type: ignore[arg-type]
    (row,) = gateway.wait_events(1, request_id=raw.headers["x-request-id"])
    held: int = row["held_nanos"]
    assert held > row["cost_nanos"] > 0 and row["end_user"] is None
    return held


def test_parallel_calls_of_an_end_user_never_exceed_their_budget(gateway: Gateway) -> None:
    org = gateway.new_org(10**10)
    key = gateway.new_key(org_id=org)
    held = one_hold(gateway, key)
    k = 4
    amount = str(Decimal(k * held + held // 2) / 10**9)
    budget = user_budget(gateway, org, "alice", amount=amount)
    assert budget["user"] == "alice" and budget["org_id"] == org and budget["scope"] == "user"
    n = 16
    sim_faults(gateway.sim_url, "single-a", ["slow"] * n)  # every hold is open at once
    c = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)

    async def one() -> int:
        try:
            raw = await c.chat.completions.with_raw_response.create(
                model="single",
                messages=MSG,  # type: ignore[arg-type]
                max_tokens=10,
                user="alice",
            )
        except openai.APIStatusError as e:
            assert e.status_code == 402, e.message
            assert "end user 'alice'" in e.message and e.code == "insufficient_quota"
            return -1
        return nanos(raw.headers["x-tokenomy-cost"])

    async def run() -> list[int]:
        return await asyncio.gather(*(one() for _ in range(n)))

    try:
        costs = asyncio.run(run())
    finally:
        httpx.delete(f"{gateway.sim_url}/_sim/faults").raise_for_status()
    ok = [x for x in costs if x >= 0]
    assert 1 <= len(ok) <= k and len(ok) < n
    rows = gateway.wait_events(n, end_user="alice")
    assert len(rows) == n and all(r["org_id"] == org for r in rows)
    spent = sum(r["cost_nanos"] for r in rows)
    assert spent == sum(ok) <= nanos(amount)
    # Another end user of the same org, and calls of no end user, are not held by it.
    plain = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    plain.chat.completions.create(model="single", messages=MSG, max_tokens=10, user="bob")  # type: ignore[arg-type]
    plain.chat.completions.create(model="single", messages=MSG, max_tokens=10)  # type: ignore[arg-type]
    # safety_identifier names the same end user: calls so named spend alice's budget
    # until it runs out.
    spent_more = 0
    for _ in range(2 * k):
        try:
            raw = plain.chat.completions.with_raw_response.create(
                model="single",
                messages=MSG,  # type: ignore[arg-type]
                max_tokens=10,
                safety_identifier="alice",
            )
        except openai.APIStatusError as e:
            assert e.status_code == 402 and "end user 'alice'" in e.message
            break
        spent_more += nanos(raw.headers["x-tokenomy-cost"])
    else:
        pytest.fail("alice's budget never ran out")
    rows = gateway.wait_events(n + 1, end_user="alice", status="ok")
    assert spent + spent_more == sum(r["cost_nanos"] for r in gateway.events(end_user="alice"))
    assert spent + spent_more <= nanos(amount)


def test_anthropic_metadata_user_id_is_held_by_its_budget(gateway: Gateway) -> None:
    org = gateway.new_org(10**10)
    key = gateway.new_key(org_id=org)
    user_budget(gateway, org, "carol", token_limit=1, period="month")
    c = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as e:
        c.messages.create(
            model="sim-small",
            max_tokens=5,
            messages=MSG,  # type: ignore[arg-type]
            metadata={"user_id": "carol"},
        )
    assert e.value.status_code == 402
    body: Any = e.value.body
    assert body["type"] == "error" and "end user 'carol'" in body["error"]["message"]
    # Another user of the org goes through, and is recorded as that user.
    msg = c.messages.create(
        model="sim-small",
        max_tokens=5,
        messages=MSG,
        metadata={"user_id": "dave"},  # type: ignore[arg-type]
    )
    (row,) = gateway.wait_events(1, end_user="dave", org_id=org)
    assert row["output_tokens"] == msg.usage.output_tokens


def test_responses_safety_identifier_is_held_by_its_budget(gateway: Gateway) -> None:
    org = gateway.new_org(10**10)
    key = gateway.new_key(org_id=org)
    user_budget(gateway, org, "erin", token_limit=1, period="lifetime")
    c = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        c.responses.create(model="sim-small", input="hi", safety_identifier="erin")  # type: ignore[call-arg]
    assert e.value.status_code == 402 and "end user 'erin'" in e.value.message
    # With both fields, safety_identifier names the end user (as on a chat call).
    with pytest.raises(openai.APIStatusError) as e:
        c.responses.create(model="sim-small", input="hi", user="zed", safety_identifier="erin")  # type: ignore[call-arg]
    assert e.value.status_code == 402 and "end user 'erin'" in e.value.message
    c.responses.create(model="sim-small", input="hi", user="zed")
    assert gateway.wait_events(1, end_user="erin")[0]["cost_nanos"] == 0


def test_bad_end_user_budgets_are_400_and_change_nothing(gateway: Gateway) -> None:
    http = admin(gateway)
    org = gateway.new_org()
    before = http.get("/admin/budgets").json()["data"]
    bad: list[tuple[dict[str, Any], str]] = [
        ({"scope_id": "alice"}, "org_id"),  # no org
        ({"org_id": "org_missing", "scope_id": "alice"}, "scope_id"),
        ({"org_id": org, "scope_id": ""}, "scope_id"),
        ({"org_id": org, "scope_id": "a\nb"}, "scope_id"),
        ({"org_id": org, "scope_id": "x" * 129}, "scope_id"),
    ]
    for fields, param in bad:
        body = {"scope": "user", "period": "day", "amount": "1", **fields}
        r = http.post("/admin/budgets", json=body)
        assert r.status_code == 400, (fields, r.text)
        assert r.json()["error"]["param"] == param, (fields, r.text)
    assert http.get("/admin/budgets").json()["data"] == before
    # The composite form names both at once.
    r = http.post(
        "/admin/budgets",
        json={"scope": "user", "scope_id": f"{org}:frank", "period": "week", "tokens": 5},
    )
    assert r.status_code == 400  # 'tokens' is not a field: a budget needs an amount or limit
    r = http.post(
        "/admin/budgets",
        json={"scope": "user", "scope_id": f"{org}:frank", "period": "week", "token_limit": 5},
    )
    assert r.status_code == 201 and r.json()["user"] == "frank"
    listed = http.get("/admin/budgets", params={"scope": "user"}).json()["data"]
    assert [b["id"] for b in listed if b["org_id"] == org] == [r.json()["id"]]


def test_cli_sets_an_end_user_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("TOKENOMY_DATABASE_URL", url)
    code, out, _ = cli(capsys, "orgs", "create", "Acme")
    org = out.splitlines()[0]
    code, out, err = cli(
        capsys, "budgets", "set", "--scope", "user", "--org", "Acme", "--id", "alice",
        "--period", "month", "--amount", "2.50",
    )  # fmt: skip
    assert code == 0, err
    (b,) = LedgerStore(open_engine(url)).all_budgets()
    assert b.id == out.strip() and b.scope_id == f"{org}:alice" and b.amount_nanos == 25 * 10**8
    assert "user" in cli(capsys, "budgets", "list")[1]
    code, _, err = cli(
        capsys, "budgets", "set", "--scope", "user", "--id", "alice", "--period", "day",
        "--tokens", "5",
    )  # fmt: skip
    assert code == 2 and "--org" in err
    code, _, err = cli(
        capsys, "budgets", "set", "--scope", "user", "--org", "nobody", "--id", "alice",
        "--period", "day", "--tokens", "5",
    )  # fmt: skip
    assert code == 1 and "nobody" in err


def test_an_end_user_budget_holds_across_two_replicas(sim: ThreadServer, tmp_path: Path) -> None:
    """PostgreSQL + Redis, two gateways: parallel calls of one end user split between
    them are admitted only as far as the user's budget covers them all at once."""
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
            body = {"model": "single", "messages": MSG, "max_tokens": 10}
            head = {"Authorization": f"Bearer {secret}"}
            for svc, srv in zip(replicas, servers, strict=True):
                svc.key_cache.put(secret, rec)
                srv.call(svc.refresh_accounts())
            probe = httpx.post(servers[0].url + "/v1/chat/completions", json=body, headers=head)
            assert probe.status_code == 200, probe.text
            servers[0].call(first.usage_writer.flush())
            with first.engine.connect() as conn:
                held = conn.execute(
                    select(usage_events.c.held_nanos).where(
                        usage_events.c.request_id == probe.headers["x-request-id"]
                    )
                ).scalar_one()
            k = 4
            amount = str(Decimal(k * held + held // 2) / 10**9)
            r = httpx.post(
                servers[1].url + "/admin/budgets",
                json={"scope": "user", "org_id": org, "scope_id": "u-1", "period": "month",
                      "amount": amount},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )  # fmt: skip
            assert r.status_code == 201, r.text
            servers[0].call(first.refresh_accounts())  # the other replica, at once
            n = 50
            sim_faults(sim.url, "single-a", ["slow"] * n)
            clients = [
                openai.AsyncOpenAI(base_url=s.url + "/v1", api_key=secret, max_retries=0)
                for s in servers
            ]

            async def one(i: int) -> int:
                try:
                    raw = await clients[i % 2].chat.completions.with_raw_response.create(
                        model="single",
                        messages=MSG,  # type: ignore[arg-type]
                        max_tokens=10,
                        user="u-1",
                    )
                except openai.APIStatusError as e:
                    assert e.status_code == 402 and "end user 'u-1'" in e.message
                    return -1
                return nanos(raw.headers["x-tokenomy-cost"])

            async def run() -> list[int]:
                return await asyncio.gather(*(one(i) for i in range(n)))

            try:
                costs = asyncio.run(run())
            finally:
                httpx.delete(f"{sim.url}/_sim/faults").raise_for_status()
            ok = [x for x in costs if x >= 0]
            assert 1 <= len(ok) <= k
            for svc, srv in zip(replicas, servers, strict=True):
                srv.call(svc.usage_writer.flush())
            e = usage_events.c
            with first.engine.connect() as conn:
                spent, calls = conn.execute(
                    select(func.sum(e.cost_nanos), func.count()).where(
                        e.end_user == "u-1", e.org_id == org
                    )
                ).one()
            assert calls == n and spent == sum(ok) <= nanos(amount)
            probe_cost = nanos(probe.headers["x-tokenomy-cost"])
            assert first.ledger.balance(org) == 10**10 - probe_cost - spent
        finally:
            for srv in servers:
                srv.stop()


def test_a_new_budget_counts_what_the_user_spent_earlier_in_its_period(
    gateway: Gateway,
) -> None:
    """A budget set mid-month starts from what the user's recorded calls of the month cost
    (read from the usage events by org and end user), not from zero."""
    org = gateway.new_org(10**10)
    key = gateway.new_key(org_id=org)
    held = one_hold(gateway, key)
    c = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    spent = 0
    for _ in range(3):
        raw = c.chat.completions.with_raw_response.create(
            model="single",
            messages=MSG,  # type: ignore[arg-type]
            max_tokens=10,
            user="gina",
        )
        spent += nanos(raw.headers["x-tokenomy-cost"])
    # The same name in another organisation is another end user.
    other = gateway.new_key(org_id=gateway.new_org(10**10))
    openai.OpenAI(base_url=gateway.base_url, api_key=other, max_retries=0).chat.completions.create(
        model="single",
        messages=MSG,  # type: ignore[arg-type]
        max_tokens=10,
        user="gina",
    )
    gateway.wait_events(4, end_user="gina")
    # Room for one more call on top of what was spent, not for four.
    amount = str(Decimal(spent + held + held // 2) / 10**9)
    user_budget(gateway, org, "gina", amount=amount, period="month")
    c.chat.completions.create(model="single", messages=MSG, max_tokens=10, user="gina")  # type: ignore[arg-type]
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="single", messages=MSG, max_tokens=10, user="gina")  # type: ignore[arg-type]
    assert e.value.status_code == 402 and "end user 'gina'" in e.value.message
