"""The ledger's promises checked on real gateway processes, with real clients.

- 200 concurrent requests on a balance that covers exactly K worst cases: at most K are
  admitted, on one gateway (memory + SQLite) and on two sharing Redis and PostgreSQL;
- SIGKILL under load, then restarts: what the client saw complete is billed once, none
  twice, and what a kill loses is measured (``test-artifacts/crash-loss.json``); with
  ``writer.flush_interval_ms: 0`` nothing completed may be lost, streams included;
- SIGTERM under load loses nothing.

Assertions follow from invariants (money conservation, commit order), never from timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import Engine, func, select

from tests.conftest import throwaway_postgres
from tests.procs import REDIS_URL, Proc, Procs, gateway_yaml, require, running
from tokenomy.billing.call_pricing import CallPricer
from tokenomy.billing.catalog import PriceBook
from tokenomy.billing.fx import FxTable
from tokenomy.billing.money import Currency
from tokenomy.billing.pricing import worst_case
from tokenomy.config import Config, parse_config
from tokenomy.core.call import Call
from tokenomy.core.keys import ApiKey
from tokenomy.gateway.registry import build_registry
from tokenomy.ledger.store import Kind, LedgerStore
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.keys import KeyStore
from tokenomy.store.schema import ledger_postings, ledger_txns, usage_events
from tokenomy.store.writer import Item, insert_ignoring_duplicates

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

MAX_TOKENS = 8  # the simulator answers exactly this many tokens (finish_reason "length")
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a colour."}]
CONCURRENT = 200
K = 20  # worst-case requests the poor org's balance covers
RICH_NANOS = 10**15

# "sim-flat" bills output only, so a request costs exactly its hold and "at most K" is a
# hard invariant however the 200 requests interleave. sim-small keeps its catalogue price
# (input and output): its holds exceed the cost and released remainders may admit more.
FLAT_PRICE_OUTPUT = "0.40"
EXTRA = f"""
  - name: sim-flat
    deployments: [{{vendor: sim, model: sim-flat, max_output: 4096, price: sim/sim-flat}}]
prices:
  - vendor: sim
    model: sim-flat
    currency: USD
    status: simulated
    source: test price (output only)
    as_of: "2026-01-01"
    versions:
      - effective_from: "2026-01-01T00:00:00Z"
        prices: {{input: "0", output: "{FLAT_PRICE_OUTPUT}"}}
"""


# ---- accounts and money ----------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    org_id: str
    key: str
    topup_nanos: int


def seed(db_url: str, balances: dict[str, int]) -> dict[str, Account]:
    """Create (migrating first) one prepaid USD org with a key and a top-up per entry."""
    engine = open_engine(db_url)
    try:
        migrate(engine)
        ledger, keys = LedgerStore(engine), KeyStore(engine)
        out = {}
        for name, nanos in balances.items():
            org = ledger.create_org(name, Currency.USD)
            if nanos:
                ledger.post(Kind.TOPUP, org.id, nanos)
            secret, _ = keys.create(name, org_id=org.id)
            out[name] = Account(org.id, secret, nanos)
        return out
    finally:
        engine.dispose()


def worst_hold(cfg: Config, model: str) -> int:
    """The hold the gateway takes for one request of ``model`` (prompt bound + max_tokens)."""
    deps = list(build_registry(cfg, {}).resolve(model).deployments)
    pricer = CallPricer(PriceBook.load(cfg.prices), FxTable.load(cfg.fx))
    key = ApiKey("key_x", "tk-x", "x", "org_x", None, None, 0, None)
    body = {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    call = Call(endpoint="chat", dialect="openai", body=body, model=model, stream=False, key=key)
    at = datetime.now(UTC)
    amount, _ = pricer.worst(
        call,
        deps,
        Currency.USD,
        pricer.prompt_bound(call),
        cfg.server.default_max_output_tokens,
        at,
    )
    return amount


def flat_hold(cfg: Config) -> int:
    """sim-flat's worst case straight from the price: MAX_TOKENS at the output price."""
    v = PriceBook.load(cfg.prices).lookup("sim", "sim-flat", datetime.now(UTC))
    return worst_case(v, 10_000, MAX_TOKENS, at=datetime.now(UTC)).nanos


