"""Redis losing the live ledger state, or going away, under load from two gateway
processes (a private ``redis-server`` the test starts, flushes, kills and restarts; real
PostgreSQL and real SDK clients):

- FLUSHDB mid-run: no balance goes below its floor, and once the gateways have drained,
  Redis's counters equal the database's;
- redis-server killed: requests get 503 with Retry-After (never a 500), and once it is
  back (empty) the service resumes with counters rebuilt from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import openai
import pytest
import redis

from tests.procs import Proc, Procs, gateway_yaml
from tests.servers import free_port
from tests.test_ledger_processes import (  # noqa: F401 (fixtures)
    EXTRA,
    MAX_TOKENS,
    MESSAGES,
    Account,
    flat_hold,
    pg_url,
    procs,
    seed,
)
from tokenomy.config import parse_config
from tokenomy.ledger.store import LedgerStore
from tokenomy.store.db import open_engine


@dataclass
class PrivateRedis:
    """A redis-server of the test's own, without persistence: what a restart loses."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed")
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.workdir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError):
                if self.client().ping():
                    return
            time.sleep(0.05)
        pytest.fail("redis-server did not start")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    r = PrivateRedis(tmp_path)
    r.start()
    try:
        yield r
    finally:
        r.kill()


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    retry_after: set[str | None] = field(default_factory=set)
    bodies_5xx: list[str] = field(default_factory=list)
    flushes: int = 0


async def load(urls: list[str], key: str, stop: asyncio.Event, tally: Tally, workers: int) -> None:
    clients = [
        openai.AsyncOpenAI(base_url=u + "/v1", api_key=key, max_retries=0, timeout=30) for u in urls
    ]

    async def worker(i: int) -> None:
        client = clients[i % len(clients)]
        while not stop.is_set():
            try:
                await client.chat.completions.create(
                    model="sim-flat", messages=MESSAGES, max_tokens=MAX_TOKENS
                )
                tally.statuses[200] += 1
            except openai.APIStatusError as e:
                tally.statuses[e.status_code] += 1
                if e.status_code >= 500:
                    tally.retry_after.add(e.response.headers.get("retry-after"))
                    tally.bodies_5xx.append(e.response.text)
                    await asyncio.sleep(0.05)
                elif e.status_code == 402:
                    await asyncio.sleep(0.02)
            except openai.APIConnectionError:
                tally.statuses[-1] += 1

    try:
        await asyncio.gather(*(worker(i) for i in range(workers)))
    finally:
        for c in clients:
            await c.close()


def start_gateways(
    procs: Procs,  # noqa: F811
    pg_url: str,  # noqa: F811
    redis_url: str,
    worst_cases: int,
) -> tuple[list[Proc], Account]:
    """Two gateways, and an org whose balance covers ``worst_cases`` sim-flat requests
    (made first: a gateway knows the keys that exist when it starts)."""
    sim = procs.sim(ttft_ms=20)
    text_ = gateway_yaml(
        sim.url,
        pg_url,
        flush_interval_ms=20,
        redis_url=redis_url,
        redis_prefix="tk:",
        extra=EXTRA,
    )
    hold = flat_hold(parse_config(text_, "test"))
    acct = seed(pg_url, {"org": worst_cases * hold})["org"]
    config = procs.write_config(text_)
    gateways = [procs.gateway(config, name="gateway-a"), procs.gateway(config, name="gateway-b")]
    return gateways, acct


def live_org(r: redis.Redis, org_id: str) -> tuple[int, int, int]:
    admin, used, held = r.hmget(f"tk:org:{org_id}", ["admin", "used", "held"])
    return int(admin or 0), int(used or 0), int(held or 0)


K = 300  # requests of sim-flat the balance covers (each costs exactly its hold)


def test_flushdb_under_load_never_takes_a_balance_below_its_floor(
    pg_url: str,  # noqa: F811
    private_redis: PrivateRedis,
    procs: Procs,  # noqa: F811
) -> None:
    gateways, acct = start_gateways(procs, pg_url, private_redis.url, K)
    tally = Tally()
    r = private_redis.client()

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(load([g.url for g in gateways], acct.key, stop, tally, 32))
        # Flush again and again while the balance runs out: each time with holds open,
        # lease usage not yet posted and usage not yet written by the gateways. Each
        # loss is rebuilt (in about REBUILD_GRACE_S) before the next.
        flushes = 0
        while tally.statuses[402] < 20 or flushes < 4:
            await asyncio.sleep(random.uniform(0.6, 0.9))
            await asyncio.to_thread(r.flushdb)
            flushes += 1
        tally.flushes = flushes
        deadline = time.monotonic() + 30
        while tally.statuses[402] < 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        await task

    asyncio.run(run())
    # A loss just before the load ended is noticed by the gateways' expiry sweep (every
    # ledger.refresh_s), without traffic, and rebuilt.
    deadline = time.monotonic() + 10
    while not r.exists("tk:epoch") and time.monotonic() < deadline:
        time.sleep(0.1)
    for g in gateways:
        assert g.terminate() == 0, g.log_tail()
    engine = open_engine(pg_url)
    try:
        balance = LedgerStore(engine).balance(acct.org_id)
        db_admin, db_used = LedgerStore(engine).org_totals(acct.org_id)
    finally:
        engine.dispose()
    admin, used, held = live_org(r, acct.org_id)
    r.close()
    print(
        f"\nFLUSHDB x{tally.flushes} under load: {tally.statuses[200]} admitted of {K} the balance covers; "
        f"durable balance {balance} nanos ({balance / 1e9:+.6f} USD); statuses "
        f"{dict(tally.statuses)}; live used {used} vs database {db_used}, held {held}"
    )
    assert tally.statuses[500] == 0, tally.bodies_5xx[:3]
    assert balance >= 0, f"durable balance {balance} nanos: overspent"
    assert tally.statuses[200] <= K
    # Once the gateways have drained, the live counters are the database's.
    assert (admin, used, held) == (db_admin, db_used, 0)


