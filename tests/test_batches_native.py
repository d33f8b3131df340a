"""Batches handed whole to a vendor's own batch API (OpenAI's Files + Batches shape),
which the simulator implements: the official openai SDK against the running gateway,
on SQLite and on PostgreSQL + Redis. The vendor answers every line through its batch
(none by the interactive route), each line is billed once from the vendor's usage at
batch prices, and the hold is released to the nano."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from sqlalchemy import select

from tests.conftest import (
    Gateway,
    gateway_yaml,
    sim_faults,
    sim_served,
    sim_stats,
    throwaway_postgres,
)
from tests.needs import require_redis
from tests.servers import ThreadServer
from tests.test_batches_openai import chat_line, client, held, jsonl, upload, wait_ended
from tokenomy.app import app_for
from tokenomy.config import parse_config
from tokenomy.services import build_services
from tokenomy.sim.batch_api import BATCH_API
from tokenomy.store.schema import batch_results, usage_events

NATIVE = """
  - name: native
    deployments: [{vendor: sim-native, model: native-a, price: sim/sim-small}]
  - name: native-refused
    deployments: [{vendor: sim-native, model: nobatch-a, price: sim/sim-small}]
  - name: native-claude
    deployments: [{vendor: sim-native-anthropic, model: claude-native-a, price: sim/sim-small}]
  - name: native-off
    deployments: [{vendor: sim-native-off, model: native-b, price: sim/sim-small}]