# ---- clients ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: int
    request_id: str | None = None
    code: str | None = None


async def one_request(client: openai.AsyncOpenAI, model: str) -> Outcome:
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=model,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
        )
    except openai.APIStatusError as e:
        return Outcome(e.status_code, code=e.code)
    done = raw.parse()
    assert done.usage is not None and done.usage.completion_tokens == MAX_TOKENS
    return Outcome(raw.status_code, raw.headers["x-request-id"])


async def burst(urls: list[str], key: str, model: str, n: int) -> list[Outcome]:
    """``n`` requests at once, spread round-robin over the gateways at ``urls``."""
    clients = [
        openai.AsyncOpenAI(base_url=u + "/v1", api_key=key, max_retries=0, timeout=60) for u in urls
    ]
    try:
        return await asyncio.gather(
            *(one_request(clients[i % len(clients)], model) for i in range(n))
        )
    finally:
        for c in clients:
            await c.close()


# ---- reading the books -----------------------------------------------------------------


def org_events(engine: Engine, org_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(usage_events).where(usage_events.c.org_id == org_id))
        return [dict(r._mapping) for r in rows]


def org_postings(engine: Engine, org_id: str, kind: str) -> dict[str, int]:
    """txn id -> amount of each posting on account org:<id> in transactions of ``kind``."""
    q = (
        select(ledger_txns.c.id, ledger_postings.c.amount_nanos)
        .join(ledger_postings, ledger_postings.c.txn_id == ledger_txns.c.id)
        .where(ledger_postings.c.account == f"org:{org_id}", ledger_txns.c.kind == kind)
    )
    with engine.connect() as conn:
        out: dict[str, int] = {}
        for txn_id, amount in conn.execute(q):
            assert txn_id not in out, f"two postings of {txn_id} on org:{org_id}"
            out[txn_id] = int(amount)
        return out


def unbalanced_txns(engine: Engine) -> list[tuple[str, int]]:
    q = (
        select(ledger_postings.c.txn_id, func.sum(ledger_postings.c.amount_nanos))
        .group_by(ledger_postings.c.txn_id)
        .having(func.sum(ledger_postings.c.amount_nanos) != 0)
    )
    with engine.connect() as conn:
        return [(t, int(s)) for t, s in conn.execute(q)]


def check_books(engine: Engine, acct: Account, outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """Every invariant of one org after a burst; returns the org's usage events."""
    ledger = LedgerStore(engine)
    ok = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 402]
    assert len(ok) + len(refused) == len(outcomes), Counter(o.status for o in outcomes)
    assert {o.code for o in refused} <= {"insufficient_quota"}
    seen = [o.request_id for o in ok]
    assert len(set(seen)) == len(seen), "a request id was answered twice"

    events = org_events(engine, acct.org_id)
    per_id = Counter(e["request_id"] for e in events)
    assert all(per_id[rid] == 1 for rid in seen), "a completed request has no or two events"
    by_id = {e["request_id"]: e for e in events}
    assert all(by_id[rid]["http_status"] == 200 for rid in seen)
    # Every request is recorded once, refused ones too (at no cost).
    assert len(events) == len(outcomes)
    assert sum(1 for e in events if e["http_status"] == 402) == len(refused)
    for e in events:
        assert 0 <= e["cost_nanos"] <= e["held_nanos"], e  # held >= posted
        if e["http_status"] == 402:
            assert e["cost_nanos"] == e["held_nanos"] == 0, e
        else:
            assert e["cost_nanos"] > 0, e

    usage = org_postings(engine, acct.org_id, Kind.USAGE)
    costs = {f"usage:{e['request_id']}": e["cost_nanos"] for e in events if e["cost_nanos"]}
    assert {t: -a for t, a in usage.items()} == costs  # one usage txn per billed request
    assert org_postings(engine, acct.org_id, Kind.OVERAGE) == {}
    spent = sum(e["cost_nanos"] for e in events)
    assert spent == -sum(usage.values())
    balance = ledger.balance(acct.org_id)
    assert balance == acct.topup_nanos - spent
    assert balance >= 0
    assert set(ledger.trial_balance().values()) <= {0}
    assert unbalanced_txns(engine) == []
    return events