def test_redis_outage_answers_503_with_retry_after_and_recovers(
    pg_url: str,  # noqa: F811
    private_redis: PrivateRedis,
    procs: Procs,  # noqa: F811
) -> None:
    gateways, acct = start_gateways(procs, pg_url, private_redis.url, 10_000)
    urls = [g.url for g in gateways]
    before, during, after = Tally(), Tally(), Tally()

    async def window(tally: Tally, seconds: float) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(load(urls, acct.key, stop, tally, 8))
        await asyncio.sleep(seconds)
        stop.set()
        await task

    asyncio.run(window(before, 1.0))
    private_redis.kill()
    asyncio.run(window(during, 2.0))
    # An Anthropic client gets the same refusal in its own format.
    claude = anthropic.Anthropic(base_url=urls[0], api_key=acct.key, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as refused:
        claude.messages.create(model="sim-flat", max_tokens=MAX_TOKENS, messages=MESSAGES)
    assert refused.value.status_code == 503
    assert refused.value.response.headers["retry-after"] == "1"
    assert refused.value.body["error"]["type"] == "overloaded_error"
    private_redis.start()  # empty: a restart without persistence
    time.sleep(1.5)
    asyncio.run(window(after, 2.0))
    for g in gateways:
        assert g.terminate() == 0, g.log_tail()
    print(
        f"\nRedis outage: before {dict(before.statuses)}, during {dict(during.statuses)} "
        f"(Retry-After {during.retry_after}), after restart {dict(after.statuses)}"
    )
    assert before.statuses[200] > 0 and set(before.statuses) == {200}
    assert during.statuses[503] > 0
    assert set(during.statuses) <= {503, 200}, during.bodies_5xx[:3]
    assert during.retry_after == {"1"}
    assert after.statuses[200] > 0 and after.statuses[500] == 0
    assert all('"ledger_unavailable"' in b for b in during.bodies_5xx)
    for g in gateways:
        tracebacks = g.log_path.read_text(errors="replace").count("Traceback")
        assert tracebacks == 0, g.log_tail()

    engine = open_engine(pg_url)
    try:
        db_admin, db_used = LedgerStore(engine).org_totals(acct.org_id)
    finally:
        engine.dispose()
    r = private_redis.client()
    try:
        assert live_org(r, acct.org_id) == (db_admin, db_used, 0)
    finally:
        r.close()


RPM = 300  # an org's requests per minute: leased (1% of it is 3) and quick to exhaust


async def admitted_until_refused(urls: list[str], key: str, seconds: float) -> Counter[int]:
    """Requests from 16 workers over ``seconds``: how many were admitted (200) or not."""
    tally = Tally()
    stop = asyncio.Event()
    task = asyncio.create_task(load(urls, key, stop, tally, 16))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return tally.statuses


def test_flushdb_does_not_hand_out_a_rate_limit_again(
    pg_url: str,  # noqa: F811
    private_redis: PrivateRedis,
    procs: Procs,  # noqa: F811
) -> None:
    sim = procs.sim()
    text_ = gateway_yaml(
        sim.url,
        pg_url,
        flush_interval_ms=20,
        redis_url=private_redis.url,
        redis_prefix="tk:",
        extra=EXTRA + f"limits: {{org: {{requests_per_minute: {RPM}}}}}\n",
    )
    acct = seed(pg_url, {"limited": 10**12})["limited"]
    config = procs.write_config(text_)
    gateways = [procs.gateway(config, name="gateway-a"), procs.gateway(config, name="gateway-b")]
    urls = [g.url for g in gateways]
    r = private_redis.client()
    started = time.monotonic()
    # The whole minute's burst, until the limit refuses.
    first = asyncio.run(admitted_until_refused(urls, acct.key, 4.0))
    assert first[429] > 0, first
    r.flushdb()
    second = asyncio.run(admitted_until_refused(urls, acct.key, 3.0))
    elapsed = time.monotonic() - started
    r.close()
    admitted = first[200] + second[200]
    # GCRA: at most the burst (RPM) plus the steady rate over the time elapsed.
    allowed = RPM + int(RPM * elapsed / 60) + 1
    print(
        f"\nrate limit {RPM}/min across FLUSHDB: {first[200]} admitted before, "
        f"{second[200]} after, {admitted} in {elapsed:.1f} s against at most {allowed} "
        f"({100 * (admitted - allowed) / RPM:+.0f}% of the limit)"
    )
    assert admitted <= allowed + 2 * 3  # two processes may each hold a lease of 1%
