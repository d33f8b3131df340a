"""Responses passthrough: a deployment whose vendor speaks the Responses API gets the
Responses request as it is, and its Response or events reach the client, metered from the
vendor's own usage (cached and reasoning tokens included) or counted locally when it gives
none. A recorded OpenAI stream and Response served by a small local upstream are billed
exactly what their usage says; the simulator serves the same API to the official SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from tests.conftest import Gateway, gateway_yaml, sim_faults, throwaway_postgres
from tests.needs import require_redis
from tests.servers import ThreadServer
from tokenomy.app import app_for
from tokenomy.config import parse_config
from tokenomy.services import build_services

FIXTURES = Path(__file__).parent / "fixtures"
STREAM = (FIXTURES / "openai_responses_stream.sse").read_bytes()
ANSWER = (FIXTURES / "openai_response.json").read_bytes()
#: gpt-5.4's catalogue prices in nano-USD per token: input, cached input, output.
INPUT, CACHED, OUTPUT = 2500, 250, 15000

EXTRA = """
  - name: native
    deployments:
      - {vendor: sim, model: sim-native, capabilities: [tools, json, stream, responses],
         price: sim/sim-small, max_output: 4096}
  - name: silent-native
    deployments: [{vendor: sim, model: silent-native, capabilities: [stream, responses],
                   price: sim/sim-small, max_output: 4096}]
  - name: fx
    deployments: [{vendor: fx, model: fx-model, capabilities: [stream, responses],
                   price: openai/gpt-5.4, max_output: 4096}]
  - name: fx-cut
    deployments: [{vendor: fx, model: fx-cut, capabilities: [stream, responses],
                   price: openai/gpt-5.4, max_output: 4096}]
