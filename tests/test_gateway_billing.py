"""Money through the running gateway: holds, 402s, costs on responses and on the ledger."""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.conftest import Gateway
from tokenomy.billing.catalog import PriceBook
from tokenomy.billing.pricing import price_request
from tokenomy.core.errors import RateLimited
from tokenomy.core.usage import Usage
from tokenomy.ledger.accounts import OrgMeter, Scope

BOOK = PriceBook.load()
MSG_HI = [{"role": "user", "content": "hi"}]
LONG = "Tell me everything about the history of tea. " * 150  # long enough to be cached


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def expected_nanos(row: dict[str, Any], usage: Usage) -> int:
    """The cost recomputed from the catalogue and the usage the client was shown."""
    version = BOOK.version(row["price_version"])
    at = datetime.fromtimestamp(row["ts_ms"] / 1000, UTC)
    return price_request(version, usage, at=at).total.nanos


def nanos(cost: Any) -> int:
    return int(Decimal(str(cost)) * 10**9)


def test_non_streaming_cost_in_header_body_record_and_ledger(gateway: Gateway) -> None:
    org = gateway.new_org(10**9)
    key = gateway.new_key(org_id=org)
    raw = client(gateway, key).chat.completions.with_raw_response.create(
        model="ds-reasoner", messages=[{"role": "user", "content": "Think, then say hi."}]
    )
    r = raw.parse()
    (row,) = gateway.events(request_id=raw.headers["x-request-id"])
    u = r.usage
    assert u is not None and u.completion_tokens_details is not None
    assert u.completion_tokens_details.reasoning_tokens  # a reasoner thinks first
    usage = Usage.from_openai(u.model_dump())
    cost = expected_nanos(row, usage)
    assert cost > 0 and row["cost_nanos"] == cost and row["currency"] == "USD"
    assert nanos(raw.headers["x-tokenomy-cost"]) == cost
    assert nanos(u.model_extra["cost"]) == cost  # type: ignore[index]
    assert row["held_nanos"] >= row["cost_nanos"]
    assert gateway.services.ledger.balance(org) == 10**9 - cost
    assert gateway.services.ledger.trial_balance() == {"USD": 0}


@pytest.mark.parametrize("model", ["ds-reasoner", "opus"])
def test_streamed_cached_and_reasoning_tokens_bill_what_the_vendor_reported(
    gateway: Gateway, model: str
) -> None:
    org = gateway.new_org(10**10)
    c = client(gateway, gateway.new_key(org_id=org))
    system = secrets.token_hex(4) + LONG  # unseen by the (shared) simulator's cache
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Go."}]
    for attempt in range(2):  # the second sight of the prompt reads it from the cache
        raw = c.chat.completions.with_raw_response.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(raw.parse())
        final = chunks[-1]
        assert final.usage is not None and not final.choices
        usage = Usage.from_openai(final.usage.model_dump())
        # The record lands just after the last byte: wait for it.
        (row,) = gateway.wait_events(1, request_id=raw.headers["x-request-id"])
        assert (row["input_tokens"], row["cached_tokens"]) == (
            usage.input_tokens,
            usage.cached_tokens,
        )
        assert row["cost_nanos"] == expected_nanos(row, usage)
        assert nanos(final.usage.model_extra["cost"]) == row["cost_nanos"]  # type: ignore[index]
        if attempt == 1 and model == "ds-reasoner":
            assert usage.cached_tokens > 0 and usage.reasoning_tokens > 0


