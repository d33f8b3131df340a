"""Cache affinity in the router: hits, expiry on a fake clock, the one-hour TTL, and what
stickiness yields to (health, provider preferences, price limits)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tokenomy.billing.call_pricing import CallPricer
from tokenomy.billing.catalog import PriceBook
from tokenomy.billing.fx import FxTable
from tokenomy.config import parse_config
from tokenomy.core.call import Call
from tokenomy.core.keys import ApiKey
from tokenomy.gateway.registry import build_registry
from tokenomy.routing.affinity import (
    DEFAULT_TTL_S,
    ONE_DAY_S,
    ONE_HOUR_S,
    AffinityStage,
    MemoryAffinity,
    prefix_digest,
    requested_ttl,
)
from tokenomy.routing.health import BreakerPolicy, HealthBoard
from tokenomy.routing.preferences import Preferences
from tokenomy.routing.router import Router

CONFIG = """
vendors:
  a: {dialect: openai, base_url: "http://127.0.0.1:9/v1", auth: none}
  b: {dialect: openai, base_url: "http://127.0.0.1:9/v1", auth: none}
  c: {dialect: openai, base_url: "http://127.0.0.1:9/v1", auth: none, prompt_cache_ttl_s: 3600}
  dear: {dialect: openai, base_url: "http://127.0.0.1:9/v1", auth: none}
models:
  - name: agent
    deployments:
      - {vendor: a, model: m-a, price: sim/sim-small}
      - {vendor: b, model: m-b, price: sim/sim-small}
      - {vendor: c, model: m-c, price: sim/sim-small}
      - {vendor: dear, model: m-dear, price: anthropic/claude-opus-4-6}
  - name: single
    deployments: [{vendor: a, model: only, price: sim/sim-small}]
"""
KEY = ApiKey("key_1", "tk-", "k", "org_1", None, None, 0, None)
LONG = "You are a careful coding agent. " * 400  # about 13 KB: long enough to cache


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A router and an affinity stage over the test config, on one fake clock."""

    def __init__(self) -> None:
        cfg = parse_config(CONFIG, "test")
        self.registry = build_registry(cfg, {})
        pricer = CallPricer(PriceBook.load(), FxTable.load())
        self.health = HealthBoard(policy=BreakerPolicy(consecutive_failures=1, cooldown_s=60))
        self.router = Router(pricer, self.health, Preferences(), default_max_output=256)
        self.clock = Clock()
        self.store = MemoryAffinity(clock=self.clock)
        self.stage = AffinityStage(self.store, pricer.prompt_bound, clock=self.clock)

    def call(self, *, task: str | None = None, model: str = "agent", **body: Any) -> Call:
        body.setdefault("messages", [{"role": "user", "content": "hi"}])
        c = Call("chat", "openai", {"model": model, **body}, model, False, KEY)
        base = self.router.prepare(c)
        c.route = self.registry.resolve(base)
        if task is not None:
            c.task_name = task
        return c

    def route(self, c: Call, served: str | None = None) -> str:
        """Run the stage, rank, and 'serve' on the first (or ``served``) deployment."""
        asyncio.run(self.stage.before(c))
        order = self.router.ranked(c, frozenset())
        dep = next(d for d in order if d.id == served) if served else order[0]
        c.deployment = dep
        asyncio.run(self.stage.after(c))
        return dep.id


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_a_task_sticks_to_the_deployment_that_served_it(rig: Rig) -> None:
    first = rig.call(task="t1")
    assert rig.route(first, served="b/m-b") == "b/m-b"
    assert first.affinity is not None and first.affinity.decision == "miss"
    again = rig.call(task="t1")
    # The cheapest-first order would start with a/m-a: the warm cache wins.
    assert rig.route(again) == "b/m-b"
    assert again.affinity is not None and again.affinity.decision == "hit"
    assert again.affinity.header("b/m-b") == "hit"
    assert again.affinity.header("a/m-a") == "yielded:fallback"
    other = rig.call(task="t2")
    assert rig.route(other) == "a/m-a"