def check_rich_hold(engine: Engine, acct: Account, outcome: Outcome, expected: int) -> None:
    assert outcome.status == 200 and outcome.request_id is not None
    rec = LedgerStore(engine).request(outcome.request_id)
    assert rec is not None and rec["org_id"] == acct.org_id
    assert rec["held_nanos"] == expected, "the gateway held another amount than computed"


# ---- the concurrency test, on one and on two gateways ----------------------------------


@dataclass
class Scenario:
    cfg: Config
    hold_flat: int
    hold_list: int
    accounts: dict[str, Account]


def prepare(db_url: str, config_text: str) -> Scenario:
    cfg = parse_config(config_text, "test-config")
    hold_flat, hold_list = worst_hold(cfg, "sim-flat"), worst_hold(cfg, "sim-small")
    assert hold_flat == flat_hold(cfg) == MAX_TOKENS * 400  # 0.40 USD per million, in nanos
    assert hold_list > 0
    accounts = seed(db_url, {"rich": RICH_NANOS, "flat": K * hold_flat, "list": K * hold_list})
    return Scenario(cfg, hold_flat, hold_list, accounts)


def run_bursts(gateways: list[Proc], sc: Scenario, db_url: str, label: str) -> None:
    urls = [g.url for g in gateways]
    rich = sc.accounts["rich"]
    # One request per model and gateway on the rich org: each takes the computed hold.
    probes = asyncio.run(_probes(urls, rich.key))
    flat = asyncio.run(burst(urls, sc.accounts["flat"].key, "sim-flat", CONCURRENT))
    listed = asyncio.run(burst(urls, sc.accounts["list"].key, "sim-small", CONCURRENT))
    for g in gateways:
        assert g.terminate() == 0, g.log_tail()  # SIGTERM drains the writer
    engine = open_engine(db_url)
    try:
        for (model, _), outcome in probes:
            want = sc.hold_flat if model == "sim-flat" else sc.hold_list
            check_rich_hold(engine, rich, outcome, want)

        check_books(engine, sc.accounts["flat"], flat)
        admitted = sum(o.status == 200 for o in flat)
        # Each admitted request costs exactly its hold: K fit, the (K+1)th cannot.
        assert admitted == K, f"{admitted} admitted on a balance of {K} worst cases"
        assert LedgerStore(engine).balance(sc.accounts["flat"].org_id) == 0

        events = check_books(engine, sc.accounts["list"], listed)
        admitted_list = sum(o.status == 200 for o in listed)
        spent = sum(e["cost_nanos"] for e in events)
        # Holds exceed costs here, so released remainders may admit more than K; but a
        # refusal needs K holds' worth used or held, so at least K, and never overspend.
        assert spent <= K * sc.hold_list
        cheapest = min(e["cost_nanos"] for e in events if e["http_status"] == 200)
        assert K <= admitted_list <= K * sc.hold_list // cheapest
        print(
            f"\n[{label}] sim-flat: {admitted}/{CONCURRENT} admitted (K={K}, hold "
            f"{sc.hold_flat} nanos); sim-small: {admitted_list}/{CONCURRENT} admitted "
            f"(K={K}, hold {sc.hold_list} nanos, spent {spent} of {K * sc.hold_list})"
        )
    finally:
        engine.dispose()


async def _probes(urls: list[str], key: str) -> list[tuple[tuple[str, str], Outcome]]:
    out = []
    for url in urls:
        for model in ("sim-flat", "sim-small"):
            (o,) = await burst([url], key, model, 1)
            out.append(((model, url), o))
    return out


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with running(tmp_path) as p:
        yield p