def test_anthropic_client_with_cache_write_and_read(gateway: Gateway) -> None:
    org = gateway.new_org(10**10)
    c = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.new_key(org_id=org))
    text = secrets.token_hex(4) + LONG  # unseen by the (shared) simulator's cache
    system = [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]
    costs = []
    for _ in range(2):
        raw = c.messages.with_raw_response.create(
            model="opus",
            max_tokens=30,
            system=system,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": "Go."}],
        )
        m = raw.parse()
        (row,) = gateway.events(request_id=raw.headers["x-request-id"])
        usage = Usage.from_anthropic(m.usage.model_dump())
        assert (
            row["cost_nanos"] == expected_nanos(row, usage) == nanos(raw.headers["x-tokenomy-cost"])
        )
        # The body carries it too, as an exact decimal (read from the raw JSON, no floats).
        body = json.loads(raw.http_response.content, parse_float=Decimal)
        assert nanos(body["usage"]["cost"]) == row["cost_nanos"]
        costs.append((usage.cache_write_tokens, usage.cached_tokens, row["cost_nanos"]))
    (w1, r1, c1), (w2, r2, c2) = costs
    assert w1 > 0 and r1 == 0 and w2 == 0 and r2 > 0 and c2 < c1  # reads are cheaper than writes


def test_empty_prepaid_balance_is_402_in_each_dialect(gateway: Gateway) -> None:
    key = gateway.new_key(org_id=gateway.new_org(0))
    with pytest.raises(openai.APIStatusError) as e:
        client(gateway, key).chat.completions.create(
            model="ds-reasoner", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 402
    body = e.value.body
    assert isinstance(body, dict) and body["code"] == "insufficient_quota"
    assert "balance of org" in body["message"]
    r = httpx.post(
        gateway.url + "/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={"model": "opus", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 402
    err = r.json()
    assert err["type"] == "error" and "Insufficient funds" in err["error"]["message"]
    # Refused requests are recorded, and cost nothing.
    rows = gateway.events(key_id=gateway.services.key_cache.lookup(key).id)  # type: ignore[union-attr]
    assert len(rows) == 2 and all(r["http_status"] == 402 and r["cost_nanos"] == 0 for r in rows)


def test_a_small_balance_is_counted_precisely_before_refusing(gateway: Gateway) -> None:
    # The byte bound of this prompt is far above its token count; the counted bound fits.
    org = gateway.new_org(0)
    key = gateway.new_key(org_id=org)
    body = {
        "model": "ds-reasoner",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "你好" * 400}],
    }
    stage = gateway.services.ledger_stage
    from tokenomy.core.call import Call

    call = Call(
        "chat", "openai", body, "ds-reasoner", False, gateway.services.key_cache.lookup(key)
    )  # type: ignore[arg-type]
    call.route = gateway.services.registry.resolve("ds-reasoner")
    at = datetime.now(UTC)
    deps = gateway.services.pipeline.candidates(call)
    loose, _ = stage.pricer.worst(
        call, deps, stage.accounts.orgs[org].currency, stage.pricer.prompt_bound(call), 4096, at
    )
    gateway.services.ledger.post("topup", org, loose // 2)
    gateway.server.call(gateway.services.refresh_accounts())
    r = httpx.post(
        gateway.base_url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200, r.text
    assert gateway.services.ledger.balance(org) >= 0


def test_daily_budget_on_a_key_refuses_and_names_it(gateway: Gateway) -> None:
    org = gateway.new_org(10**12)
    key = gateway.new_key(org_id=org)
    key_id = gateway.services.key_cache.lookup(key).id  # type: ignore[union-attr]
    b = gateway.services.ledger.set_budget(
        Scope.KEY, key_id, "day", amount_nanos=1, tz="Asia/Shanghai"
    )
    gateway.server.call(gateway.services.refresh_accounts())
    with pytest.raises(openai.APIStatusError) as e:
        client(gateway, key).chat.completions.create(
            model="ds-reasoner", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 402 and b.id in str(e.value.body)
    gateway.services.ledger.delete_budget(b.id)
    gateway.server.call(gateway.services.refresh_accounts())
    client(gateway, key).chat.completions.create(
        model="ds-reasoner", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )


def test_models_list_carries_openrouter_pricing(gateway: Gateway) -> None:
    r = httpx.get(gateway.base_url + "/models", headers={"Authorization": f"Bearer {gateway.key}"})
    models = {m["id"]: m for m in r.json()["data"]}
    p = models["opus"]["pricing"]
    assert (p["prompt"], p["completion"], p["input_cache_read"]) == (
        "0.000005",
        "0.000025",
        "0.0000005",
    )
    assert (
        orjson.loads(orjson.dumps(models["opus"]))["pricing"]["input_cache_write"] == "0.00000625"
    )


class _RefuseAfterAWait:
    """A stage ahead of the ledger that refuses one marked request, after a wait."""

    span_name = "test.refuse"

    def __init__(self) -> None:
        self.afters = 0

    async def before(self, call: Any) -> None:
        await asyncio.sleep(0.01)
        if call.body.get("user") == "refuse-me":
            raise RateLimited("refused by the test stage", retry_after=1)

    async def after(self, call: Any) -> None:
        self.afters += 1


def test_a_call_refused_by_an_earlier_stage_holds_and_costs_nothing(gateway: Gateway) -> None:
    org_id = gateway.new_org(10**9)
    key = gateway.new_key(org_id=org_id)
    meter = OrgMeter(gateway.services.ledger.org(org_id))
    stage = _RefuseAfterAWait()
    stages = gateway.services.pipeline.stages
    stages.insert(0, stage)
    try:
        r = httpx.post(
            gateway.base_url + "/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "sim-small", "user": "refuse-me", "messages": MSG_HI},
        )
        ok = httpx.post(
            gateway.base_url + "/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "sim-small", "messages": MSG_HI},
        )
    finally:
        stages.remove(stage)
    assert r.status_code == 429 and "test stage" in r.json()["error"]["message"]
    assert ok.status_code == 200
    assert stage.afters == 1  # only the call it passed is settled by it
    state = gateway.server.call(gateway.services.live.org_state(meter))
    assert state.held == 0  # nothing held for the refused call; the other one settled
    rows = {row["http_status"]: row for row in gateway.events(org_id=org_id)}
    assert set(rows) == {429, 200} and rows[429]["cost_nanos"] == 0
    assert gateway.services.ledger.balance(org_id) == 10**9 - rows[200]["cost_nanos"]
    assert gateway.services.ledger.trial_balance() == {"USD": 0}


@pytest.mark.parametrize("stream", [False, True])
def test_one_hour_cache_writes_bill_at_their_own_price(gateway: Gateway, stream: bool) -> None:
    org = gateway.new_org(10**10)
    c = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.new_key(org_id=org))
    costs = []
    for ttl in ("5m", "1h"):
        text = secrets.token_hex(4) + LONG  # unseen by the (shared) simulator's cache
        cc = {"type": "ephemeral", "ttl": ttl}
        system = [{"type": "text", "text": text, "cache_control": cc}]
        kw: dict[str, Any] = {
            "model": "opus",
            "max_tokens": 30,
            "system": system,
            "messages": [{"role": "user", "content": "Go."}],
        }
        if stream:
            with c.messages.stream(**kw) as s:
                m = s.get_final_message()
                request_id = s.response.headers["x-request-id"]
        else:
            raw = c.messages.with_raw_response.create(**kw)
            m = raw.parse()
            request_id = raw.headers["x-request-id"]
        usage = Usage.from_anthropic(m.usage.model_dump())
        assert usage.cache_write_tokens > 0
        assert usage.cache_write_1h_tokens == (usage.cache_write_tokens if ttl == "1h" else 0)
        (row,) = gateway.wait_events(1, request_id=request_id)
        assert row["cache_write_tokens"] == usage.cache_write_tokens
        assert row["cache_write_1h_tokens"] == usage.cache_write_1h_tokens  # re-priceable
        assert row["cost_nanos"] == expected_nanos(row, usage)
        if ttl == "1h":  # billed at $10 a million, not the 5-minute write's $6.25
            as_5m = replace(usage, cache_write_1h_tokens=0)
            extra = usage.cache_write_tokens * (10_000 - 6_250)  # nanos: tokens x $3.75/M
            assert row["cost_nanos"] - expected_nanos(row, as_5m) == extra
        costs.append(row["cost_nanos"])
    assert gateway.services.ledger.balance(org) == 10**10 - sum(costs)