"""


@pytest.fixture(scope="module", params=["sqlite", "postgres+redis"])
def gw(
    request: pytest.FixtureRequest, sim: ThreadServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("native")
    with contextlib.ExitStack() as stack:
        db, redis = f"sqlite:///{tmp / 'gw.db'}", ""
        if request.param == "postgres+redis":
            db, redis = stack.enter_context(throwaway_postgres()), require_redis()
        text = gateway_yaml(sim.url, db, NATIVE, redis).replace(
            "vendors:\n",
            "batches: {native: true, native_poll_s: 0.3}\nvendors:\n"
            f'  sim-native: {{base_url: "{sim.url}/v1", dialect: openai, auth: none, native_batch: openai}}\n'
            f'  sim-native-anthropic: {{base_url: "{sim.url}/v1", dialect: anthropic, '
            "auth: none, native_batch: anthropic}\n"
            f'  sim-native-off: {{base_url: "{sim.url}/v1", dialect: openai, auth: none, native_batch: none}}\n',
        )
        svc = build_services(parse_config(text, "native-config"), dict(os.environ))
        srv = ThreadServer(lambda: app_for(svc)).start()
        secret, rec = svc.keys.create("fixture")
        svc.key_cache.put(secret, rec)
        try:
            yield Gateway(srv, svc, secret, sim.url)
        finally:
            srv.stop()


def usage_of(gw: Gateway, batch_id: str) -> list[dict[str, Any]]:
    gw.flush()
    with gw.services.engine.connect() as conn:
        ids = select(batch_results.c.request_id).where(batch_results.c.batch_id == batch_id)
        q = select(usage_events).where(usage_events.c.request_id.in_(ids))
        return [dict(r._mapping) for r in conn.execute(q)]


def test_a_batch_goes_to_the_vendors_batch_api_and_each_line_is_billed_once(
    gw: Gateway, sim: ThreadServer
) -> None:
    start = 10**10
    org = gw.new_org(start)
    c = client(gw, gw.new_key(org_id=org))
    before = sim_served(sim_stats(gw.sim_url), "native-a")
    fid = upload(c, jsonl([chat_line(i, model="native") for i in range(30)]))
    b = c.batches.create(
        input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
    )
    extra = (b.model_extra or {})["tokenomy"]
    assert extra["vendor_batch"]["status"] == "planned"
    assert "native-a" in extra["vendor_batch"]["deployment"]
    assert extra["plan"]["reason"].startswith("now: handed to the vendor")
    assert extra["plan"]["expected_start_at"] == b.created_at
    done = wait_ended(c, b.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (30, 0)
    vb = (done.model_extra or {})["tokenomy"]["vendor_batch"]
    assert vb["status"] == "ingested" and vb["id"].startswith("batch_sim")

    # The vendor answered each line once, in its own batch.
    assert sim.app is not None
    theirs = sim.app[BATCH_API].batches[vb["id"]]
    assert theirs["status"] == "completed" and theirs["request_counts"]["completed"] == 30
    assert theirs["metadata"] == {"tokenomy_batch": b.id}
    assert sim_served(sim_stats(gw.sim_url), "native-a") == before + 30
    assert done.output_file_id is not None
    out = [json.loads(x) for x in c.files.content(done.output_file_id).text.splitlines()]
    assert sorted(x["custom_id"] for x in out) == sorted(f"req-{i}" for i in range(30))
    for x in out:
        body = x["response"]["body"]
        assert x["response"]["status_code"] == 200 and body["model"] == "native"
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] > 0

    usage = usage_of(gw, b.id)
    assert len(usage) == 30 and len({u["request_id"] for u in usage}) == 30
    assert all(u["price_tier"] == "batch" and u["cost_nanos"] > 0 for u in usage)
    assert all(u["deployment"] == extra["vendor_batch"]["deployment"] for u in usage)
    spent = sum(u["cost_nanos"] for u in usage)
    with gw.services.engine.connect() as conn:
        q = select(batch_results.c.cost_nanos).where(batch_results.c.batch_id == b.id)
        assert sum(r[0] for r in conn.execute(q)) == spent
    assert gw.services.ledger.balance(org) == start - spent
    assert held(gw, org) == 0


def test_lines_the_vendor_fails_cost_nothing_and_end_as_failed(gw: Gateway) -> None:
    start = 10**10
    org = gw.new_org(start)
    c = client(gw, gw.new_key(org_id=org))
    sim_faults(gw.sim_url, "native-a", ["400", "400"])  # the vendor's next two answers
    fid = upload(c, jsonl([chat_line(i, model="native") for i in range(6)]))
    b = c.batches.create(
        input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_ended(c, b.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (4, 2)
    usage = usage_of(gw, b.id)
    spent = sum(u["cost_nanos"] for u in usage)
    assert gw.services.ledger.balance(org) == start - spent
    assert held(gw, org) == 0


def test_a_vendor_flagged_off_runs_the_lines_one_by_one(gw: Gateway) -> None:
    org = gw.new_org(10**10)
    c = client(gw, gw.new_key(org_id=org))
    fid = upload(c, jsonl([chat_line(i, model="native-off") for i in range(5)]))
    b = c.batches.create(
        input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert "vendor_batch" not in (b.model_extra or {})["tokenomy"]
    done = wait_ended(c, b.id)
    assert done.status == "completed"
    assert held(gw, org) == 0


def test_a_batch_the_vendor_refuses_runs_here_line_by_line(gw: Gateway) -> None:
    start = 10**10
    org = gw.new_org(start)
    c = client(gw, gw.new_key(org_id=org))
    fid = upload(c, jsonl([chat_line(i, model="native-refused") for i in range(5)]))
    b = c.batches.create(
        input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_ended(c, b.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 5
    vb = (done.model_extra or {})["tokenomy"]["vendor_batch"]
    assert vb["status"] == "refused" and vb["id"] is None
    spent = sum(u["cost_nanos"] for u in usage_of(gw, b.id))
    assert spent > 0 and gw.services.ledger.balance(org) == start - spent
    assert held(gw, org) == 0


def test_openai_chat_lines_go_to_anthropics_message_batches_translated(
    gw: Gateway, sim: ThreadServer
) -> None:
    start = 10**10
    org = gw.new_org(start)
    c = client(gw, gw.new_key(org_id=org))
    fid = upload(c, jsonl([chat_line(i, model="native-claude") for i in range(8)]))
    b = c.batches.create(
        input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_ended(c, b.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 8
    vb = (done.model_extra or {})["tokenomy"]["vendor_batch"]
    assert vb["status"] == "ingested" and vb["id"].startswith("msgbatch_sim")
    assert sim.app is not None
    assert sim.app[BATCH_API].batches[vb["id"]]["request_counts"]["succeeded"] == 8
    assert done.output_file_id is not None
    out = [json.loads(x) for x in c.files.content(done.output_file_id).text.splitlines()]
    for x in out:  # Anthropic's messages, answered in OpenAI's shape
        body = x["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == "native-claude"
        assert body["choices"][0]["message"]["content"]
    usage = usage_of(gw, b.id)
    assert len(usage) == 8 and all(u["price_tier"] == "batch" for u in usage)
    spent = sum(u["cost_nanos"] for u in usage)
    assert spent > 0 and gw.services.ledger.balance(org) == start - spent
    assert held(gw, org) == 0


def test_an_anthropic_message_batch_goes_to_the_vendors_message_batches(
    gw: Gateway, sim: ThreadServer
) -> None:
    start = 10**10
    org = gw.new_org(start)
    a = anthropic.Anthropic(base_url=gw.url, api_key=gw.new_key(org_id=org), max_retries=0)
    mb = a.messages.batches.create(
        requests=[
            {
                "custom_id": f"q{i}",
                "params": {
                    "model": "native-claude",
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"question {i}"}],
                },
            }
            for i in range(4)
        ]
    )
    deadline = time.monotonic() + 60
    while (got := a.messages.batches.retrieve(mb.id)).processing_status != "ended":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    vb = (got.model_extra or {})["tokenomy"]["vendor_batch"]
    assert vb["status"] == "ingested" and vb["id"].startswith("msgbatch_sim")
    results = {r.custom_id: r.result for r in a.messages.batches.results(mb.id)}
    assert sorted(results) == ["q0", "q1", "q2", "q3"]
    for r in results.values():
        assert r.type == "succeeded" and r.message.model == "native-claude"
    spent = sum(u["cost_nanos"] for u in usage_of(gw, mb.id))
    assert spent > 0 and gw.services.ledger.balance(org) == start - spent
    assert held(gw, org) == 0