def test_expiry_on_the_default_ttl_and_a_hit_refreshes_it(rig: Rig) -> None:
    rig.route(rig.call(task="t"), served="b/m-b")
    rig.clock.now += DEFAULT_TTL_S - 1
    assert rig.route(rig.call(task="t")) == "b/m-b"  # a hit: warm for another 5 minutes
    rig.clock.now += DEFAULT_TTL_S - 1
    assert rig.route(rig.call(task="t")) == "b/m-b"
    rig.clock.now += DEFAULT_TTL_S + 1
    late = rig.call(task="t")
    assert rig.route(late) == "a/m-a"
    assert late.affinity is not None and late.affinity.decision == "expired"


def test_the_vendors_documented_ttl(rig: Rig) -> None:
    rig.route(rig.call(task="t"), served="c/m-c")  # vendor c documents an hour
    rig.clock.now += 50 * 60
    c = rig.call(task="t")
    assert rig.route(c) == "c/m-c" and c.affinity is not None and c.affinity.decision == "hit"


def test_one_hour_cache_control_keeps_the_task_for_an_hour(rig: Rig) -> None:
    hour = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
            ],
        }
    ]
    rig.route(rig.call(task="t", messages=hour), served="b/m-b")
    rig.clock.now += 40 * 60
    c = rig.call(task="t", messages=hour)
    assert rig.route(c) == "b/m-b" and c.affinity is not None and c.affinity.decision == "hit"
    rig.clock.now += 61 * 60  # an hour after the hit refreshed it
    c = rig.call(task="t", messages=hour)
    assert rig.route(c) == "a/m-a" and c.affinity is not None and c.affinity.decision == "expired"


def test_requested_ttl_is_found_anywhere() -> None:
    hour = {"type": "ephemeral", "ttl": "1h"}
    five = {"type": "ephemeral"}
    assert requested_ttl({"messages": [{"role": "user", "content": "x"}]}) is None
    assert requested_ttl({"tools": [{"name": "f", "cache_control": hour}]}) == ONE_HOUR_S
    assert requested_ttl({"system": [{"type": "text", "text": "s", "cache_control": hour}]}) == (
        ONE_HOUR_S
    )
    assert requested_ttl({"cache_control": hour}) == ONE_HOUR_S
    msg = {"role": "user", "content": [{"type": "text", "text": "s", "cache_control": five}]}
    assert requested_ttl({"messages": [msg]}) is None
    assert requested_ttl({"prompt_cache_retention": "24h"}) == ONE_DAY_S


def test_stickiness_yields_to_an_unhealthy_deployment(rig: Rig) -> None:
    rig.route(rig.call(task="t"), served="b/m-b")
    rig.health.get("b/m-b").failure()  # one failure opens its breaker here
    c = rig.call(task="t")
    assert rig.route(c) == "a/m-a"
    assert c.affinity is not None and c.affinity.decision == "yielded:unhealthy"
    # The task now lives where it was served.
    rig.health.reset()
    c = rig.call(task="t")
    assert rig.route(c) == "a/m-a" and c.affinity is not None and c.affinity.decision == "hit"


@pytest.mark.parametrize(
    ("provider", "why", "served"),
    [
        ({"only": ["a", "c"]}, "yielded:only", "a/m-a"),
        ({"ignore": ["b"]}, "yielded:ignore", "a/m-a"),
        ({"order": ["c"]}, "yielded:order", "c/m-c"),
        ({"sort": "latency"}, "yielded:sort", None),
    ],
)
def test_stickiness_yields_to_provider_preferences(
    rig: Rig, provider: dict[str, Any], why: str, served: str | None
) -> None:
    rig.route(rig.call(task="t"), served="b/m-b")
    # Preferences that keep the warm deployment first do not yield.
    ok = rig.call(task="t", provider={"order": ["b"]})
    assert rig.route(ok) == "b/m-b" and ok.affinity is not None and ok.affinity.decision == "hit"
    c = rig.call(task="t", provider=provider)
    dep = rig.route(c)
    assert c.affinity is not None and c.affinity.decision == why
    if served is not None:
        assert dep == served
    # The task is now warm where it was served.
    again = rig.call(task="t")
    assert rig.route(again) == dep


def test_stickiness_yields_to_a_price_limit(rig: Rig) -> None:
    rig.route(rig.call(task="t"), served="dear/m-dear")
    c = rig.call(task="t")
    assert rig.route(c) == "dear/m-dear"  # warm: worth more than its list price
    c = rig.call(task="t", provider={"max_price": {"prompt": 1}})
    assert rig.route(c) == "a/m-a"
    assert c.affinity is not None and c.affinity.decision == "yielded:max_price"


