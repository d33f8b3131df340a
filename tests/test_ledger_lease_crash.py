"""A gateway process killed while it holds a lease reserve: Redis releases the reserve
once the hold time passes, and the org's whole free balance is available again (real
gateway processes on real PostgreSQL and Redis)."""

from __future__ import annotations

import asyncio
import time

import openai
import redis

from tests.procs import Procs, gateway_yaml
from tests.test_ledger_processes import (  # noqa: F401 (fixtures)
    EXTRA,
    MESSAGES,
    burst,
    pg_url,
    procs,
    redis_prefix,
    seed,
)

HOLD_TTL_S = 2.0
#: sim-flat bills output only, 0.40 USD per million tokens: 400 nanos a token.
NANOS_PER_TOKEN = 400
TOPUP = 1_600_000  # 4,000 output tokens' worth: a request's max_tokens can cover it all


def org_counters(r: redis.Redis, prefix: str, org_id: str) -> tuple[int, int, int]:
    admin, used, held = r.hmget(f"{prefix}org:{org_id}", ["admin", "used", "held"])
    return int(admin or 0), int(used or 0), int(held or 0)


async def ask(url: str, key: str, max_tokens: int) -> int:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)
    try:
        await client.chat.completions.create(
            model="sim-flat", messages=MESSAGES, max_tokens=max_tokens
        )
        return 200
    except openai.APIStatusError as e:
        return e.status_code
    finally:
        await client.close()


def test_a_killed_replicas_lease_reserve_is_released_after_the_hold_ttl(
    pg_url: str,  # noqa: F811
    redis_prefix: tuple[str, str],  # noqa: F811
    procs: Procs,  # noqa: F811
) -> None:
    redis_url, prefix = redis_prefix
    sim = procs.sim()
    text_ = gateway_yaml(
        sim.url,
        pg_url,
        flush_interval_ms=20,
        redis_url=redis_url,
        redis_prefix=prefix,
        extra=EXTRA,
        ledger=f"hold_ttl_s: {HOLD_TTL_S}\nrefresh_s: 0.2",
    )
    acct = seed(pg_url, {"crash": TOPUP})["crash"]
    config = procs.write_config(text_)
    doomed = procs.gateway(config, name="gateway-doomed")
    survivor = procs.gateway(config, name="gateway-survivor")
    r = redis.Redis.from_url(redis_url)
    try:
        # Busy enough for the doomed gateway to lease the org's balance.
        outcomes = asyncio.run(burst([doomed.url], acct.key, "sim-flat", 40))
        assert all(o.status == 200 for o in outcomes)
        _, _, held = org_counters(r, prefix, acct.org_id)
        assert held > 0, "the busy gateway took no lease reserve: nothing to test"
        doomed.kill()
        held_at_kill = org_counters(r, prefix, acct.org_id)[2]
        assert held_at_kill > 0

        # The survivor's expiry sweep releases the reserve once the hold time has passed.
        deadline = time.monotonic() + HOLD_TTL_S + 8.0
        while time.monotonic() < deadline:
            if org_counters(r, prefix, acct.org_id)[2] == 0 and r.zcard(prefix + "holds") == 0:
                break
            time.sleep(0.1)
        admin, used, held = org_counters(r, prefix, acct.org_id)
        print(
            f"\nfunds held after a replica crash: {held_at_kill} nanos at the kill, "
            f"{held} nanos {HOLD_TTL_S + 8:g} s later (free {admin - used} nanos)"
        )
        assert held == 0, f"{held} nanos still held after the lease expired"
        assert r.zcard(prefix + "holds") == 0

        # The whole free balance is available: a request whose worst case is all of it.
        max_tokens = (admin - used) // NANOS_PER_TOKEN
        assert max_tokens > 0
        assert asyncio.run(ask(survivor.url, acct.key, max_tokens)) == 200
    finally:
        r.close()
