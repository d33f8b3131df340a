"""Analytics for agent work: tokens per task in OpenRouter's bands, the costliest tasks,
prompt-cache hit rates by model and vendor, and what prompt caching saved, in
``GET /v1/usage`` and ``tokenomy usage``, checked against the raw usage events."""

from __future__ import annotations

import secrets
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.conftest import Gateway
from tests.test_cli_ledger import cli
from tokenomy.analytics.agents import BANDS, band_of

MSG = [{"role": "user", "content": "hi"}]


def long_prompt(words: int = 1800) -> str:
    """A prompt long enough for the simulator's prompt cache, fresh each time (the cache
    keys each message by a digest of all of it) and of the same length in tokens each
    time: a random tag in every word tokenized into 5 to 11 tokens a word by chance,
    which once took the long task past its band."""
    return f"run {secrets.token_hex(4)}: " + " ".join(f"word{i % 97}" for i in range(words))


def test_bands_put_each_bound_in_the_band_above() -> None:
    assert [band_of(n) for n in (0, 9_999, 10_000, 99_999, 100_000, 999_999)] == [
        "<10K", "<10K", "10K-100K", "10K-100K", "100K-1M", "100K-1M"
    ]  # fmt: skip
    assert band_of(1_000_000) == band_of(10**12) == ">1M"
    assert [b[0] for b in BANDS] == ["<10K", "10K-100K", "100K-1M", ">1M"]


def run_agents(gateway: Gateway, key: str) -> dict[str, str]:
    """Three tasks: a long one re-reading its context (cached after the first call), a
    short one, and an Anthropic one that writes then reads the cache."""
    c = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    names = {"long": f"long-{secrets.token_hex(3)}", "short": f"short-{secrets.token_hex(3)}"}
    names["claude"] = f"claude-{secrets.token_hex(3)}"
    context = long_prompt()
    for _ in range(6):
        c.chat.completions.create(
            model="sim-small",
            messages=[{"role": "user", "content": context}],
            max_tokens=16,
            extra_headers={"X-Tokenomy-Task": names["long"]},
        )
    c.chat.completions.create(
        model="sim-small",
        messages=MSG,  # type: ignore[arg-type]
        max_tokens=8,
        metadata={"task_id": names["short"]},
    )
    a = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    system = [{"type": "text", "text": long_prompt(), "cache_control": {"type": "ephemeral"}}]
    for _ in range(2):
        a.messages.create(
            model="opus",
            max_tokens=8,
            system=system,  # type: ignore[arg-type]
            messages=MSG,  # type: ignore[arg-type]
            extra_headers={"X-Tokenomy-Task": names["claude"]},
        )
    return names


@pytest.fixture(scope="module")
def agent_run(gateway: Gateway) -> tuple[Gateway, str, str, dict[str, str]]:
    org = gateway.new_org(10**12)
    key = gateway.new_key(org_id=org)
    names = run_agents(gateway, key)
    gateway.wait_events(9, org_id=org)
    return gateway, key, org, names