def test_concurrent_requests_never_overspend_one_gateway(procs: Procs, tmp_path: Path) -> None:
    sim = procs.sim()
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    text_ = gateway_yaml(sim.url, db_url, flush_interval_ms=20, extra=EXTRA)
    sc = prepare(db_url, text_)
    gw = procs.gateway(procs.write_config(text_))
    run_bursts([gw], sc, db_url, "one gateway, memory + SQLite")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL database, dropped afterwards."""
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def redis_prefix() -> Iterator[tuple[str, str]]:
    """(url, prefix): a key prefix of its own in the test Redis, deleted afterwards."""
    url = require("Redis", REDIS_URL)
    prefix = f"tktest:{secrets.token_hex(4)}:"
    yield url, prefix
    r = redis.Redis.from_url(url)
    try:
        keys = list(r.scan_iter(match=prefix + "*"))
        if keys:
            r.delete(*keys)
    finally:
        r.close()


def test_concurrent_requests_never_overspend_two_gateways(
    pg_url: str, redis_prefix: tuple[str, str], procs: Procs
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
    )
    sc = prepare(pg_url, text_)
    config = procs.write_config(text_)
    gateways = [procs.gateway(config, name="gateway-a"), procs.gateway(config, name="gateway-b")]
    run_bursts(gateways, sc, pg_url, "two gateways, Redis + PostgreSQL")
    r = redis.Redis.from_url(redis_url)
    try:
        # Every hold was settled: nothing is left pinned in the shared state.
        for name in ("flat", "list"):
            held = r.hget(f"{prefix}org:{sc.accounts[name].org_id}", "held")
            assert held is not None and int(held) == 0
        assert r.zcard(prefix + "holds") == 0
    finally:
        r.close()


# ---- the crash test --------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A request the client saw complete: 200 and the whole body."""

    request_id: str
    sent: float  # time.monotonic() when sent
    done: float  # ... and when its body was read


@dataclass
class Load:
    seen: list[Seen]
    killed_at: float = 0.0  # time.monotonic() just before SIGKILL; 0 until then


async def load_then_kill(
    gw: Proc,
    key: str,
    kill_after: int,
    *,
    graceful: bool = False,
    workers: int = 12,
    timeout: float = 30.0,
) -> Load:
    """Steady load from ``workers`` clients; SIGKILL (or SIGTERM, ``graceful``) once
    ``kill_after`` have completed.

    A thread kills the gateway after a random part of a flush interval, so the kill falls
    anywhere in the writer's cycle and not at a point the client's event loop chose.
    """
    load = Load([])
    reached = threading.Event()

    def killer() -> None:
        reached.wait(60)
        time.sleep(secrets.randbelow(100) / 1000)
        load.killed_at = time.monotonic()
        if graceful:
            gw.signal(signal.SIGTERM)  # the caller waits for the exit
        else:
            gw.kill()

    client = openai.AsyncOpenAI(
        base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=timeout
    )

    async def worker() -> None:
        # Like a load balancer, send nothing new to a gateway that was told to stop.
        while not load.killed_at:
            sent = time.monotonic()
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="sim-small",
                    messages=MESSAGES,
                    max_tokens=MAX_TOKENS,
                )
                body = raw.parse()
            except (openai.APIConnectionError, openai.InternalServerError):
                if load.killed_at:
                    return  # in flight when the gateway died: never complete to us
                raise
            assert raw.status_code == 200
            assert body.usage is not None and body.usage.completion_tokens == MAX_TOKENS
            assert body.choices[0].finish_reason == "length"
            load.seen.append(Seen(raw.headers["x-request-id"], sent, time.monotonic()))
            if len(load.seen) >= kill_after:
                reached.set()

    thread = threading.Thread(target=killer, name="killer", daemon=True)
    thread.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(workers))), 90)
    finally:
        reached.set()
        thread.join(10)
        await client.close()
    return load


def ledger_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            "usage_events": conn.execute(
                select(func.count()).select_from(usage_events)
            ).scalar_one(),
            "ledger_txns": conn.execute(select(func.count()).select_from(ledger_txns)).scalar_one(),
            "ledger_postings": conn.execute(
                select(func.count()).select_from(ledger_postings)
            ).scalar_one(),
            "cost_nanos": conn.execute(
                select(func.coalesce(func.sum(usage_events.c.cost_nanos), 0))
            ).scalar_one(),
        }


