"""A full batch of 1,000 lines, end to end: the official openai and anthropic SDKs against
real gateway processes and the simulator, on SQLite (one process) and on PostgreSQL +
Redis (two processes sharing the lines). Every custom_id comes back exactly once, the
lines' costs sum to the org's debits, the ledger balances and no hold is left."""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from sqlalchemy import Engine, select

from tests.procs import Proc, Procs, backend_database, funded_org, gateway_yaml, running
from tokenomy.ledger.store import LedgerStore
from tokenomy.store.schema import batch_results, usage_events

ADMIN = "tk-admin-batch-scale-0123456789"
LINES = 1000
TOPUP = 10**12
#: The simulator's answers are this long unless ``max_tokens`` cuts them shorter.
SIM_TOKENS = 8
#: Seconds a 1,000-line batch may take before the test calls it stuck.
TIMEOUT_S = 120.0


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with running(tmp_path) as p:
        yield p


@contextlib.contextmanager
def cluster(
    procs: Procs, tmp_path: Path, backend: str
) -> Iterator[tuple[Engine, list[Proc], str, str]]:
    """The database, the gateways (one process on SQLite, two on PostgreSQL + Redis), and
    an org with money and a key (made first: a gateway loads its keys as it starts)."""
    with backend_database(backend, tmp_path) as (engine, db_url, redis_url):
        org_id, key = funded_org(engine, "batch scale", TOPUP)
        sim = procs.sim(ttft_ms=0, output_tokens=SIM_TOKENS)
        text = gateway_yaml(
            sim.url,
            db_url,
            redis_url=redis_url,
            redis_prefix=f"tkbs:{secrets.token_hex(4)}:",
            extra="batches: {concurrency: 8, poll_s: 0.1}\n",
        )
        config = procs.write_config(text)
        env = {"TOKENOMY_ADMIN_KEY": ADMIN}
        gws = [procs.gateway(config, env=env)]
        if redis_url:
            gws.append(procs.gateway(config, env=env, name="gateway-b"))
        yield engine, gws, org_id, key


def admin_get(gw: Proc, path: str) -> httpx.Response:
    r = httpx.get(gw.url + path, headers={"Authorization": f"Bearer {ADMIN}"})
    r.raise_for_status()
    return r


def lines_run(gw: Proc) -> int:
    """The lines this process ran, from its own counter on /metrics."""
    for row in admin_get(gw, "/metrics").text.splitlines():
        if row.startswith("tokenomy_batch_lines_done_total"):
            return int(float(row.split()[-1]))
    raise AssertionError("no tokenomy_batch_lines_done_total on /metrics")


def check_money(engine: Engine, gws: list[Proc], org_id: str, batch_id: str) -> None:
    """Each line has one result and one usage record of the same cost; their sum is what
    the org was debited; debits equal credits; no hold is left on any process."""
    with engine.connect() as conn:
        results = {
            r.request_id: r.cost_nanos
            for r in conn.execute(select(batch_results).where(batch_results.c.batch_id == batch_id))
        }
        rows = conn.execute(
            select(usage_events).where(usage_events.c.request_id.in_(list(results)))
        ).all()
    usage = {r.request_id: r.cost_nanos for r in rows}
    assert {r.price_tier for r in rows} == {"batch"}  # billed at batch prices
    assert len(results) == LINES
    assert usage == results  # one usage record per line, at the line's cost
    assert all(c > 0 for c in usage.values())
    assert len(set(usage.values())) > 1  # varied max_tokens: the costs differ
    ledger = LedgerStore(engine)
    assert TOPUP - ledger.balance(org_id) == sum(usage.values())
    trial = ledger.trial_balance()
    assert trial and all(total == 0 for total in trial.values())  # debits equal credits
    for gw in gws:
        held = admin_get(gw, f"/admin/orgs/{org_id}/balance").json()["held_nanos"]
        assert int(held) == 0


