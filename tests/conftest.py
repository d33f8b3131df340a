"""Shared fixtures: a simulator and a gateway on real sockets, driven by real clients."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select, text

from tests.needs import require_postgres, require_redis
from tests.servers import ThreadServer
from tokenomy.app import app_for
from tokenomy.config import Config, parse_config
from tokenomy.services import Services, build_services
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.schema import usage_events

ADMIN_KEY = "tk-admin-test-0123456789"
VENDOR_KEY = "sk-vendor-secret-abcdef123456"


def gateway_yaml(sim_url: str, db_url: str, extra: str = "", redis_url: str = "") -> str:
    return f"""
ledger: {{redis_url: "{redis_url}", redis_prefix: "tktest:{secrets.token_hex(4)}:"}}
server:
  max_body_bytes: 65536
  max_messages: 50
  first_byte_timeout_s: 1.5
  read_timeout_s: 1.5
database: {{url: "{db_url}"}}
writer: {{flush_interval_ms: 20}}
routing: {{breaker_failures: 3, breaker_cooldown_s: 600}}
regions:
  us-east: {{usd_per_kwh: "0.15", kwh_per_m_tokens: "0.4", rtt_ms: 5}}
  cn-west: {{usd_per_kwh: "0.03", kwh_per_m_tokens: "0.4", rtt_ms: 180}}
# Each test that spends a model's shared per-minute limit has a model of its own.
limits: {{models: {{limited: {{requests_per_minute: 3}}, limited-refusals: {{requests_per_minute: 3}}}}}}
vendors:
  sim: {{dialect: openai, base_url: "{sim_url}/v1", auth: none, name: Sim}}
  sim-backup: {{dialect: openai, base_url: "{sim_url}/v1", auth: none, name: SimBackup}}
  sim-anthropic: {{dialect: anthropic, base_url: "{sim_url}/v1", auth: none, name: SimAnthropic}}
  sim-nokey: {{dialect: openai, base_url: "{sim_url}/v1", api_key_env: TEST_MISSING_KEY}}
models:
  - name: sim-small
    aliases: [small]
    deployments:
      - {{vendor: sim, model: sim-small, context_length: 32768, max_output: 4096,
         price: sim/sim-small}}
  - name: sim-claude
    deployments:
      - {{vendor: sim-anthropic, model: sim-claude, max_output: 8192, price: sim/sim-small}}
  - name: sim-embed
    deployments:
      - {{vendor: sim, model: sim-embed, capabilities: [embeddings], price: sim/sim-small}}
  - name: flaky
    deployments:
      - {{vendor: sim, model: flaky-a, price: sim/sim-small}}
      - {{vendor: sim-backup, model: flaky-b, price: sim/sim-small}}
  - name: single
    deployments: [{{vendor: sim, model: single-a, price: sim/sim-small}}]
  - name: no-tools
    deployments:
      - {{vendor: sim, model: plain-a, capabilities: [stream], price: sim/sim-small}}
  - name: silent
    deployments: [{{vendor: sim, model: silent-a, price: sim/sim-small}}]
  - name: inline
    deployments: [{{vendor: sim, model: inline-a, price: sim/sim-small}}]
  - name: ds-reasoner
    deployments: [{{vendor: sim, model: ds-reasoner, price: deepseek/deepseek-flash}}]
  - name: opus
    deployments:
      - {{vendor: sim-anthropic, model: opus-a, price: anthropic/claude-opus-4-6, max_output: 4096}}
  - name: routed
    deployments:
      - {{vendor: sim, model: cheap-a, price: minimax/MiniMax-M2.5, capabilities: [stream]}}
      - {{vendor: sim-backup, model: dear-b, price: anthropic/claude-opus-4-6}}
  - name: dead-first
    deployments:
      - {{vendor: sim, model: sim-fail-503, price: minimax/MiniMax-M2.5}}
      - {{vendor: sim-backup, model: alive-b, price: anthropic/claude-opus-4-6}}
  - name: limited
    deployments: [{{vendor: sim, model: limited-a, price: sim/sim-small}}]
  - name: limited-refusals
    deployments: [{{vendor: sim, model: limited-a, price: sim/sim-small}}]
  - name: placed
    deployments:
      - {{vendor: sim, model: near-a, region: us-east, price: sim/sim-small}}
      - {{vendor: sim-backup, model: far-b, region: cn-west, price: sim/sim-large}}
  - name: capped
    deployments:
      - {{vendor: sim, model: q-sim-slow, max_concurrent: 1, price: sim/sim-small}}
  - name: standby-demo
    deployments:
      - {{vendor: sim-nokey, model: real-a, price: sim/sim-small}}
      - {{vendor: sim, model: standby-a, standby: true, price: sim/sim-small}}
{extra}
"""


@dataclass
class Gateway:
    server: ThreadServer
    services: Services
    key: str
    sim_url: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    def flush(self) -> None:
        self.server.call(self.services.usage_writer.flush())

    def events(self, **where: Any) -> list[dict[str, Any]]:
        self.flush()
        q = select(usage_events)
        for k, v in where.items():
            q = q.where(usage_events.c[k] == v)
        with self.services.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def wait_events(self, n: int, timeout: float = 5.0, **where: Any) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.events(**where)
            if len(rows) >= n or time.monotonic() > deadline:
                return rows
            time.sleep(0.02)

    def new_key(self, models: list[str] | None = None, org_id: str | None = None) -> str:
        secret, rec = self.services.keys.create("test", allowed_models=models, org_id=org_id)
        self.services.key_cache.put(secret, rec)
        return secret

    def new_org(self, balance_nanos: int = 0, currency: str = "USD") -> str:
        """A prepaid org with ``balance_nanos`` topped up, visible to the gateway at once."""
        org = self.services.ledger.create_org("test org", currency)
        if balance_nanos:
            self.services.ledger.post("topup", org.id, balance_nanos)
        self.server.call(self.services.refresh_accounts())
        return org.id


@pytest.fixture(scope="session")
def sim() -> Iterator[ThreadServer]:
    from tokenomy.sim.server import create_sim_app
    from tokenomy.sim.settings import SimSettings

    settings = SimSettings(
        usage_styles={
            "silent-*": "none",
            "inline-*": "inline",
            "ds-*": "deepseek",
            "*": "openai",
        },
        timeout_s=5.0,
    )
    srv = ThreadServer(lambda: create_sim_app(settings)).start()
    yield srv
    srv.stop()


def sim_faults(sim_url: str, model: str, faults: list[str]) -> None:
    r = httpx.post(f"{sim_url}/_sim/faults", json={"model": model, "faults": faults})
    r.raise_for_status()


def sim_stats(sim_url: str) -> dict[str, Any]:
    out: dict[str, Any] = httpx.get(f"{sim_url}/_sim/stats").json()
    return out


def make_config(
    sim_url: str, tmp: Path, extra: str = "", db_url: str = "", redis_url: str = ""
) -> Config:
    db_url = db_url or f"sqlite:///{tmp / 'gw.db'}"
    return parse_config(gateway_yaml(sim_url, db_url, extra, redis_url), "test-config")


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A fresh PostgreSQL database for one test session, dropped afterwards."""
    import psycopg

    base = require_postgres()
    name = "tokenomy_test_" + secrets.token_hex(4)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def migrated_engine(kind: str, directory: Path) -> Iterator[Engine]:
    """A database migrated to head: ``kind`` "sqlite" (a file in ``directory``) or
    "postgres" (a throwaway database)."""
    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite:///{directory / 'db.sqlite'}"
        else:
            url = stack.enter_context(throwaway_postgres())
        engine = open_engine(url)
        stack.callback(engine.dispose)
        migrate(engine)
        yield engine