def usage_view(gateway: Gateway, key: str, view: str, **params: Any) -> Any:
    r = httpx.get(
        gateway.base_url + "/usage",
        params={"view": view, **params},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_tasks_view_bands_and_top_tasks_match_the_events(
    agent_run: tuple[Gateway, str, str, dict[str, str]],
) -> None:
    gateway, key, org, names = agent_run
    rows = gateway.events(org_id=org)
    per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        t = per[r["task_id"]]
        t["calls"] += 1
        t["tokens"] += r["input_tokens"] + r["output_tokens"]
        t["cost"] += r["cost_nanos"]
    assert set(per) == set(names.values())
    assert 10_000 <= per[names["long"]]["tokens"] < 100_000  # the long task's band
    data = usage_view(gateway, key, "tasks", limit=2)
    assert data["tasks"] == 3
    bands = {b["band"]: b for b in data["bands"]}
    for name, band in bands.items():
        inside = [t for t in per.values() if band_of(t["tokens"]) == name]
        assert band["tasks"] == len(inside), name
        assert band["total_tokens"] == sum(t["tokens"] for t in inside)
        assert sum(band["cost_nanos"].values()) == sum(t["cost"] for t in inside)
    assert bands["10K-100K"]["tasks"] >= 1 and bands[">1M"]["tasks"] == 0
    ranked = sorted(per, key=lambda n: -per[n]["cost"])[:2]
    top = data["top_tasks"]
    assert [t["task_id"] for t in top] == ranked
    for t in top:
        assert t["calls"] == per[t["task_id"]]["calls"]
        assert t["cost_nanos"] == {"USD": per[t["task_id"]]["cost"]}
        assert t["band"] == band_of(per[t["task_id"]]["tokens"])
    long = next(t for t in data["top_tasks"] if t["task_id"] == names["long"])
    assert long["cached_tokens"] > 0 and 0.5 < long["cache_hit_rate"] < 1


def test_cache_view_hit_rates_and_savings_are_exact(
    agent_run: tuple[Gateway, str, str, dict[str, str]],
) -> None:
    gateway, key, org, _ = agent_run
    rows = [r for r in gateway.events(org_id=org) if r["status"] == "ok"]
    data = usage_view(gateway, key, "cache")
    by = {(r["model"], r["vendor"]): r for r in data["by_model"]}
    for (model, vendor), got in by.items():
        mine = [r for r in rows if (r["model"], r["vendor"]) == (model, vendor)]
        assert got["input_tokens"] == sum(r["input_tokens"] for r in mine)
        assert got["cached_tokens"] == sum(r["cached_tokens"] for r in mine)
        assert got["hit_rate"] == got["cached_tokens"] / got["input_tokens"]
    assert {m for m, _ in by} == {"sim-small", "opus"}
    inp = sum(r["input_tokens"] for r in rows)
    cached = sum(r["cached_tokens"] for r in rows)
    assert data["input_tokens"] == inp and data["cached_tokens"] == cached > 0
    # sim-small: input 0.10, cached 0.01 per million; Claude Opus 4.6: input 5, cached
    # 0.50, cache writes 6.25. Saved: 90 and 4,500 nanos per cached token; cache writes
    # cost 1,250 nanos a token above the input price.
    small = sum(r["cached_tokens"] for r in rows if r["model"] == "sim-small")
    opus = sum(r["cached_tokens"] for r in rows if r["model"] == "opus")
    written = sum(r["cache_write_tokens"] for r in rows if r["model"] == "opus")
    assert small > 0 and opus > 0 and written > 0
    assert data["saved_nanos"] == {"USD": small * 90 + opus * 4_500}
    assert data["write_premium_nanos"] == {"USD": written * 1_250}
    saved = {r["model"]: r["saved_nanos"] for r in data["savings"]}
    assert saved == {"sim-small": small * 90, "claude-opus-4-6": opus * 4_500}
    # What the ledger billed agrees: a cached token cost the cached price, not the full.
    assert sum(r["cost_nanos"] for r in rows) == sum(
        int(
            (r["input_tokens"] - r["cached_tokens"] - r["cache_write_tokens"]) * p[0]
            + r["cached_tokens"] * p[1]
            + r["cache_write_tokens"] * p[2]
            + r["output_tokens"] * p[3]
        )
        for r in rows
        for p in [(100, 10, 100, 400) if r["model"] == "sim-small" else (5000, 500, 6250, 25_000)]
    )


def test_another_keys_view_sees_none_of_these_tasks(
    agent_run: tuple[Gateway, str, str, dict[str, str]],
) -> None:
    gateway, _, _, names = agent_run
    other = gateway.new_key(org_id=gateway.new_org(10**10))
    data = usage_view(gateway, other, "tasks")
    assert data["tasks"] == 0 and data["top_tasks"] == []
    assert not set(names.values()) & {t["task_id"] for t in data["top_tasks"]}
    assert usage_view(gateway, other, "cache")["saved_nanos"] == {}


def test_cli_shows_the_task_and_cache_views(
    agent_run: tuple[Gateway, str, str, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gateway, _, org, names = agent_run
    monkeypatch.setenv("TOKENOMY_DATABASE_URL", gateway.services.config.database.url)
    code, out, err = cli(capsys, "usage", "tasks", "--org", org, "--format", "json")
    assert code == 0, err
    body = orjson.loads(out)
    assert body["view"] == "tasks" and body["data"]["tasks"] == 3
    code, out, err = cli(capsys, "usage", "tasks", "--org", org)
    assert code == 0 and names["long"] in out and "10K-100K" in out and "cost_USD" in out
    code, out, err = cli(capsys, "usage", "cache", "--org", org)
    assert code == 0, err
    assert "saved_USD" in out and "hit_rate" in out and "claude-opus-4-6" in out
    code, out, _ = cli(capsys, "usage", "cache", "--org", org, "--format", "csv")
    assert code == 0 and out.splitlines()[0].startswith("model,vendor")


def test_savings_follow_each_calls_price_tier_and_batch_price(tmp_path: Path) -> None:
    """A tiered price bills a call by its prompt's size; savings do too (grouped by prompt
    size for such versions), and batch-tier calls save at the batch price. The events are
    written as the gateway writes them; the prices are the catalogue's."""
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from tokenomy.analytics.agents import cache_savings
    from tokenomy.billing.catalog import PriceBook
    from tokenomy.store.db import migrate, open_engine
    from tokenomy.store.schema import usage_events

    book = PriceBook.load()
    at = datetime(2026, 9, 1, tzinfo=UTC)
    tiered = book.lookup("volcengine", "doubao-seed-2-0-lite-260428", at)
    small = book.lookup("sim", "sim-small", at)
    assert len(tiered.tiers) == 3 and small.batch_multiplier == Decimal("0.5")
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    migrate(engine)
    ts = int(at.timestamp() * 1000)

    def event(i: int, version: str, prompt: int, cached: int, tier: str = "standard") -> Any:
        return {
            "request_id": f"req_{i}", "ts_ms": ts + i, "key_id": "k", "org_id": "o",
            "endpoint": "chat", "dialect": "openai", "model": "m", "vendor": "v",
            "stream": False, "status": "ok", "http_status": 200, "input_tokens": prompt,
            "cached_tokens": cached, "cache_write_tokens": 0, "output_tokens": 1,
            "reasoning_tokens": 0, "usage_source": "upstream", "latency_ms": 1,
            "attempts": 1, "cost_nanos": 1, "list_cost_nanos": 1, "price_version": version,
            "price_tier": tier, "held_nanos": 0,
        }  # fmt: skip

    rows = [
        event(1, tiered.id, 10_000, 8_000),  # up to 32K: 0.6 - 0.12 = 0.48 per M
        event(2, tiered.id, 50_000, 40_000),  # up to 128K: 0.9 - 0.18 = 0.72 per M
        event(3, tiered.id, 50_000, 1_000),
        event(4, small.id, 5_000, 4_000),  # 0.10 - 0.01 = 0.09 per M
        event(5, small.id, 5_000, 4_000, "batch"),  # at half price: 0.045 per M
        event(6, "gone/model/USD@2020-01-01T00:00:00Z", 5_000, 3_000),
    ]
    with engine.begin() as conn:
        conn.execute(insert(usage_events), rows)
    got = cache_savings(engine, ts, ts + 60_000, book=book)
    cny = 8_000 * 480 + 41_000 * 720
    usd = 4_000 * 90 + 4_000 * 45
    assert got["saved_nanos"] == {"CNY": cny, "USD": usd}
    assert got["unpriced_cached_tokens"] == 3_000
    assert {(r["model"], r["saved_nanos"]) for r in got["by_model"]} == {
        ("doubao-seed-2-0-lite-260428", cny),
        ("sim-small", usd),
    }


def test_write_premium_prices_one_hour_writes_at_their_own_price(tmp_path: Path) -> None:
    """A one-hour cache write costs twice the input price (Opus 4.6: $10 against $5 per
    million), a five-minute one 1.25x ($6.25): the premium counts each at its own price."""
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from tokenomy.analytics.agents import cache_savings
    from tokenomy.billing.catalog import PriceBook
    from tokenomy.store.db import migrate, open_engine
    from tokenomy.store.schema import usage_events

    book = PriceBook.load()
    at = datetime(2026, 9, 1, tzinfo=UTC)
    opus = book.lookup("anthropic", "claude-opus-4-6", at)
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    migrate(engine)
    ts = int(at.timestamp() * 1000)
    row = {
        "request_id": "req_1", "ts_ms": ts, "key_id": "k", "org_id": "o",
        "endpoint": "messages", "dialect": "anthropic", "model": "m", "vendor": "v",
        "stream": False, "status": "ok", "http_status": 200, "input_tokens": 2_000,
        "cached_tokens": 0, "cache_write_tokens": 1_000, "cache_write_1h_tokens": 400,
        "output_tokens": 1, "reasoning_tokens": 0, "usage_source": "upstream",
        "latency_ms": 1, "attempts": 1, "cost_nanos": 1, "list_cost_nanos": 1,
        "price_version": opus.id, "price_tier": "standard", "held_nanos": 0,
    }  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(usage_events), [row])
    got = cache_savings(engine, ts, ts + 60_000, book=book)
    # 600 five-minute writes at 1,250 nanos above input, 400 one-hour ones at 5,000.
    assert got["write_premium_nanos"] == {"USD": 600 * 1_250 + 400 * 5_000}