def check_shared(gws: list[Proc]) -> None:
    """Every line ran once, and with two processes both ran some."""
    ran = [lines_run(gw) for gw in gws]
    print(f"lines run per process: {ran}")
    assert sum(ran) == LINES, ran
    assert all(n > 0 for n in ran), ran


def chat_line(i: int) -> dict[str, Any]:
    return {
        "custom_id": f"req-{i:04d}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "sim-small",
            "messages": [{"role": "user", "content": f"Line {i}."}],
            "max_tokens": 1 + i % 12,
        },
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgres+redis"])
def test_openai_sdk_runs_a_1000_line_batch_every_line_once_costs_equal_debits(
    procs: Procs, tmp_path: Path, backend: str
) -> None:
    with cluster(procs, tmp_path, backend) as (engine, gws, org_id, key):
        c = openai.OpenAI(base_url=gws[0].url + "/v1", api_key=key, max_retries=0)
        data = b"".join(json.dumps(chat_line(i)).encode() + b"\n" for i in range(LINES))
        t0 = time.monotonic()
        fid = c.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id
        batch = c.batches.create(
            input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = t0 + TIMEOUT_S
        while (b := c.batches.retrieve(batch.id)).status != "completed":
            assert b.status in ("validating", "in_progress", "finalizing"), b
            assert time.monotonic() < deadline, b.request_counts
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        print(f"\n{backend}: {LINES} lines in {elapsed:.1f} s ({LINES / elapsed:.0f} lines/s)")
        assert b.request_counts is not None
        assert (b.request_counts.total, b.request_counts.completed) == (LINES, LINES)
        assert b.request_counts.failed == 0 and b.error_file_id is None
        assert b.output_file_id is not None
        out = [json.loads(x) for x in c.files.content(b.output_file_id).text.splitlines()]
        assert sorted(x["custom_id"] for x in out) == [f"req-{i:04d}" for i in range(LINES)]
        for x in out:
            assert x["response"]["status_code"] == 200 and x["error"] is None
            i = int(x["custom_id"].removeprefix("req-"))
            used = x["response"]["body"]["usage"]["completion_tokens"]
            assert used == min(1 + i % 12, SIM_TOKENS)  # this line's answer, not another's
        check_money(engine, gws, org_id, b.id)
        check_shared(gws)


def message_request(i: int) -> dict[str, Any]:
    return {
        "custom_id": f"msg-{i:04d}",
        "params": {
            "model": "sim-small",
            "max_tokens": 1 + i % 12,
            "messages": [{"role": "user", "content": f"Tell me about {i}."}],
        },
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgres+redis"])
def test_anthropic_sdk_runs_a_1000_request_message_batch_every_request_once(
    procs: Procs, tmp_path: Path, backend: str
) -> None:
    with cluster(procs, tmp_path, backend) as (engine, gws, org_id, key):
        c = anthropic.Anthropic(base_url=gws[0].url, api_key=key, max_retries=0)
        t0 = time.monotonic()
        reqs = [message_request(i) for i in range(LINES)]
        b = c.messages.batches.create(requests=reqs)  # type: ignore[arg-type]
        deadline = t0 + TIMEOUT_S
        while (b := c.messages.batches.retrieve(b.id)).processing_status != "ended":
            assert time.monotonic() < deadline, b.request_counts
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        print(
            f"\n{backend} message batch: {LINES} in {elapsed:.1f} s ({LINES / elapsed:.0f} lines/s)"
        )
        assert b.request_counts.succeeded == LINES and b.request_counts.errored == 0
        seen: list[str] = []
        for r in c.messages.batches.results(b.id):  # streamed JSONL
            seen.append(r.custom_id)
            assert r.result.type == "succeeded", r
            i = int(r.custom_id.removeprefix("msg-"))
            assert r.result.message.usage.output_tokens == min(1 + i % 12, SIM_TOKENS)
        assert sorted(seen) == [f"msg-{i:04d}" for i in range(LINES)]
        check_money(engine, gws, org_id, b.id)
        check_shared(gws)