def query_plan(engine: Engine, sql: str) -> str:
    """The database's plan for ``sql``, as one line (PostgreSQL's with sequential scans
    off, so a usable index shows on a near-empty table)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))
            return " ".join(str(r[0]) for r in conn.execute(text("EXPLAIN " + sql)))
        return " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))


@contextmanager
def running_gateway(
    sim_url: str, tmp: Path, backend: str, extra: str = "", *, patient: bool = False
) -> Iterator[Gateway]:
    """A gateway on the shared test config plus ``extra`` models, on SQLite ("sqlite") or
    on PostgreSQL with Redis ("postgres+redis"), with a fixture key. ``patient`` raises
    the first-byte and read timeouts, which a loaded machine's first tokenizer load could
    otherwise trip."""

    def config(db_url: str, redis_url: str = "") -> Config:
        text = gateway_yaml(sim_url, db_url, extra, redis_url)
        if patient:
            text = text.replace("_timeout_s: 1.5", "_timeout_s: 30")
        return parse_config(text, "test-config")

    with contextlib.ExitStack() as stack:
        cfg = config(f"sqlite:///{tmp / 'gw.db'}")
        if backend == "postgres+redis":
            cfg = config(stack.enter_context(throwaway_postgres()), require_redis())
        svc = build_services(cfg, dict(os.environ))
        srv = ThreadServer(lambda: app_for(svc)).start()
        secret, rec = svc.keys.create("fixture")
        svc.key_cache.put(secret, rec)
        try:
            yield Gateway(srv, svc, secret, sim_url)
        finally:
            srv.stop()


@pytest.fixture(scope="session", params=["sqlite", "postgres+redis"])
def gateway(
    request: pytest.FixtureRequest, sim: ThreadServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The gateway on SQLite with live state in memory, then on PostgreSQL with Redis."""
    tmp = tmp_path_factory.mktemp("gateway")
    env = {**os.environ, "TOKENOMY_ADMIN_KEY": ADMIN_KEY, "TEST_SIM_VENDOR_KEY": VENDOR_KEY}
    env.pop("TEST_MISSING_KEY", None)
    with contextlib.ExitStack() as stack:
        cfg = make_config(sim.url, tmp)
        if request.param == "postgres+redis":
            db = stack.enter_context(throwaway_postgres())
            cfg = make_config(sim.url, tmp, db_url=db, redis_url=require_redis())
        svc = build_services(cfg, env)
        srv = ThreadServer(lambda: app_for(svc)).start()
        secret, rec = svc.keys.create("fixture")
        svc.key_cache.put(secret, rec)
        yield Gateway(srv, svc, secret, sim.url)
        srv.stop()


@pytest.fixture(autouse=True)
def _fresh_breakers(request: pytest.FixtureRequest) -> None:
    """Each test starts with every deployment healthy (the gateway is shared)."""
    if "gateway" in request.fixturenames:
        request.getfixturevalue("gateway").services.router.health.reset()


def sim_served(stats: dict[str, Any], model: str, status: str | None = None) -> int:
    """Requests the simulator answered for ``model`` (with ``status`` only, when given),
    from its /stats document."""
    per_model = stats.get("models", stats)
    entry = per_model.get(model, {}) if isinstance(per_model, dict) else {}
    if not isinstance(entry, dict):
        return 0
    if status is not None:
        return int(entry.get(status, 0))
    return sum(int(v) for v in entry.values())
