"""Cache affinity shared by two gateway processes through Redis (on PostgreSQL): a task
served by one replica goes to the same deployment on the other, and the map is TTL'd keys
under the gateway's prefix."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import openai
import redis

from tests.conftest import throwaway_postgres
from tests.procs import REDIS_URL, gateway_yaml, require, running
from tokenomy.billing.money import Currency
from tokenomy.ledger.store import Kind, LedgerStore
from tokenomy.routing.affinity import EXPIRED_GRACE_S, ONE_HOUR_S
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.keys import KeyStore

MODELS = """
  - name: agent
    deployments:
      - {vendor: sim, model: agent-a, price: openai/gpt-5.4}
      - {vendor: sim, model: agent-b, price: openai/gpt-5.4}
      - {vendor: sim, model: agent-c, price: openai/gpt-5.4}
"""
MSG = [{"role": "user", "content": "Continue the task."}]


def seed(db_url: str) -> str:
    engine = open_engine(db_url)
    try:
        migrate(engine)
        ledger = LedgerStore(engine)
        org = ledger.create_org("replicas", Currency.USD)
        ledger.post(Kind.TOPUP, org.id, 10**12)
        key, _ = KeyStore(engine).create("replicas", org_id=org.id)
        return key
    finally:
        engine.dispose()


def ask(base: str, key: str, task: str, **extra: Any) -> tuple[str, str]:
    c = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="agent",
        messages=extra.pop("messages", MSG),
        max_tokens=8,
        extra_headers={"X-Tokenomy-Task": task},
        extra_body=extra or None,
    )
    raw.parse()
    return raw.headers["x-tokenomy-deployment"], raw.headers["x-tokenomy-affinity"]


def test_two_gateway_processes_share_affinity_through_redis(tmp_path: Path) -> None:
    redis_url = require("redis", REDIS_URL)
    prefix = f"tkaf{secrets.token_hex(4)}:"
    r = redis.Redis.from_url(redis_url)
    with throwaway_postgres() as db, running(tmp_path) as procs:
        key = seed(db)
        sim = procs.sim()
        text = gateway_yaml(sim.url, db, redis_url=redis_url, redis_prefix=prefix, extra=MODELS)
        config = procs.write_config(text)
        one, two = procs.gateway(config, name="gw1"), procs.gateway(config, name="gw2")
        try:
            # The first call of a task is pinned to agent-c by its own preference ...
            assert ask(one.url, key, "t1", provider={"only": ["sim/agent-c"]}) == (
                "sim/agent-c",
                "miss",
            )
            # ... and the other replica sends the task's next call there (its own order
            # would start with agent-a).
            assert ask(two.url, key, "t1") == ("sim/agent-c", "hit")
            assert ask(one.url, key, "t1") == ("sim/agent-c", "hit")
            assert ask(two.url, key, "t2") == ("sim/agent-a", "miss")
            # A request for Anthropic's one-hour cache keeps its key an hour.
            hour = [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "Go.",
                            "cache_control": {"type": "ephemeral", "ttl": "1h"},
                        }
                    ],
                }
            ]
            assert ask(one.url, key, "t3", messages=hour)[1] == "miss"
            keys = sorted(r.keys(prefix + "af:*"))
            assert len(keys) == 3  # one per task, under the gateway's prefix
            ttls = sorted(r.pttl(k) for k in keys)
            assert 0 < ttls[0] <= (300 + EXPIRED_GRACE_S) * 1000
            assert ttls[1] <= (300 + EXPIRED_GRACE_S) * 1000
            assert ttls[2] > (ONE_HOUR_S + EXPIRED_GRACE_S - 60) * 1000
        finally:
            for k in r.keys(prefix + "*"):
                r.delete(k)
