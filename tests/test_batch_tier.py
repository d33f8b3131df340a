"""``service_tier: batch`` is held and charged at the catalogue's batch price, and recorded."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx

from tests.conftest import Gateway
from tokenomy.billing.catalog import PriceBook
from tokenomy.billing.pricing import price_request
from tokenomy.core.usage import Usage

BOOK = PriceBook.load()
MSG = [{"role": "user", "content": "Say something about tea, at length."}]


def chat(gateway: Gateway, key: str, **body: Any) -> httpx.Response:
    r = httpx.post(
        gateway.base_url + "/chat/completions",
        json={"messages": MSG, "max_tokens": 40, **body},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r


def row_of(gateway: Gateway, r: httpx.Response) -> dict[str, Any]:
    (row,) = gateway.wait_events(1, request_id=r.headers["x-request-id"])
    return row


def by_hand_nanos(usage: dict[str, int], inp: str, out: str, multiplier: str) -> int:
    """Decimal per million tokens to nanos, rounded half-up once: the catalogue's rule."""
    exact = (
        (usage["prompt_tokens"] * Decimal(inp) + usage["completion_tokens"] * Decimal(out))
        * Decimal(multiplier)
        / Decimal(10**6)
    )
    return int((exact * 10**9).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_batch_tier_is_held_and_charged_at_the_catalogue_batch_price_exactly(
    gateway: Gateway,
) -> None:
    org = gateway.new_org(10**9)
    key = gateway.new_key(org_id=org)
    std = chat(gateway, key, model="sim-small")
    batch = chat(gateway, key, model="sim-small", service_tier="batch")
    std_row, batch_row = row_of(gateway, std), row_of(gateway, batch)
    # sim/sim-small: input 0.10, output 0.40 USD per million; batch multiplier 0.5.
    usage = batch.json()["usage"]
    assert usage["completion_tokens"] > 0
    expect = by_hand_nanos(usage, "0.10", "0.40", "0.5")
    version = BOOK.version(batch_row["price_version"])
    at = datetime.fromtimestamp(batch_row["ts_ms"] / 1000, UTC)
    assert expect == price_request(version, Usage.from_openai(usage), at=at, batch=True).total.nanos
    assert batch_row["cost_nanos"] == expect > 0
    assert batch.headers["x-tokenomy-cost"] == str(Decimal(expect) / 10**9)
    assert batch_row["price_tier"] == "batch"
    # The standard call, same prompt and cap: twice the price, and a hold about twice.
    assert std_row["price_tier"] == "standard"
    assert std_row["cost_nanos"] == by_hand_nanos(std.json()["usage"], "0.10", "0.40", "1")
    assert abs(2 * batch_row["held_nanos"] - std_row["held_nanos"]) <= 2
    assert batch_row["held_nanos"] >= batch_row["cost_nanos"]
    assert gateway.services.ledger.balance(org) == 10**9 - expect - std_row["cost_nanos"]


def test_batch_tier_without_a_catalogue_batch_price_is_billed_and_recorded_standard(
    gateway: Gateway,
) -> None:
    org = gateway.new_org(10**9)
    key = gateway.new_key(org_id=org)
    # routed's cheap deployment is billed at MiniMax-M2.5, which has no batch offer.
    r = chat(gateway, key, model="routed", service_tier="batch")
    row = row_of(gateway, r)
    assert row["price_version"].startswith("minimax/MiniMax-M2.5")
    assert BOOK.version(row["price_version"]).batch_multiplier is None
    at = datetime.fromtimestamp(row["ts_ms"] / 1000, UTC)
    usage = Usage.from_openai(r.json()["usage"])
    version = BOOK.version(row["price_version"])
    assert row["cost_nanos"] == price_request(version, usage, at=at).total.nanos > 0
    assert row["price_tier"] == "standard"