def check_billed_once(engine: Engine, acct: Account) -> set[str]:
    """Events and usage transactions match one to one; returns the recorded request ids."""
    events = org_events(engine, acct.org_id)
    ids = [e["request_id"] for e in events]
    assert len(ids) == len(set(ids))
    usage = org_postings(engine, acct.org_id, Kind.USAGE)
    assert {t: -a for t, a in usage.items()} == {
        f"usage:{e['request_id']}": e["cost_nanos"] for e in events if e["cost_nanos"]
    }
    assert all(e["http_status"] == 200 and e["cost_nanos"] > 0 for e in events)
    ledger = LedgerStore(engine)
    assert ledger.balance(acct.org_id) == acct.topup_nanos - sum(e["cost_nanos"] for e in events)
    assert set(ledger.trial_balance().values()) <= {0}
    assert unbalanced_txns(engine) == []
    return set(ids)


def replay_everything(engine: Engine) -> None:
    """Write every usage event and ledger row again, as a replayed batch would."""
    items: list[Item] = []
    with engine.connect() as conn:
        for table in (usage_events, ledger_txns, ledger_postings):
            items += [(table, dict(r._mapping)) for r in conn.execute(select(table))]
    insert_ignoring_duplicates(engine, items)


@pytest.fixture(scope="module")
def crash_report() -> Iterator[dict[str, Any]]:
    report: dict[str, Any] = {}
    yield report


@pytest.mark.parametrize("flush_ms", [100, 0], ids=["group-commit-100ms", "synchronous"])
def test_sigkill_under_load_bills_completed_requests_once(
    flush_ms: int, procs: Procs, tmp_path: Path, crash_report: dict[str, Any]
) -> None:
    sim = procs.sim()
    db_url = f"sqlite:///{tmp_path / 'crash.db'}"
    acct = seed(db_url, {"crash": RICH_NANOS})["crash"]
    config = procs.write_config(gateway_yaml(sim.url, db_url, flush_interval_ms=flush_ms))
    gw = procs.gateway(config)
    load = asyncio.run(load_then_kill(gw, acct.key, kill_after=300))
    assert not gw.alive and len(load.seen) >= 300

    # Restart on the same database; it must come up, keep billing, and stop cleanly.
    gw2 = procs.gateway(config, name="gateway-restart-1")
    after = asyncio.run(burst([gw2.url], acct.key, "sim-small", 5))
    assert all(o.status == 200 for o in after)
    assert gw2.terminate() == 0, gw2.log_tail()

    engine = open_engine(db_url)
    try:
        recorded = check_billed_once(engine, acct)
        assert {o.request_id for o in after} <= recorded
        counts = ledger_counts(engine)
        # A second restart and a replay of every row change nothing.
        gw3 = procs.gateway(config, name="gateway-restart-2")
        assert gw3.terminate() == 0, gw3.log_tail()
        assert ledger_counts(engine) == counts
        replay_everything(engine)
        assert ledger_counts(engine) == counts
        assert check_billed_once(engine, acct) == recorded
    finally:
        engine.dispose()

    lost = [s for s in load.seen if s.request_id not in recorded]
    in_flight = recorded - {s.request_id for s in load.seen} - {o.request_id for o in after}
    # The span before the kill in which completed requests were lost (client clock; a
    # response read just after the kill was on the wire before it, hence the clamp).
    window_ms = max((load.killed_at - min(s.done for s in lost)) * 1000, 0.0) if lost else 0.0
    duration_s = load.killed_at - min(s.sent for s in load.seen)
    result = {
        "flush_interval_ms": flush_ms,
        "completed_to_client": len(load.seen),
        "lost": len(lost),
        "lost_read_by_client_after_the_kill": sum(s.done > load.killed_at for s in lost),
        "loss_window_ms": round(window_ms, 1),
        "recorded_but_not_seen_complete": len(in_flight),
        "load_duration_ms": round(duration_s * 1000, 1),
        "requests_per_s": round(len(load.seen) / duration_s, 1),
    }
    crash_report["synchronous" if flush_ms == 0 else f"flush_{flush_ms}ms"] = result
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "crash-loss.json").write_text(json.dumps(crash_report, indent=2) + "\n")
    print(f"\n[crash, flush_interval_ms={flush_ms}] {json.dumps(result)}")

    if lost:
        # Commits follow record order, so the lost are a suffix: nothing sent after a
        # lost request had completed may have been recorded.
        first_lost = min(s.done for s in lost)
        recorded_after = [s for s in load.seen if s.sent > first_lost and s.request_id in recorded]
        assert recorded_after == [], "a later request was committed before an earlier one"
    if flush_ms == 0:
        assert lost == [], f"synchronous mode lost {len(lost)} completed requests"