"""


class Upstream:
    """A vendor serving recorded Responses answers; ``fx-cut`` streams stop before
    ``response.completed`` (after ``cut_deltas`` text deltas)."""

    cut_deltas = 4

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/responses", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if not body.get("stream"):
            return web.Response(body=ANSWER, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        events = STREAM.split(b"\n\n")
        if body["model"] == "fx-cut":
            deltas = [i for i, e in enumerate(events) if b"output_text.delta" in e]
            events = events[: deltas[self.cut_deltas - 1] + 1]
        await resp.write(b"\n\n".join(e for e in events if e) + b"\n\n")
        await resp.write_eof()
        return resp


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    srv = ThreadServer(up.app).start()
    up.url = srv.url  # type: ignore[attr-defined]
    yield up
    srv.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres+redis"])
def gw(
    request: pytest.FixtureRequest,
    sim: ThreadServer,
    upstream: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("passthru")
    with contextlib.ExitStack() as stack:
        db, redis = f"sqlite:///{tmp / 'gw.db'}", ""
        if request.param == "postgres+redis":
            db, redis = stack.enter_context(throwaway_postgres()), require_redis()
        fx = f'vendors:\n  fx: {{dialect: openai, base_url: "{upstream.url}/v1", auth: none}}\n'  # type: ignore[attr-defined]
        text = gateway_yaml(sim.url, db, EXTRA, redis).replace("vendors:\n", fx, 1)
        text = text.replace("_timeout_s: 1.5", "_timeout_s: 30")
        svc = build_services(parse_config(text, "test-config"), dict(os.environ))
        srv = ThreadServer(lambda: app_for(svc)).start()
        secret, rec = svc.keys.create("fixture")
        svc.key_cache.put(secret, rec)
        try:
            yield Gateway(srv, svc, secret, sim.url)
        finally:
            srv.stop()


@pytest.fixture
def org(gw: Gateway) -> str:
    return gw.new_org(10**10)


@pytest.fixture
def client(gw: Gateway, org: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.new_key(org_id=org), max_retries=0)


def nanos(cost: Any) -> int:
    return int(Decimal(str(cost)) * 10**9)


def row_of(gw: Gateway, request_id: str) -> dict[str, Any]:
    (row,) = gw.wait_events(1, request_id=request_id)
    return row


def balance(gw: Gateway, org: str) -> int:
    gw.flush()
    return gw.services.ledger.balance(org)


def debit(gw: Gateway, org: str, before: int) -> int:
    return before - balance(gw, org)


FIXTURE_COST = (2000 - 1536) * INPUT + 1536 * CACHED + 300 * OUTPUT  # 6,044,000 nano-USD


def test_a_recorded_stream_is_relayed_and_billed_what_its_usage_says(
    gw: Gateway, upstream: Upstream, client: openai.OpenAI, org: str
) -> None:
    before = balance(gw, org)
    with client.responses.stream(model="fx", input="A line about the sea.") as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    sent = upstream.requests[-1]
    assert sent["model"] == "fx-model" and sent["store"] is False and sent["stream"] is True
    assert sent["input"] == "A line about the sea." and "stream_options" not in sent
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed" and kinds.count("response.output_text.delta") == 6
    assert "response.content_part.added" in kinds and "response.output_text.done" in kinds
    assert final.output_text == "Silver light on the tide."
    assert final.model == "fx" and final.id.startswith("resp_") and final.store is True
    assert not final.id.startswith("resp_67ccd2")  # the gateway's id, not the vendor's
    u = final.usage
    assert u is not None
    assert (u.input_tokens, u.input_tokens_details.cached_tokens) == (2000, 1536)
    assert (u.output_tokens, u.output_tokens_details.reasoning_tokens) == (300, 128)
    assert nanos(u.model_extra["cost"]) == FIXTURE_COST  # type: ignore[index]
    (row,) = gw.wait_events(1, org_id=org)
    assert row["endpoint"] == "responses" and row["status"] == "ok"
    assert (row["input_tokens"], row["cached_tokens"]) == (2000, 1536)
    assert (row["output_tokens"], row["reasoning_tokens"]) == (300, 128)
    assert row["cost_nanos"] == FIXTURE_COST
    assert debit(gw, org, before) == FIXTURE_COST
    # Stored like a translated answer: retrievable and chainable.
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_a_recorded_answer_is_returned_and_billed_what_its_usage_says(
    gw: Gateway, upstream: Upstream, client: openai.OpenAI, org: str
) -> None:
    before = balance(gw, org)
    raw = client.responses.with_raw_response.create(model="fx", input="Hello")
    r = raw.parse()
    assert upstream.requests[-1]["store"] is False
    assert r.output_text == "Silver light on the tide." and r.model == "fx"
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 128
    row = row_of(gw, raw.headers["x-request-id"])
    assert row["endpoint"] == "responses" and row["cost_nanos"] == FIXTURE_COST
    assert row["deployment"] == "fx/fx-model"
    assert nanos(raw.headers["x-tokenomy-cost"]) == FIXTURE_COST
    assert debit(gw, org, before) == FIXTURE_COST


def test_a_stream_cut_before_completed_bills_what_the_client_received(
    gw: Gateway, upstream: Upstream, org: str
) -> None:
    before = balance(gw, org)
    key = gw.new_key(org_id=org)
    prompt = "Write about lighthouses."
    with httpx.stream(
        "POST",
        gw.base_url + "/responses",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "fx-cut", "input": prompt, "stream": True},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert "response.completed" not in kinds
    assert kinds[-2:] == ["error", "response.failed"]
    received = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert received == "Silver light on the"
    counter = gw.services.counter
    out = counter.count_text("fx-cut", received)
    inp = counter.count_messages("fx-cut", [{"role": "user", "content": prompt}], None)
    row = row_of(gw, rid)
    assert row["status"] == "upstream_cut" and row["usage_source"] == "counted"
    assert (row["input_tokens"], row["output_tokens"]) == (inp, out) and out > 0
    assert row["cost_nanos"] == inp * INPUT + out * OUTPUT
    assert debit(gw, org, before) == row["cost_nanos"]


def test_a_chained_call_sends_the_whole_context_and_bills_it(
    gw: Gateway, upstream: Upstream, client: openai.OpenAI
) -> None:
    first = client.responses.create(model="fx", input="First question", instructions="Be brief.")
    second = client.responses.create(
        model="fx", input="Second question", previous_response_id=first.id
    )
    sent = upstream.requests[-1]
    assert "previous_response_id" not in sent and sent["store"] is False
    assert "instructions" not in sent  # as OpenAI's chains: instructions do not carry over
    assert sent["input"] == [
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "Silver light on the tide."},
        {"role": "user", "content": "Second question"},
    ]
    assert second.previous_response_id == first.id


def test_the_sdk_through_the_simulator_passthrough_and_translated(
    gw: Gateway, client: openai.OpenAI, org: str
) -> None:
    """The same questions to a deployment that speaks the Responses API (native) and to
    one served as chat (sim-small): the same answer text, each billed as recorded."""
    answers = {}
    for model in ("native", "sim-small"):
        before = balance(gw, org)
        raw = client.responses.with_raw_response.create(
            model=model, input="Tell me a story.", max_output_tokens=40
        )
        r = raw.parse()
        row = row_of(gw, raw.headers["x-request-id"])
        assert row["endpoint"] == "responses" and row["usage_source"] == "upstream"
        assert (row["input_tokens"], row["output_tokens"]) == (
            r.usage.input_tokens,  # type: ignore[union-attr]
            r.usage.output_tokens,  # type: ignore[union-attr]
        )
        assert row["cost_nanos"] > 0 and debit(gw, org, before) == row["cost_nanos"]
        answers[model] = r.output_text
        with client.responses.stream(model=model, input="Tell me a story.") as stream:
            deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
            final = stream.get_final_response()
        assert final.status == "completed" and deltas == final.output_text
        assert final.model == model and final.usage is not None
    assert answers["native"].startswith("[simulated]")
    assert gw.events(deployment="sim/sim-native")


def test_a_chained_call_through_the_simulator_bills_the_resent_context(
    gw: Gateway, client: openai.OpenAI, org: str
) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    first = client.responses.create(
        model="native", input="What is the weather in Oslo?", tools=[tool], tool_choice="required"
    )
    (call,) = [o for o in first.output if o.type == "function_call"]
    before = balance(gw, org)
    raw = client.responses.with_raw_response.create(
        model="native",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
        tools=[tool],
    )
    second = raw.parse()
    assert second.output_text.startswith("[simulated]")
    u1, u2 = first.usage, second.usage
    assert u1 is not None and u2 is not None
    # The whole conversation went again: more than the first prompt and its answer.
    assert u2.input_tokens > u1.input_tokens + u1.output_tokens
    row = row_of(gw, raw.headers["x-request-id"])
    assert row["input_tokens"] == u2.input_tokens
    assert debit(gw, org, before) == row["cost_nanos"] > 0
    third = client.responses.create(model="native", previous_response_id=second.id, input="Thanks")
    assert third.usage is not None and third.usage.input_tokens > u2.input_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_a_vendor_without_usage_is_counted_and_the_client_told(
    gw: Gateway, client: openai.OpenAI, org: str, stream: bool
) -> None:
    before = balance(gw, org)
    prompt = "Tell me about lighthouses."
    if stream:
        with client.responses.stream(model="silent-native", input=prompt) as s:
            deltas = "".join(e.delta for e in s if e.type == "response.output_text.delta")
            r = s.get_final_response()
        assert deltas == r.output_text
    else:
        r = client.responses.create(model="silent-native", input=prompt)
    counter = gw.services.counter
    out = counter.count_text("silent-native", r.output_text)
    inp = counter.count_messages("silent-native", [{"role": "user", "content": prompt}], None)
    assert r.usage is not None and (r.usage.input_tokens, r.usage.output_tokens) == (inp, out)
    (row,) = gw.wait_events(1, org_id=org)
    assert row["usage_source"] == "counted" and row["status"] == "ok"
    assert (row["input_tokens"], row["output_tokens"]) == (inp, out)
    assert nanos(r.usage.model_extra["cost"]) == row["cost_nanos"]  # type: ignore[index]
    assert debit(gw, org, before) == row["cost_nanos"] > 0


def test_a_stream_the_vendor_drops_midway_bills_what_the_client_received(
    gw: Gateway, org: str
) -> None:
    """The simulator closes the socket after 7 events (three text deltas in): the client
    gets those, then ``error`` and ``response.failed``; the call is billed for them."""
    sim_faults(gw.sim_url, "sim-native", ["disconnect:7"])
    before = balance(gw, org)
    key = gw.new_key(org_id=org)
    prompt = "Tell me about harbours."
    with httpx.stream(
        "POST",
        gw.base_url + "/responses",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "native", "input": prompt, "stream": True},
        timeout=60,
    ) as r:
        rid = r.headers["x-request-id"]
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[-2:] == ["error", "response.failed"] and "response.completed" not in kinds
    assert events[-1]["response"]["status"] == "failed"
    received = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert received.startswith("[simulated]")
    counter = gw.services.counter
    row = row_of(gw, rid)
    assert row["status"] == "upstream_cut" and row["usage_source"] == "counted"
    assert row["output_tokens"] == counter.count_text("sim-native", received)
    assert row["input_tokens"] == counter.count_messages(
        "sim-native", [{"role": "user", "content": prompt}], None
    )
    assert debit(gw, org, before) == row["cost_nanos"] > 0


def test_the_simulator_refuses_malformed_responses_input(sim: ThreadServer) -> None:
    for body, param in (
        ({"model": "sim-native"}, "input"),
        ({"model": "sim-native", "input": [{"type": "web_search_call"}]}, "input"),
        ({"input": "hi"}, "model"),
    ):
        r = httpx.post(sim.url + "/v1/responses", json=body)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == param


@pytest.mark.parametrize("chained", [True, False])
@pytest.mark.parametrize("streamed", [False, True])
def test_an_agent_runs_through_passthrough(gw: Gateway, chained: bool, streamed: bool) -> None:
    """The OpenAI Agents SDK: a tool call, then the answer, on a deployment that speaks the
    Responses API, chained by previous_response_id or with the input re-sent."""
    from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, function_tool

    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return f"Sunny in {city}, 21C"

    org = gw.new_org(10**10)
    key = gw.new_key(org_id=org)

    async def run() -> str:
        client = openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
        agent = Agent(
            name="weather",
            instructions="Answer with the help of your tools.",
            tools=[get_weather],
            model=OpenAIResponsesModel(model="native", openai_client=client),
        )
        cfg = RunConfig(tracing_disabled=True)
        prompt = "What is the weather in Paris?"
        if streamed:
            result = Runner.run_streamed(
                agent, prompt, run_config=cfg, auto_previous_response_id=chained
            )
            async for _ in result.stream_events():
                pass
        else:
            result = await Runner.run(  # type: ignore[assignment]
                agent, prompt, run_config=cfg, auto_previous_response_id=chained
            )
        await client.close()
        return str(result.final_output)

    final = asyncio.run(run())
    assert cities == ["example"] and final.startswith("[simulated]")
    rows = sorted(gw.wait_events(2, org_id=org), key=lambda r: r["ts_ms"])
    assert [r["deployment"] for r in rows] == ["sim/sim-native"] * 2
    assert all(r["status"] == "ok" and r["usage_source"] == "upstream" for r in rows)
    assert rows[1]["input_tokens"] > rows[0]["input_tokens"]
    assert balance(gw, org) == 10**10 - sum(r["cost_nanos"] for r in rows)


def test_a_chain_kept_as_chat_messages_goes_back_as_the_same_items() -> None:
    from tokenomy.providers.responses_passthrough import messages_to_items, native_request
    from tokenomy.providers.translate_responses import input_items, items_to_messages

    items = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
        {"role": "assistant", "content": "It is sunny."},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "And this?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
            ],
        },
    ]
    back = messages_to_items(items_to_messages(input_items(items)))
    assert back == [
        items[0],
        items[1],
        items[2],
        items[3],
        {"role": "user", "content": items[4]["content"]},
    ]
    body = {
        "model": "m",
        "input": "Next",
        "previous_response_id": "resp_x",
        "provider": {"sort": "price"},
        "service_tier": "batch",
        "store": True,
    }
    sent = native_request(body, [{"role": "user", "content": "Hi"}])
    assert sent == {
        "model": "m",
        "input": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Next"}],
        "store": False,
    }


def test_responses_usage_is_read_with_its_cached_and_reasoning_parts() -> None:
    from tokenomy.gateway.responses_native import output_text, usage_from_responses

    u = usage_from_responses(json.loads(ANSWER)["usage"])
    assert (u.input_tokens, u.cached_tokens, u.output_tokens, u.reasoning_tokens) == (
        2000,
        1536,
        300,
        128,
    )
    odd = usage_from_responses({"input_tokens": None, "output_tokens": "x"})
    assert (odd.input_tokens, odd.output_tokens) == (0, 0)
    assert output_text(json.loads(ANSWER)["output"]) == "Silver light on the tide."
