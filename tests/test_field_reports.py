"""Smaller defects users hit when they first tried tokenomy, each pinned by a test."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.conftest import ADMIN_KEY, Gateway
from tests.test_cli_ledger import cli
from tokenomy.admission.fairqueue import FairQueue
from tokenomy.analytics.formatting import money
from tokenomy.cli.usage_cmd import _flat
from tokenomy.ledger.accounts import Scope

MSG = [{"role": "user", "content": "hi"}]


def client(gateway: Gateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key or gateway.key, max_retries=0)


# x-request-id on errors


@pytest.mark.parametrize(
    ("method", "path", "body", "auth", "status"),
    [
        ("POST", "/v1/chat/completions", {"model": "sim-small", "messages": MSG}, None, 401),
        ("POST", "/v1/chat/completions", b"{not json", "key", 400),
        ("POST", "/v1/chat/completions", {"model": "no-such", "messages": MSG}, "key", 404),
        ("POST", "/v1/messages", {"model": "sim-claude", "messages": MSG}, "key", 400),
        ("GET", "/v1/models", None, "tk-wrong", 401),
        ("GET", "/admin/keys", None, "key", 401),
        ("GET", "/v1/nowhere", None, "key", 404),
    ],
)
def test_every_error_response_carries_a_request_id(
    gateway: Gateway, method: str, path: str, body: object, auth: str | None, status: int
) -> None:
    headers = {}
    if auth is not None:
        headers["Authorization"] = f"Bearer {gateway.key if auth == 'key' else auth}"
    kw: dict[str, object] = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.request(method, gateway.url + path, headers=headers, **kw)  # type: ignore[arg-type]
    assert r.status_code in (status, 403), r.text
    assert r.headers.get("x-request-id", "").startswith("req_"), dict(r.headers)


def test_a_refused_call_names_its_request_id_and_its_record(gateway: Gateway) -> None:
    org = gateway.new_org(0)
    key = gateway.new_key(org_id=org)
    with pytest.raises(openai.APIStatusError) as e:
        client(gateway, key).chat.completions.create(model="ds-reasoner", messages=MSG)  # type: ignore[arg-type]
    assert e.value.status_code == 402
    rid = e.value.response.headers["x-request-id"]
    assert rid.startswith("req_")
    (ev,) = gateway.wait_events(1, request_id=rid)
    assert ev["http_status"] == 402


# analytics


def test_routing_suffixes_and_aliases_are_recorded_as_the_model_itself(gateway: Gateway) -> None:
    c = client(gateway)
    ids = []
    for model in ("sim-small:floor", "sim-small:nitro", "small"):
        raw = c.chat.completions.with_raw_response.create(model=model, messages=MSG, max_tokens=5)  # type: ignore[arg-type]
        ids.append(raw.headers["x-request-id"])
    for rid in ids:
        (ev,) = gateway.wait_events(1, request_id=rid)
        assert ev["model"] == "sim-small"


def test_money_under_a_cent_is_not_shown_as_zero() -> None:
    assert money(4_200_000, "USD") == "$0.0042"
    assert money(1, "USD") == "$0.000000001"
    assert money(-4_200_000, "USD") == "-$0.0042"
    assert money(0, "USD") == "$0.00"
    assert money(12_345_678_900, "USD") == "$12.35"
    assert money(10_000_000, "CNY") == "¥0.01"


def test_machine_readable_cost_columns_say_they_hold_nanos() -> None:
    flat = _flat({"model": "m", "cost_nanos": {"USD": 1500, "CNY": 7}}, human=False)
    assert flat == {"model": "m", "cost_nanos_CNY": 7, "cost_nanos_USD": 1500}
    human = _flat({"model": "m", "cost_nanos": {"USD": 4_200_000}}, human=True)
    assert human == {"model": "m", "cost_USD": "$0.0042"}


# refusals


def test_a_budget_that_ran_out_does_not_ask_for_a_top_up(gateway: Gateway) -> None:
    org = gateway.new_org(10**12)
    key = gateway.new_key(org_id=org)
    key_id = gateway.services.key_cache.lookup(key).id  # type: ignore[union-attr]
    b = gateway.services.ledger.set_budget(Scope.KEY, key_id, "day", amount_nanos=1)
    gateway.server.call(gateway.services.refresh_accounts())
    try:
        with pytest.raises(openai.APIStatusError) as e:
            client(gateway, key).chat.completions.create(model="ds-reasoner", messages=MSG)  # type: ignore[arg-type]
        msg = e.value.body["message"]  # type: ignore[index]
        assert e.value.status_code == 402 and b.id in msg
        assert "Top up" not in msg and "budget" in msg
    finally:
        gateway.services.ledger.delete_budget(b.id)
        gateway.server.call(gateway.services.refresh_accounts())
    poor = gateway.new_key(org_id=gateway.new_org(0))
    with pytest.raises(openai.APIStatusError) as e:
        client(gateway, poor).chat.completions.create(model="ds-reasoner", messages=MSG)  # type: ignore[arg-type]
    assert "Top up" in e.value.body["message"]  # type: ignore[index]


# the model an answer names


def test_answers_name_the_public_model_in_both_dialects(gateway: Gateway) -> None:
    # "routed" is served by the upstream model "cheap-a": clients see the name they use.
    c = client(gateway)
    r = c.chat.completions.create(model="routed", messages=MSG, max_tokens=5)  # type: ignore[arg-type]
    assert r.model == "routed"
    chunks = list(
        c.chat.completions.create(
            model="routed",
            messages=MSG,  # type: ignore[arg-type]
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks and {ch.model for ch in chunks} == {"routed"}
    r = c.chat.completions.create(model="routed:floor", messages=MSG, max_tokens=5)  # type: ignore[arg-type]
    assert r.model == "routed"
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0)
    m = claude.messages.create(model="routed", max_tokens=5, messages=MSG)  # type: ignore[arg-type]
    assert m.model == "routed"


# capabilities


def test_an_embeddings_deployment_serves_no_chat_and_a_chat_one_no_embeddings(
    gateway: Gateway,
) -> None:
    c = client(gateway)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="sim-embed", messages=MSG)  # type: ignore[arg-type]
    assert "sim-embed" in str(e.value.body)
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model="sim-small", input="x")
    assert "sim-small" in str(e.value.body)
    assert c.embeddings.create(model="sim-embed", input="x").data


# the queue


async def test_queue_entries_carry_their_request_id() -> None:
    q = FairQueue("dep", 1, max_wait_s=5)
    held = await q.acquire("org-a")
    waiting = asyncio.create_task(q.acquire("org-b", key="k1", request_id="req_abc"))
    await asyncio.sleep(0)
    (entry,) = q.view("k1")
    assert entry.request_id == "req_abc" and entry.position == 0
    held.release()
    (await waiting).release()


def test_queue_endpoint_lists_request_ids(gateway: Gateway) -> None:
    body = {"model": "capped", "messages": MSG, "max_tokens": 20}
    headers = {"Authorization": f"Bearer {gateway.key}"}

    async def scenario() -> list[dict[str, object]]:
        async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=30) as h:
            first = asyncio.create_task(h.post("/v1/chat/completions", json=body))
            second = asyncio.create_task(h.post("/v1/chat/completions", json=body))
            entries: list[dict[str, object]] = []
            for _ in range(200):
                await asyncio.sleep(0.01)
                entries = (await h.get("/v1/queue")).json()["data"]
                if entries:
                    break
            await asyncio.gather(first, second)
            return entries

    entries = asyncio.run(scenario())
    assert entries and all(str(e["request_id"]).startswith("req_") for e in entries)


# organisations by name


def test_ledger_commands_take_an_organisation_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENOMY_DATABASE_URL", f"sqlite:///{tmp_path / 'l.db'}")
    code, out, _ = cli(capsys, "orgs", "create", "Acme Corp", "--currency", "USD")
    org = out.splitlines()[0]
    code, out, err = cli(capsys, "topup", "Acme Corp", "3.00")
    assert code == 0, err
    assert "balance: 3.00 USD" in out
    assert cli(capsys, "balance", "Acme Corp")[1].strip() == "3.00 USD"
    assert cli(capsys, "balance", org)[1].strip() == "3.00 USD"
    code, out, _ = cli(capsys, "statement", "Acme Corp", "--csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert len(rows) == 2 and rows[1][2] == "topup"
    cli(capsys, "orgs", "create", "Twin", "--currency", "USD")
    cli(capsys, "orgs", "create", "Twin", "--currency", "USD")
    code, _, err = cli(capsys, "balance", "Twin")
    assert code != 0 and "several" in err
    code, _, err = cli(capsys, "balance", "Nobody")
    assert code == 1 and "Nobody" in err


def test_admin_key_is_not_an_api_key_for_errors(gateway: Gateway) -> None:
    # The admin routes' own refusals carry a request id too.
    r = httpx.get(gateway.url + "/admin/keys", headers={"Authorization": f"Bearer {ADMIN_KEY}x"})
    assert r.status_code in (401, 403) and r.headers["x-request-id"].startswith("req_")