def test_without_a_task_a_long_shared_prefix_is_the_key(rig: Rig) -> None:
    def msgs(question: str) -> list[dict[str, Any]]:
        return [{"role": "system", "content": LONG}, {"role": "user", "content": question}]

    rig.route(rig.call(messages=msgs("first")), served="c/m-c")
    c = rig.call(messages=msgs("second question"))
    assert rig.route(c) == "c/m-c" and c.affinity is not None and c.affinity.decision == "hit"
    # Another organisation's identical prompt is another key.
    other = rig.call(messages=msgs("first"))
    other.key = ApiKey("key_2", "tk-", "k", "org_2", None, None, 0, None)
    assert rig.route(other) == "a/m-a"


def test_short_prompts_and_single_deployments_skip_affinity(rig: Rig) -> None:
    short = rig.call(messages=[{"role": "user", "content": "hi"}])
    rig.route(short)
    assert short.affinity is None
    single = rig.call(task="t", model="single")
    rig.route(single)
    assert single.affinity is None


def test_prefix_digest_reads_only_the_prefix() -> None:
    a = {"messages": [{"role": "system", "content": LONG}, {"role": "user", "content": "a"}]}
    b = {"messages": [{"role": "system", "content": LONG}, {"role": "user", "content": "b"}]}
    assert prefix_digest(a) == prefix_digest(b)  # LONG alone fills the prefix
    assert prefix_digest(a, chars=len(LONG) + 100) != prefix_digest(b, chars=len(LONG) + 100)
    blocks = {"system": [{"type": "text", "text": LONG}], "messages": []}
    assert prefix_digest(blocks) != prefix_digest({"messages": []})


def test_failed_calls_are_not_remembered(rig: Rig) -> None:
    c = rig.call(task="t")
    asyncio.run(rig.stage.before(c))
    c.deployment = rig.router.ranked(c, frozenset())[1]
    c.status = "error"
    asyncio.run(rig.stage.after(c))
    assert rig.route(rig.call(task="t")) == "a/m-a"


def test_a_redis_failure_routes_without_affinity() -> None:
    from redis.asyncio import Redis

    from tests.servers import free_port
    from tokenomy.store.redis_affinity import RedisAffinity

    async def go() -> tuple[str, float] | None:
        client = Redis(port=free_port(), socket_connect_timeout=0.5)  # nothing listens
        store = RedisAffinity(client, "tk:", grace_s=60)
        try:
            await store.put("k", "a/m-a", 1e12)  # logged, not raised
            return await store.get("k")
        finally:
            await client.aclose()

    assert asyncio.run(go()) is None


@pytest.mark.parametrize("messages", [7, "text", {"role": "user"}, [None, 3, "x"]])
def test_malformed_bodies_neither_raise_nor_find_a_ttl(messages: Any) -> None:
    body = {"messages": messages, "system": 5, "tools": "t", "cache_control": [1]}
    assert requested_ttl(body) is None
    assert len(prefix_digest(body)) == 16


def test_a_full_memory_map_writes_at_a_constant_cost() -> None:
    """Once the map is full every write drops the oldest entry. Dropped from the front of
    a plain dict, each was found by scanning past every slot emptied before it (a dict
    compacts only when it grows): 26 µs a write at the default 100,000 entries, on the
    event loop, with stalls of 13 ms. Bounded far above the constant cost (0.2 s here)
    and far below the scanning one (8 s here)."""
    import time

    store = MemoryAffinity(capacity=100_000)

    async def writes(first: int, n: int) -> None:
        for i in range(first, first + n):
            await store.put(f"task-{i}", "dep", 1e12)

    asyncio.run(writes(0, 100_000))  # full
    started = time.perf_counter()
    asyncio.run(writes(100_000, 300_000))
    assert time.perf_counter() - started < 1.5

    async def oldest_and_newest() -> tuple[object, object, object]:
        return (
            await store.get("task-299999"),
            await store.get("task-300000"),
            await store.get("task-399999"),
        )

    dropped, kept, newest = asyncio.run(oldest_and_newest())
    assert dropped is None and kept == ("dep", 1e12) and newest == ("dep", 1e12)
