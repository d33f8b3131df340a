"""A batch survives SIGKILL: real gateway processes, killed mid-batch and restarted (and,
on PostgreSQL + Redis, a second replica working the same batch). Every line ends
exactly once, is billed at most once, and the hold is released to the nano."""

from __future__ import annotations

import io
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import Engine, func, select

from tests.procs import Proc, Procs, backend_database, funded_org, gateway_yaml, running
from tokenomy.ledger.store import LedgerStore
from tokenomy.store.schema import batch_results, batches, usage_events

ADMIN = "tk-admin-batch-crash-0123456789"
LINES = 200
TOPUP = 10**9


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with running(tmp_path) as p:
        yield p


def recorded(engine: Engine, batch_id: str) -> int:
    with engine.connect() as conn:
        q = select(func.count()).where(batch_results.c.batch_id == batch_id)
        return int(conn.execute(q).scalar() or 0)


def held_nanos(gw: Proc, org_id: str) -> int:
    r = httpx.get(
        f"{gw.url}/admin/orgs/{org_id}/balance", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    r.raise_for_status()
    return int(r.json()["held_nanos"])


def body(i: int) -> dict[str, Any]:
    return {
        "custom_id": f"line-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "sim-small",
            "messages": [{"role": "user", "content": f"Line {i}."}],
            "max_tokens": 16,
        },
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgres+redis"])
def test_sigkill_mid_batch_every_line_ends_once_billed_once_hold_released(
    procs: Procs, tmp_path: Path, backend: str
) -> None:
    with backend_database(backend, tmp_path) as (engine, db_url, redis_url):
        org_id, key = funded_org(engine, "batch crash", TOPUP)
        sim = procs.sim(ttft_ms=30)
        text = gateway_yaml(
            sim.url,
            db_url,
            redis_url=redis_url,
            redis_prefix=f"tkbc:{secrets.token_hex(4)}:",
            extra="batches: {concurrency: 4, lease_s: 3, poll_s: 0.1}\n",
        )
        config = procs.write_config(text)
        env = {"TOKENOMY_ADMIN_KEY": ADMIN}
        gw = procs.gateway(config, env=env)
        replicas = [gw]
        if redis_url:  # a second replica works the same batch throughout
            replicas.append(procs.gateway(config, env=env, name="gateway-b"))
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
        data = b"".join(json.dumps(body(i)).encode() + b"\n" for i in range(LINES))
        fid = c.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id
        batch = c.batches.create(
            input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 60
        while recorded(engine, batch.id) < LINES // 5:
            assert time.monotonic() < deadline, "the batch did not start"
            time.sleep(0.02)
        gw.kill()  # SIGKILL mid-batch: lines in flight, results queued, leases held
        assert recorded(engine, batch.id) < LINES, "killed too late to prove anything"
        survivor = procs.gateway(config, env=env, name="gateway-restarted")
        c = openai.OpenAI(base_url=survivor.url + "/v1", api_key=key, max_retries=0)
        deadline = time.monotonic() + 120
        while (b := c.batches.retrieve(batch.id)).status != "completed":
            assert b.status in ("in_progress", "finalizing"), b
            assert time.monotonic() < deadline, b.request_counts
            time.sleep(0.2)
        assert b.request_counts is not None and b.request_counts.completed == LINES
        assert b.output_file_id is not None
        out = [json.loads(x) for x in c.files.content(b.output_file_id).text.splitlines()]
        # Every line exactly once in the output, none in an error file.
        assert sorted(x["custom_id"] for x in out) == sorted(f"line-{i}" for i in range(LINES))
        assert b.error_file_id is None
        with engine.connect() as conn:
            results = [
                dict(r._mapping)
                for r in conn.execute(
                    select(batch_results).where(batch_results.c.batch_id == batch.id)
                )
            ]
            ids = [r["request_id"] for r in results]
            usage = [
                dict(r._mapping)
                for r in conn.execute(
                    select(usage_events).where(usage_events.c.request_id.in_(ids))
                )
            ]
        assert len(results) == LINES and len(usage) == LINES  # one record each, no more
        costs = {u["request_id"]: u["cost_nanos"] for u in usage}
        assert all(costs[r["request_id"]] == r["cost_nanos"] > 0 for r in results)
        spent = sum(r["cost_nanos"] for r in results)
        assert LedgerStore(engine).balance(org_id) == TOPUP - spent  # billed once each
        for g in [survivor, *replicas[1:]]:
            assert held_nanos(g, org_id) == 0  # the batch's hold released to the nano


def vendor_batch_state(engine: Engine, batch_id: str) -> str | None:
    with engine.connect() as conn:
        raw = conn.execute(select(batches.c.vendor_batch).where(batches.c.id == batch_id)).scalar()
    return json.loads(raw)["status"] if raw else None


@pytest.mark.parametrize("backend", ["sqlite", "postgres+redis"])
def test_sigkill_while_a_vendor_batch_runs_the_restarted_gateway_reads_it_back_once(
    procs: Procs, tmp_path: Path, backend: str
) -> None:
    """The poller of a vendor's batch dies with its process; the restarted gateway (and,
    on PostgreSQL + Redis, the other replica) takes the polling up and bills each line
    once from the vendor's results."""
    with backend_database(backend, tmp_path) as (engine, db_url, redis_url):
        org_id, key = funded_org(engine, "batch crash", TOPUP)
        sim = procs.sim(ttft_ms=20)
        text = gateway_yaml(
            sim.url,
            db_url,
            redis_url=redis_url,
            redis_prefix=f"tkbn:{secrets.token_hex(4)}:",
            extra="batches: {native: true, native_poll_s: 0.3, lease_s: 30, poll_s: 0.1}\n",
        ).replace("auth: none, name: Sim}", "auth: none, name: Sim, native_batch: openai}")
        config = procs.write_config(text)
        env = {"TOKENOMY_ADMIN_KEY": ADMIN}
        gw = procs.gateway(config, env=env)
        replicas = [gw]
        if redis_url:
            replicas.append(procs.gateway(config, env=env, name="gateway-b"))
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
        n = 100
        data = b"".join(json.dumps(body(i)).encode() + b"\n" for i in range(n))
        fid = c.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id
        batch = c.batches.create(
            input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 60
        while vendor_batch_state(engine, batch.id) != "submitted":
            assert time.monotonic() < deadline, "the vendor batch was not submitted"
            time.sleep(0.05)
        gw.kill()  # its poller dies with it, the vendor's batch still running
        assert recorded(engine, batch.id) == 0
        with engine.connect() as conn:
            vb = json.loads(
                conn.execute(
                    select(batches.c.vendor_batch).where(batches.c.id == batch.id)
                ).scalar_one()
            )
        theirs = httpx.get(f"{sim.url}/v1/batches/{vb['id']}").json()
        assert theirs["status"] == "in_progress", "killed too late to prove anything"
        survivor = procs.gateway(config, env=env, name="gateway-restarted")
        c = openai.OpenAI(base_url=survivor.url + "/v1", api_key=key, max_retries=0)
        deadline = time.monotonic() + 120
        while (b := c.batches.retrieve(batch.id)).status != "completed":
            assert b.status in ("in_progress", "finalizing"), b
            assert time.monotonic() < deadline, b.request_counts
            time.sleep(0.2)
        assert vendor_batch_state(engine, batch.id) == "ingested"
        assert b.request_counts is not None and b.request_counts.completed == n
        assert b.output_file_id is not None
        out = [json.loads(x) for x in c.files.content(b.output_file_id).text.splitlines()]
        assert sorted(x["custom_id"] for x in out) == sorted(f"line-{i}" for i in range(n))
        with engine.connect() as conn:
            results = [
                dict(r._mapping)
                for r in conn.execute(
                    select(batch_results).where(batch_results.c.batch_id == batch.id)
                )
            ]
            ids = [r["request_id"] for r in results]
            usage = [
                dict(r._mapping)
                for r in conn.execute(
                    select(usage_events).where(usage_events.c.request_id.in_(ids))
                )
            ]
        assert len(results) == n and len(usage) == n
        assert all(u["price_tier"] == "batch" and u["cost_nanos"] > 0 for u in usage)
        spent = sum(r["cost_nanos"] for r in results)
        assert LedgerStore(engine).balance(org_id) == TOPUP - spent
        for g in [survivor, *replicas[1:]]:
            assert held_nanos(g, org_id) == 0
