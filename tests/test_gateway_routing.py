"""Routing through the running gateway: price order, preferences, fallbacks, breaker, limits."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, sim_served, sim_stats

MSG = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def chat(gateway: Gateway, **body: Any) -> httpx.Response:
    return httpx.post(
        gateway.base_url + "/chat/completions",
        json={"messages": MSG, "max_tokens": 8, **body},
        headers={"Authorization": f"Bearer {gateway.key}"},
    )


def served_by(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.headers["x-tokenomy-deployment"]


def test_cheapest_first_and_every_preference_changes_the_choice(gateway: Gateway) -> None:
    assert served_by(chat(gateway, model="routed")) == "sim/cheap-a"
    # Tools are a need: the cheap deployment has none.
    assert served_by(chat(gateway, model="routed", tools=TOOLS)) == "sim-backup/dear-b"
    assert served_by(chat(gateway, model="routed", provider={"order": ["sim-backup"]})) == (
        "sim-backup/dear-b"
    )
    assert served_by(chat(gateway, model="routed", provider={"ignore": ["sim"]})) == (
        "sim-backup/dear-b"
    )
    assert served_by(chat(gateway, model="routed", provider={"only": ["sim-backup"]})) == (
        "sim-backup/dear-b"
    )
    # max_price is a hard filter in USD per million: Opus's 5 is over 1, MiniMax's 0.3 not.
    r = chat(gateway, model="routed", tools=TOOLS, provider={"max_price": {"prompt": 1}})
    assert r.status_code == 400 and "No deployment" in r.json()["error"]["message"]
    assert served_by(chat(gateway, model="routed:floor")) == "sim/cheap-a"


def test_bad_provider_object_is_a_400_naming_the_field(gateway: Gateway) -> None:
    r = chat(gateway, model="routed", provider={"sort": "vibes"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "provider.sort"
    r = chat(gateway, model="routed", provider={"nope": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "provider.nope"


def test_fallback_bills_only_the_deployment_that_served_and_the_breaker_rests_it(
    gateway: Gateway,
) -> None:
    org = gateway.new_org(10**10)
    key = gateway.new_key(org_id=org)
    c = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    dead_calls = []
    for _ in range(5):
        before = sim_served(sim_stats(gateway.sim_url), "sim-fail-503")
        raw = c.chat.completions.with_raw_response.create(
            model="dead-first",
            messages=MSG,  # type: ignore[arg-type]
            max_tokens=8,
        )
        assert raw.headers["x-tokenomy-deployment"] == "sim-backup/alive-b"
        (row,) = gateway.wait_events(1, request_id=raw.headers["x-request-id"])
        assert row["deployment"] == "sim-backup/alive-b"
        assert row["price_version"].startswith("anthropic/claude-opus-4-6")
        dead_calls.append(sim_served(sim_stats(gateway.sim_url), "sim-fail-503") - before)
    # Three failures in a row open the breaker: the dead deployment is no longer tried.
    assert dead_calls[:3] == [1, 1, 1] and dead_calls[3:] == [0, 0]
    rows = gateway.events(org_id=org)
    assert [r["attempts"] for r in sorted(rows, key=lambda r: r["ts_ms"])] == [2, 2, 2, 1, 1]
    total = sum(r["cost_nanos"] for r in rows)
    assert gateway.services.ledger.balance(org) == 10**10 - total


def test_model_rate_limit_answers_429_with_openai_headers(gateway: Gateway) -> None:
    seen = [chat(gateway, model="limited") for _ in range(4)]
    assert [r.status_code for r in seen[:3]] == [200, 200, 200]
    assert seen[0].headers["x-ratelimit-limit-requests"] == "3"
    assert seen[0].headers["x-ratelimit-remaining-requests"] == "2"
    last = seen[3]
    assert last.status_code == 429 and int(last.headers["retry-after"]) >= 1
    assert last.headers["x-ratelimit-remaining-requests"] == "0"
    assert last.json()["error"]["type"] in ("requests", "rate_limit_exceeded", "rate_limit_error")


def test_queue_view_and_max_wait_header(gateway: Gateway) -> None:
    r = httpx.get(gateway.base_url + "/queue", headers={"Authorization": f"Bearer {gateway.key}"})
    assert r.status_code == 200 and r.json() == {"object": "list", "data": []}
    r = chat(gateway, model="routed", **{})
    bad = httpx.post(
        gateway.base_url + "/chat/completions",
        json={"model": "routed", "messages": MSG},
        headers={"Authorization": f"Bearer {gateway.key}", "X-Tokenomy-Max-Wait": "soon"},
    )
    assert bad.status_code == 400 and "X-Tokenomy-Max-Wait" in bad.json()["error"]["message"]


@pytest.mark.parametrize("suffix", [":nitro", ":floor"])
def test_suffixes_resolve_the_base_model(gateway: Gateway, suffix: str) -> None:
    r = chat(gateway, model="routed" + suffix)
    assert r.status_code == 200 and r.json()["model"] in ("routed", "cheap-a", "dear-b")


def test_latency_tolerant_work_is_not_sent_to_a_dearer_vendor_for_its_cheaper_power(
    gateway: Gateway,
) -> None:
    # Interactive: the cheaper (and nearer) us-east deployment.
    assert served_by(chat(gateway, model="placed")) == "sim/near-a"
    # Flex: cn-west's power is a fifth of the price, but far-b is a vendor billed at
    # sim-large, 20x sim-small per token: its power is in its price, and it saves nothing.
    r = chat(gateway, model="placed", service_tier="flex")
    assert served_by(r) == "sim/near-a"
    placement = r.headers["x-tokenomy-placement"]
    assert "region=us-east" in placement and "energy_usd=0;" in placement
    r = httpx.post(
        gateway.base_url + "/chat/completions",
        json={"model": "placed", "messages": MSG, "max_tokens": 8, "service_tier": "flex"},
        headers={"Authorization": f"Bearer {gateway.key}", "X-Tokenomy-Deadline": "0.1"},
    )
    assert served_by(r) == "sim/near-a"


async def test_a_full_deployment_queues_sheds_and_shows_the_queue(gateway: Gateway) -> None:
    import asyncio

    headers = {"Authorization": f"Bearer {gateway.key}"}
    body = {"model": "capped", "messages": MSG, "max_tokens": 20}
    async with httpx.AsyncClient(base_url=gateway.base_url, headers=headers, timeout=30) as c:
        # About a second at the simulator's slow pace: the one slot is taken meanwhile.
        first = asyncio.create_task(c.post("/chat/completions", json=body))
        await asyncio.sleep(0.3)
        shed = await c.post("/chat/completions", json=body, headers={"X-Tokenomy-Max-Wait": "0"})
        assert shed.status_code == 503 and int(shed.headers["retry-after"]) >= 1
        waiter = asyncio.create_task(c.post("/chat/completions", json=body))
        await asyncio.sleep(0.2)
        view = (await c.get("/queue")).json()["data"]
        assert [(e["deployment"], e["position"]) for e in view] == [("sim/q-sim-slow", 0)]
        done, queued = await first, await waiter
    assert done.status_code == 200 and queued.status_code == 200
    assert queued.headers["x-tokenomy-queue-position"] == "0"  # first in line
    assert int(queued.headers["x-tokenomy-queue-wait-ms"]) > 100
    assert gateway.services.queues.depth == 0


def test_provider_preferences_are_not_forwarded_to_the_vendor(gateway: Gateway) -> None:
    # Through the Anthropic translation too: a vendor would reject an unknown field.
    for model in ("routed", "opus"):
        r = chat(gateway, model=model, provider={"sort": "price", "allow_fallbacks": True})
        assert r.status_code == 200, r.text
    sent = gateway.services.pipeline._upstream_request
    from tokenomy.core.call import Call

    call = Call(
        "chat",
        "openai",
        {"model": "m", "messages": MSG, "provider": {}},
        "m",
        False,
        gateway.services.key_cache.lookup(gateway.key),
    )  # type: ignore[arg-type]
    assert "provider" not in sent(call, "openai")[1]
    assert "provider" not in sent(call, "anthropic")[1]
