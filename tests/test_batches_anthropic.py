"""Anthropic's Message Batches, driven by the official anthropic SDK against the running
gateway and simulator: any model (translated for OpenAI-dialect vendors), results by
custom_id, each request billed once, cancel, delete and bad input."""

from __future__ import annotations

import time
from typing import Any

import anthropic
import pytest

from tests.conftest import Gateway
from tests.test_batches_openai import held, results_of


def claude(gateway: Gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def request(i: int, model: str = "sim-small", **params: Any) -> dict[str, Any]:
    return {
        "custom_id": f"msg-{i}",
        "params": {
            "model": model,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": f"Tell me about {i}."}],
            **params,
        },
    }


def wait_ended(c: anthropic.Anthropic, batch_id: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while (b := c.messages.batches.retrieve(batch_id)).processing_status != "ended":
        assert time.monotonic() < deadline, b.request_counts
        time.sleep(0.2)
    return b


def test_anthropic_sdk_runs_a_message_batch_on_both_dialects_billing_each_once(
    gateway: Gateway,
) -> None:
    start = 10**9
    org = gateway.new_org(start)
    c = claude(gateway, gateway.new_key(org_id=org))
    # sim-small's vendor speaks OpenAI's protocol (translated), sim-claude Anthropic's.
    reqs = [request(i, "sim-small" if i % 2 else "sim-claude") for i in range(60)]
    b = c.messages.batches.create(requests=reqs)  # type: ignore[arg-type]
    assert b.id.startswith("msgbatch_") and b.processing_status == "in_progress"
    assert b.request_counts.processing == 60 and b.results_url is None
    done = wait_ended(c, b.id)
    assert done.request_counts.succeeded == 60 and done.request_counts.processing == 0
    assert done.ended_at is not None and done.results_url
    got = {r.custom_id: r for r in c.messages.batches.results(b.id)}
    assert sorted(got) == sorted(f"msg-{i}" for i in range(60))
    for r in got.values():
        assert r.result.type == "succeeded"
        assert r.result.message.type == "message" and r.result.message.content
    results = results_of(gateway, b.id)
    assert gateway.services.ledger.balance(org) == start - sum(r["cost_nanos"] for r in results)
    assert all(r["cost_nanos"] > 0 for r in results)
    assert held(gateway, org) == 0
    assert b.id in [x.id for x in c.messages.batches.list(limit=5)]
    assert c.messages.batches.delete(b.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        c.messages.batches.retrieve(b.id)


def test_message_batch_cancel_gives_canceled_results_and_releases_holds(
    gateway: Gateway,
) -> None:
    start = 10**9
    org = gateway.new_org(start)
    c = claude(gateway, gateway.new_key(org_id=org))
    b = c.messages.batches.create(
        requests=[request(i, "capped", max_tokens=6) for i in range(10)]  # type: ignore[misc]
    )
    with pytest.raises(anthropic.BadRequestError):
        c.messages.batches.delete(b.id)  # still processing
    assert c.messages.batches.cancel(b.id).processing_status in ("canceling", "ended")
    done = wait_ended(c, b.id)
    counts = done.request_counts
    assert counts.canceled > 0 and counts.succeeded + counts.canceled == 10
    kinds = [r.result.type for r in c.messages.batches.results(b.id)]
    assert kinds.count("canceled") == counts.canceled and len(kinds) == 10
    results = results_of(gateway, b.id)
    assert gateway.services.ledger.balance(org) == start - sum(r["cost_nanos"] for r in results)
    assert held(gateway, org) == 0
    with pytest.raises(anthropic.BadRequestError):
        c.messages.batches.cancel(b.id)  # ended


def test_bad_message_batch_requests_are_refused_in_anthropics_shape_holding_nothing(
    gateway: Gateway,
) -> None:
    org = gateway.new_org(10**9)
    c = claude(gateway, gateway.new_key(org_id=org, models=["sim-small"]))
    bad: list[Any] = [request(0), request(0), request(2, "opus"), {"custom_id": "x"}]
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.batches.create(requests=bad)
    msg = e.value.message
    assert "requests.1.custom_id" in msg and "requests.2" in msg and "requests.3" in msg
    assert e.value.body["type"] == "error"  # type: ignore[index]
    assert held(gateway, org) == 0
    assert c.messages.batches.list().data == []
    with pytest.raises(anthropic.NotFoundError):
        c.messages.batches.retrieve("msgbatch_nope")
    poor = claude(gateway, gateway.new_key(org_id=gateway.new_org(1000)))
    with pytest.raises(anthropic.APIStatusError) as e402:
        poor.messages.batches.create(requests=[request(i, max_tokens=4000) for i in range(20)])  # type: ignore[misc]
    assert e402.value.status_code == 402


def test_message_batches_list_pages_with_after_id_and_before_id(gateway: Gateway) -> None:
    c = claude(gateway, gateway.new_key(org_id=gateway.new_org(10**9)))
    made = [c.messages.batches.create(requests=[request(0)]).id for _ in range(3)]  # type: ignore[list-item]
    newest_first = made[::-1]
    page = c.messages.batches.list(limit=2)
    assert [x.id for x in page.data] == newest_first[:2] and page.has_more
    older = c.messages.batches.list(limit=2, after_id=page.data[-1].id)
    assert [x.id for x in older.data] == newest_first[2:]
    newer = c.messages.batches.list(limit=1, before_id=newest_first[2])
    assert [x.id for x in newer.data] == [newest_first[1]] and newer.has_more
    for bid in made:
        wait_ended(c, bid)
