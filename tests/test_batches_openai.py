"""OpenAI Files and Batches, driven by the official openai SDK against the running gateway
and simulator (SQLite, then PostgreSQL + Redis): results by custom_id, each line billed
once at batch prices, the hold released to the nano."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from tests.conftest import ADMIN_KEY, Gateway, sim_faults
from tokenomy.api.batch_routes import BATCHES
from tokenomy.cli.main import main as cli_main
from tokenomy.ledger.accounts import OrgMeter
from tokenomy.store.schema import batch_results, batches, usage_events


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def chat_line(i: int, model: str = "sim-small", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": f"Question number {i}: say something."}],
            "max_tokens": 16,
            **body,
        },
    }


def upload(c: openai.OpenAI, data: bytes) -> str:
    f = c.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert f.purpose == "batch" and f.bytes == len(data)
    return f.id


def wait_ended(c: openai.OpenAI, batch_id: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        b = c.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "cancelled", "expired"):
            return b
        assert time.monotonic() < deadline, f"batch still {b.status}: {b.request_counts}"
        time.sleep(0.2)


def held(gateway: Gateway, org_id: str) -> int:
    """What the org has on hold in the live ledger right now."""
    svc = gateway.services
    org = svc.accounts.orgs[org_id]
    state = gateway.server.call(svc.live.org_state(OrgMeter(org)))
    return int(state.held)


def status_of(gateway: Gateway, batch_id: str) -> str | None:
    with gateway.services.engine.connect() as conn:
        q = select(batches.c.status).where(batches.c.id == batch_id)
        return conn.execute(q).scalar()


def results_of(gateway: Gateway, batch_id: str) -> list[dict[str, Any]]:
    gateway.flush()
    q = select(batch_results).where(batch_results.c.batch_id == batch_id)
    with gateway.services.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def test_openai_sdk_runs_a_200_line_batch_billing_each_line_once_at_batch_prices(
    gateway: Gateway,
) -> None:
    start = 10**9
    org = gateway.new_org(start)
    key = gateway.new_key(org_id=org)
    c = client(gateway, key)
    file_id = upload(c, jsonl([chat_line(i) for i in range(200)]))
    b = c.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert b.status == "in_progress" and b.request_counts is not None
    assert b.request_counts.total == 200 and b.metadata == {"job": "nightly"}
    assert held(gateway, org) > 0  # the whole batch's worst case, held at creation
    done = wait_ended(c, b.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (200, 0)
    assert done.output_file_id and done.error_file_id is None
    assert done.completed_at and done.finalizing_at and done.in_progress_at

    lines = [json.loads(x) for x in c.files.content(done.output_file_id).text.splitlines()]
    by_id = {x["custom_id"]: x for x in lines}
    assert sorted(by_id) == sorted(f"req-{i}" for i in range(200))
    for x in lines:
        assert x["error"] is None and x["response"]["status_code"] == 200
        assert x["response"]["body"]["object"] == "chat.completion"
        assert x["id"] == x["response"]["request_id"]

    results = results_of(gateway, b.id)
    assert len(results) == 200
    with gateway.services.engine.connect() as conn:
        usage = [
            dict(r._mapping)
            for r in conn.execute(
                select(usage_events).where(
                    usage_events.c.request_id.in_([r["request_id"] for r in results])
                )
            )
        ]
    # One usage record per line, at the batch price, carrying its cost.
    assert len(usage) == 200
    assert {u["price_tier"] for u in usage} == {"batch"}
    cost = {u["request_id"]: u["cost_nanos"] for u in usage}
    assert all(cost[r["request_id"]] == r["cost_nanos"] > 0 for r in results)
    total = sum(r["cost_nanos"] for r in results)
    # The ledger's debits are exactly the lines' costs, and nothing stays held.
    assert gateway.services.ledger.balance(org) == start - total
    assert held(gateway, org) == 0
    with pytest.raises(openai.ConflictError):
        c.batches.cancel(b.id)  # a completed batch cannot be cancelled


def test_files_are_listed_read_back_and_deleted_per_owner(gateway: Gateway) -> None:
    org = gateway.new_org(10**9)
    c = client(gateway, gateway.new_key(org_id=org))
    data = jsonl([chat_line(i) for i in range(3)])
    fid = upload(c, data)
    assert c.files.retrieve(fid).filename == "in.jsonl"
    assert c.files.content(fid).content == data
    assert fid in [f.id for f in c.files.list(purpose="batch")]
    other = client(gateway, gateway.new_key(org_id=gateway.new_org(10**9)))
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(fid)  # another org's file does not exist for it
    assert c.files.delete(fid).deleted is True
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(fid)


def test_batches_list_pages_with_after_and_limit(gateway: Gateway) -> None:
    org = gateway.new_org(10**9)
    c = client(gateway, gateway.new_key(org_id=org))
    fid = upload(c, jsonl([chat_line(0)]))
    made = [
        c.batches.create(
            input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    first = c.batches.list(limit=2)
    assert [x.id for x in first.data] == made[::-1][:2] and first.has_more
    rest = c.batches.list(limit=2, after=first.data[-1].id)
    assert [x.id for x in rest.data] == [made[0]]
    assert [x.id for x in c.batches.list(limit=2)] == made[::-1]  # the SDK pages on
    for bid in made:
        wait_ended(c, bid)


def test_bad_lines_fail_the_batch_naming_their_line_numbers_and_hold_nothing(
    gateway: Gateway,
) -> None:
    org = gateway.new_org(10**9)
    c = client(gateway, gateway.new_key(org_id=org, models=["sim-small"]))
    lines = [
        json.dumps(chat_line(0)).encode(),
        b"{not json",
        json.dumps(chat_line(0)).encode(),  # duplicate custom_id
        json.dumps({**chat_line(3), "url": "/v1/embeddings"}).encode(),
        json.dumps(chat_line(4, model="opus")).encode(),  # the key may not use it
        json.dumps(chat_line(5, model="no-such-model")).encode(),
        json.dumps(chat_line(6, messages="hi")).encode(),  # invalid body
    ]
    fid = upload(c, b"\n".join(lines) + b"\n")
    b = c.batches.create(
        input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert b.status == "failed" and b.failed_at
    assert b.errors is not None and b.errors.data is not None
    got = {(e.line, e.code) for e in b.errors.data}
    assert (2, "invalid_json_line") in got
    assert (3, "duplicate_custom_id") in got
    assert (4, "mismatched_endpoint") in got
    assert {e.line for e in b.errors.data} == {2, 3, 4, 5, 6, 7}
    assert all(e.message for e in b.errors.data)
    assert held(gateway, org) == 0
    assert gateway.services.ledger.balance(org) == 10**9
    with pytest.raises(openai.APIStatusError) as err:
        c.batches.cancel(b.id)  # a failed batch cannot be cancelled
    assert err.value.status_code == 409


def test_batch_requests_that_cannot_start_get_clear_errors(gateway: Gateway) -> None:
    org = gateway.new_org(10**9)
    key = gateway.new_key(org_id=org)
    c = client(gateway, key)
    with pytest.raises(openai.NotFoundError):
        c.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    fid = upload(c, jsonl([chat_line(0)]))
    with pytest.raises(openai.BadRequestError) as e:
        c.batches.create(
            input_file_id=fid,
            endpoint="/v1/responses",  # type: ignore[arg-type]
            completion_window="24h",
        )
    assert e.value.body["param"] == "endpoint"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        c.batches.create(
            input_file_id=fid,
            endpoint="/v1/chat/completions",
            completion_window="1h",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.NotFoundError):
        c.batches.retrieve("batch_nope")
    r = httpx.post(
        gateway.base_url + "/files",
        headers={"Authorization": f"Bearer {key}"},
        files={"file": ("big.jsonl", b"{}\n" * 50_001)},
        data={"purpose": "batch"},
    )
    assert r.status_code == 413 and r.json()["error"]["param"] == "file"
    r = httpx.post(
        gateway.base_url + "/files",
        headers={"Authorization": f"Bearer {key}"},
        files={"file": ("x.jsonl", b"{}\n")},
        data={"purpose": "nonsense"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"


def test_a_batch_the_balance_cannot_cover_is_refused_402_before_any_work(
    gateway: Gateway,
) -> None:
    org = gateway.new_org(1000)  # a micro-dollar
    c = client(gateway, gateway.new_key(org_id=org))
    fid = upload(c, jsonl([chat_line(i, max_tokens=4000) for i in range(50)]))
    with pytest.raises(openai.APIStatusError) as e:
        c.batches.create(
            input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert e.value.status_code == 402
    assert "batch" in e.value.message
    assert held(gateway, org) == 0
    assert c.batches.list().data == []


def test_cancel_ends_the_lines_not_run_and_releases_their_holds_exactly(
    gateway: Gateway,
) -> None:
    start = 10**9
    org = gateway.new_org(start)
    c = client(gateway, gateway.new_key(org_id=org))
    fid = upload(c, jsonl([chat_line(i) for i in range(150)]))
    b = c.batches.create(
        input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelling = c.batches.cancel(b.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = wait_ended(c, b.id)
    assert done.status == "cancelled" and done.cancelled_at
    results = results_of(gateway, b.id)
    assert len(results) < 150  # the worker cannot have run them all meanwhile
    ran = {r["custom_id"] for r in results}
    unrun = []
    if done.error_file_id:
        unrun = [json.loads(x) for x in c.files.content(done.error_file_id).text.splitlines()]
    assert {x["custom_id"] for x in unrun} | ran == {f"req-{i}" for i in range(150)}
    assert all(x["error"]["code"] == "batch_cancelled" for x in unrun)
    assert gateway.services.ledger.balance(org) == start - sum(r["cost_nanos"] for r in results)
    assert held(gateway, org) == 0
    assert c.batches.cancel(b.id).status == "cancelled"  # cancelling again changes nothing


def test_expiry_ends_the_lines_not_run_as_batch_expired_and_releases_their_holds(
    gateway: Gateway,
) -> None:
    start = 10**9
    org = gateway.new_org(start)
    c = client(gateway, gateway.new_key(org_id=org))
    # "capped" serves one call at a time, slowly: most lines are still waiting at expiry.
    fid = upload(c, jsonl([chat_line(i, model="capped", max_tokens=6) for i in range(12)]))
    b = c.batches.create(
        input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
    )
    svc = gateway.services
    with svc.engine.begin() as conn:  # the completion window ends now
        conn.execute(
            batches.update().where(batches.c.id == b.id).values(expires_at=int(time.time()) - 1)
        )
    gateway.server.call(gateway.server.app[BATCHES].worker.sweep())
    done = wait_ended(c, b.id)
    assert done.status == "expired" and done.expired_at and done.error_file_id
    results = results_of(gateway, b.id)
    assert len(results) < 12
    unrun = [json.loads(x) for x in c.files.content(done.error_file_id).text.splitlines()]
    assert {x["error"]["code"] for x in unrun} == {"batch_expired"}
    assert {x["custom_id"] for x in unrun} | {r["custom_id"] for r in results} == {
        f"req-{i}" for i in range(12)
    }
    assert len(unrun) + len(results) == 12
    # Only the lines that ran are paid for; the rest of the hold is released exactly.
    assert gateway.services.ledger.balance(org) == start - sum(r["cost_nanos"] for r in results)
    assert held(gateway, org) == 0


def test_batch_lines_wait_behind_interactive_calls_in_the_fair_queue(gateway: Gateway) -> None:
    org = gateway.new_org(10**9)
    key = gateway.new_key(org_id=org)
    c = client(gateway, key)
    # One call at a time on "capped": the worker's other runners queue at the batch tier.
    fid = upload(c, jsonl([chat_line(i, model="capped", max_tokens=6) for i in range(8)]))
    b = c.batches.create(
        input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 10
    while gateway.services.queues.depth < 2:  # batch lines waiting for the deployment
        assert time.monotonic() < deadline
        time.sleep(0.01)
    before = len(results_of(gateway, b.id))
    r = c.chat.completions.create(
        model="capped", messages=[{"role": "user", "content": "now"}], max_tokens=6
    )
    assert r.choices[0].message.content
    # Served after the line that held the deployment, ahead of every waiting line.
    assert len(results_of(gateway, b.id)) - before <= 1
    assert wait_ended(c, b.id).status == "completed"


def test_cli_lists_shows_and_cancels_a_batch_that_the_gateway_then_ends(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    start = 10**9
    org = gateway.new_org(start)
    c = client(gateway, gateway.new_key(org_id=org))
    fid = upload(c, jsonl([chat_line(i, model="capped", max_tokens=6) for i in range(10)]))
    b = c.batches.create(
        input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
    )
    monkeypatch.setenv("TOKENOMY_DATABASE_URL", gateway.services.config.database.url)
    assert cli_main(["batches", "list", "--owner", org]) == 0
    assert b.id in capsys.readouterr().out
    assert cli_main(["batches", "show", b.id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == b.id and shown["request_counts"]["total"] == 10
    assert shown["held_nanos"] > 0
    assert cli_main(["batches", "cancel", b.id]) == 0
    assert "cancelling" in capsys.readouterr().out
    done = wait_ended(c, b.id)  # the gateway's worker ends the lines and the batch
    assert done.status == "cancelled"
    results = results_of(gateway, b.id)
    assert gateway.services.ledger.balance(org) == start - sum(r["cost_nanos"] for r in results)
    assert held(gateway, org) == 0
    with pytest.raises(SystemExit):
        cli_main(["batches", "cancel", b.id])  # over: nothing to cancel
    assert "cannot be cancelled" in capsys.readouterr().err


def metric(gateway: Gateway, name: str) -> float:
    r = httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    r.raise_for_status()
    for line in r.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_show_queued_running_done_lines_and_the_oldest_batch(gateway: Gateway) -> None:
    org = gateway.new_org(10**9)
    c = client(gateway, gateway.new_key(org_id=org))
    done_before = metric(gateway, "tokenomy_batch_lines_done_total")
    # Long enough (one slow call at a time) to span several reads of the gauges (2 s).
    fid = upload(c, jsonl([chat_line(i, model="capped", max_tokens=6) for i in range(24)]))
    b = c.batches.create(
        input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 10
    while metric(gateway, "tokenomy_batch_lines_queued") == 0:  # read every couple of seconds
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert metric(gateway, "tokenomy_batch_lines_running") >= 1
    assert metric(gateway, "tokenomy_batch_oldest_age_seconds") >= 0
    # The width the worker may run at: batches.concurrency (4), fewer while yielding.
    assert metric(gateway, "tokenomy_batch_width") in (0, 2, 4)
    assert metric(gateway, "tokenomy_batch_lag_pauses_total") >= 0
    assert wait_ended(c, b.id).status == "completed"
    assert metric(gateway, "tokenomy_batch_lines_done_total") >= done_before + 24


def test_a_line_refused_for_now_is_tried_again_and_a_refused_line_costs_nothing(
    gateway: Gateway,
) -> None:
    start = 10**9
    org = gateway.new_org(start)
    c = client(gateway, gateway.new_key(org_id=org))
    # The vendor's first two answers: 429 (later: tried again) and 400 (a final error).
    sim_faults(gateway.sim_url, "single-a", ["429", "400"])
    fid = upload(c, jsonl([chat_line(i, model="single") for i in range(2)]))
    b = c.batches.create(
        input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_ended(c, b.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    assert done.error_file_id is not None
    (err,) = [json.loads(x) for x in c.files.content(done.error_file_id).text.splitlines()]
    assert err["response"]["status_code"] == 400 and err["response"]["body"]["error"]
    results = results_of(gateway, b.id)
    ok = next(r for r in results if r["status_code"] == 200)
    failed = next(r for r in results if r["status_code"] != 200)
    assert failed["cost_nanos"] == 0 < ok["cost_nanos"]
    # The refused try has a record of its own (free); the line's id has its outcome.
    tries = gateway.events(request_id=f"{ok['request_id']}~1")
    assert len(tries) == 1 and tries[0]["cost_nanos"] == 0 and tries[0]["http_status"] == 429
    assert gateway.events(request_id=ok["request_id"])[0]["status"] == "ok"
    assert gateway.services.ledger.balance(org) == start - ok["cost_nanos"]
    assert held(gateway, org) == 0


def test_revoking_the_key_ends_its_batch_lines_unbilled_and_releases_their_holds(
    gateway: Gateway,
) -> None:
    start = 10**9
    org = gateway.new_org(start)
    svc = gateway.services
    secret, rec = svc.keys.create("revoked later", org_id=org)
    svc.key_cache.put(secret, rec)
    c = client(gateway, secret)
    fid = upload(c, jsonl([chat_line(i, model="capped", max_tokens=6) for i in range(12)]))
    b = c.batches.create(
        input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
    )
    svc.keys.revoke(rec.id)
    svc.key_cache.revoke_local(rec.id)  # as the revocation's announcement does
    deadline = time.monotonic() + 30
    while status_of(gateway, b.id) != "completed":  # the key cannot read it any more
        assert time.monotonic() < deadline
        time.sleep(0.1)
    results = results_of(gateway, b.id)
    assert len(results) == 12
    refused = [r for r in results if r["status_code"] == 401]
    assert refused and all(r["cost_nanos"] == 0 for r in refused)
    assert svc.ledger.balance(org) == start - sum(r["cost_nanos"] for r in results)
    assert held(gateway, org) == 0