# ---- synchronous mode and streams ------------------------------------------------------


@dataclass
class Stream:
    request_id: str | None = None
    complete: bool = False  # usage chunk, [DONE] and the end of the body all arrived


async def stream_once(url: str, key: str, into: Stream) -> None:
    body = {
        "model": "sim-small",
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        into.request_id = r.headers["x-request-id"]
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    usage = [json.loads(x[6:]).get("usage") for x in lines[:-1]]
    into.complete = lines[-1] == "data: [DONE]" and any(usage)


def test_synchronous_mode_commits_a_stream_before_the_client_sees_it_end(
    procs: Procs, tmp_path: Path
) -> None:
    """With ``flush_interval_ms: 0`` nothing the client saw complete may be lost, streams
    included. The database is held locked so that the commit cannot happen: a stream
    that still ends for the client was answered before it was recorded, and a SIGKILL at
    that moment loses it.
    """
    sim = procs.sim()
    db_file = tmp_path / "sync.db"
    db_url = f"sqlite:///{db_file}"
    acct = seed(db_url, {"sync": RICH_NANOS})["sync"]
    config = procs.write_config(gateway_yaml(sim.url, db_url, flush_interval_ms=0))
    gw = procs.gateway(config)
    seen = Stream()
    lock = sqlite3.connect(db_file, timeout=10, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")

        async def attempt() -> None:
            # A correct gateway cannot end the stream while the commit waits: give up then.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream_once(gw.url, acct.key, seen), 3)

        asyncio.run(attempt())
        gw.kill()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    gw2 = procs.gateway(config, name="gateway-restart")
    assert gw2.terminate() == 0, gw2.log_tail()
    engine = open_engine(db_url)
    try:
        recorded = check_billed_once(engine, acct)
    finally:
        engine.dispose()
    if seen.complete:  # a correct gateway leaves it incomplete, cut by the kill
        assert seen.request_id in recorded, (
            "synchronous mode: the client saw the stream end ([DONE], end of body) before "
            "its usage and ledger rows were committed; SIGKILL then lost it"
        )


def test_sigterm_under_load_drains_everything(procs: Procs, tmp_path: Path) -> None:
    """The graceful path: SIGTERM mid-load, and every request that completed is recorded."""
    sim = procs.sim()
    db_url = f"sqlite:///{tmp_path / 'term.db'}"
    acct = seed(db_url, {"term": RICH_NANOS})["term"]
    config = procs.write_config(gateway_yaml(sim.url, db_url, flush_interval_ms=100))
    gw = procs.gateway(config)
    # A request that reaches the gateway just before SIGTERM may get no answer at all
    # (the server neither handles nor closes it): a short client timeout bounds that.
    load = asyncio.run(load_then_kill(gw, acct.key, kill_after=200, graceful=True, timeout=5))
    assert gw.terminate(signalled=True) == 0, gw.log_tail()
    engine = open_engine(db_url)
    try:
        recorded = check_billed_once(engine, acct)
    finally:
        engine.dispose()
    lost = [s.request_id for s in load.seen if s.request_id not in recorded]
    print(f"\n[sigterm] completed {len(load.seen)}, recorded {len(recorded)}, lost {len(lost)}")
    assert lost == [], f"SIGTERM lost {len(lost)} completed requests"
