"""A vendor that reports no usage: every answer a client receives carries usage, counted by
the gateway, and is billed for what the client received, streamed or whole (simulator
whose ``silent-*`` models never report usage; real SDKs; SQLite, then PostgreSQL + Redis).

The same checks against a real llama.cpp server are in test_silent_upstream_llamacpp.py.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import Gateway, running_gateway
from tests.servers import ThreadServer

#: The silent model priced (the simulator's own models have no catalogue entry).
EXTRA = """
  - name: silent-priced
    deployments: [{vendor: sim, model: silent-p, price: sim/sim-small, max_output: 4096}]
"""
MSGS = [{"role": "user", "content": "Tell me about lighthouses."}]


@pytest.fixture(scope="module", params=["sqlite", "postgres+redis"])
def gw(
    request: pytest.FixtureRequest, sim: ThreadServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("silent")
    with running_gateway(sim.url, tmp, request.param, EXTRA, patient=True) as gw:
        yield gw


@pytest.fixture
def org_key(gw: Gateway) -> tuple[str, str]:
    org = gw.new_org(10**10)
    return org, gw.new_key(org_id=org)


def nanos(cost: Any) -> int:
    return int(Decimal(str(cost)) * 10**9)


def completions_stream(
    gw: Gateway, key: str, body: dict[str, Any]
) -> tuple[str, list[dict[str, Any]]]:
    """A legacy completions stream asking for usage: its request id and its chunks (the
    stream checked to end in ``[DONE]``)."""
    with httpx.stream(
        "POST",
        gw.base_url + "/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        datas = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    return rid, [json.loads(d) for d in datas[:-1]]


def counted(gw: Gateway, text: str) -> int:
    return gw.services.counter.count_text("silent-p", text)


def test_a_silent_stream_read_to_its_end_bills_the_output_and_sends_usage(
    gw: Gateway, org_key: tuple[str, str]
) -> None:
    org, key = org_key
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="silent-priced",
        messages=MSGS,  # type: ignore[arg-type]
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    usage_chunks = [ch for ch in chunks if ch.usage is not None]
    assert text.startswith("[simulated]")
    # One usage chunk, the last before [DONE], with no choices, as OpenAI sends it.
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and not chunks[-1].choices
    u = chunks[-1].usage
    assert u is not None
    (ev,) = gw.wait_events(1, request_id=raw.headers["x-request-id"])
    assert ev["usage_source"] == "counted"
    assert u.completion_tokens == ev["output_tokens"] == counted(gw, text) > 0
    assert u.prompt_tokens == ev["input_tokens"] > 0
    assert nanos(u.model_extra["cost"]) == ev["cost_nanos"] > 0  # type: ignore[index]
    assert gw.services.ledger.balance(org) == 10**10 - ev["cost_nanos"]


def test_a_silent_stream_bills_the_same_as_the_same_answer_whole(
    gw: Gateway, org_key: tuple[str, str]
) -> None:
    _, key = org_key
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    whole = c.chat.completions.with_raw_response.create(
        model="silent-priced",
        messages=MSGS,  # type: ignore[arg-type]
        max_tokens=40,
    )
    answer = whole.parse()
    streamed = c.chat.completions.with_raw_response.create(
        model="silent-priced",
        messages=MSGS,  # type: ignore[arg-type]
        max_tokens=40,
        stream=True,  # no include_usage: the client is not sent usage, but is billed
    )
    chunks = list(streamed.parse())
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == answer.choices[0].message.content
    assert all(ch.usage is None for ch in chunks)
    (w,) = gw.wait_events(1, request_id=whole.headers["x-request-id"])
    (s,) = gw.wait_events(1, request_id=streamed.headers["x-request-id"])
    for k in ("input_tokens", "output_tokens", "cost_nanos", "usage_source"):
        assert w[k] == s[k], k
    assert s["output_tokens"] == counted(gw, text) > 0
    # The whole answer reached the client with its counted usage and cost.
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        w["input_tokens"],
        w["output_tokens"],
    )
    assert nanos(answer.usage.model_extra["cost"]) == w["cost_nanos"] > 0  # type: ignore[index]
    assert nanos(whole.headers["x-tokenomy-cost"]) == w["cost_nanos"]


def test_an_anthropic_client_of_a_silent_vendor_gets_the_counted_output_tokens(
    gw: Gateway, org_key: tuple[str, str]
) -> None:
    _, key = org_key
    c = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)
    with c.messages.stream(
        model="silent-priced",
        max_tokens=40,
        messages=MSGS,  # type: ignore[arg-type]
    ) as stream:
        msg = stream.get_final_message()
        rid = stream.response.headers["x-request-id"]
    text = "".join(b.text for b in msg.content if b.type == "text")
    (s,) = gw.wait_events(1, request_id=rid)
    assert msg.usage.output_tokens == s["output_tokens"] == counted(gw, text) > 0
    assert s["usage_source"] == "counted" and s["cost_nanos"] > 0
    whole = c.messages.with_raw_response.create(
        model="silent-priced",
        max_tokens=40,
        messages=MSGS,  # type: ignore[arg-type]
    )
    m = whole.parse()
    (w,) = gw.wait_events(1, request_id=whole.headers["x-request-id"])
    assert m.usage.output_tokens == w["output_tokens"] == s["output_tokens"]
    assert m.usage.input_tokens == w["input_tokens"] == s["input_tokens"]
    assert w["cost_nanos"] == s["cost_nanos"]
    body = json.loads(whole.http_response.content, parse_float=Decimal)
    assert nanos(body["usage"]["cost"]) == w["cost_nanos"]


def test_a_silent_legacy_completions_stream_is_billed_and_sends_usage(
    gw: Gateway, org_key: tuple[str, str]
) -> None:
    _, key = org_key
    prompt = "Once upon a time " + secrets.token_hex(4)
    body = {"model": "silent-priced", "prompt": prompt, "max_tokens": 30}
    rid, chunks = completions_stream(gw, key, body)
    text = "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"])
    last = chunks[-1]
    assert last["choices"] == [] and last["object"] == "text_completion"
    (ev,) = gw.wait_events(1, request_id=rid)
    assert last["usage"]["completion_tokens"] == ev["output_tokens"] == counted(gw, text) > 0
    assert nanos(last["usage"]["cost"]) == ev["cost_nanos"] > 0
    whole = httpx.post(
        gw.base_url + "/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "silent-priced", "prompt": prompt, "max_tokens": 30},
    ).json()
    assert whole["choices"][0]["text"] == text
    assert whole["usage"]["completion_tokens"] == ev["output_tokens"]
    assert nanos(whole["usage"]["cost"]) == ev["cost_nanos"]
