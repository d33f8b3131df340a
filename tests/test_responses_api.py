"""OpenAI's Responses API end to end: the official SDK against a running gateway and the
simulator (OpenAI dialect, and an Anthropic-dialect deployment), on SQLite and on
PostgreSQL + Redis; billed and recorded exactly as the chat call it amounts to."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, sim_faults

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
CHAT_WEATHER_TOOL = {
    "type": "function",
    "function": {k: v for k, v in WEATHER_TOOL.items() if k != "type"},
}


def nanos(cost: Any) -> int:
    return int(Decimal(str(cost)) * 10**9)


@pytest.fixture
def org(gateway: Gateway) -> str:
    return gateway.new_org(10**10)


@pytest.fixture
def client(gateway: Gateway, org: str) -> openai.OpenAI:
    key = gateway.new_key(org_id=org)
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def row_of(gateway: Gateway, request_id: str) -> dict[str, Any]:
    (row,) = gateway.wait_events(1, request_id=request_id)
    return row


@pytest.mark.parametrize("model", ["sim-small", "sim-claude"])
def test_plain_response_is_billed_and_recorded_as_the_same_chat_call(
    gateway: Gateway, client: openai.OpenAI, org: str, model: str
) -> None:
    before = gateway.services.ledger.balance(org)
    raw = client.responses.with_raw_response.create(
        model=model, input="Hello there", instructions="Be brief.", max_output_tokens=30
    )
    r = raw.parse()
    assert r.object == "response" and r.status in ("completed", "incomplete")
    assert r.id.startswith("resp_") and r.model == model
    assert r.output_text.startswith("[simulated]")
    assert r.instructions == "Be brief."
    u = r.usage
    assert u is not None and u.input_tokens > 0 and 0 < u.output_tokens <= 30
    assert u.total_tokens == u.input_tokens + u.output_tokens
    assert u.input_tokens_details.cached_tokens == 0
    assert u.output_tokens_details.reasoning_tokens == 0
    row = row_of(gateway, raw.headers["x-request-id"])
    assert row["endpoint"] == "responses" and row["status"] == "ok"
    assert (row["input_tokens"], row["output_tokens"]) == (u.input_tokens, u.output_tokens)
    cost = row["cost_nanos"]
    assert cost > 0 and nanos(raw.headers["x-tokenomy-cost"]) == cost
    assert nanos(u.model_extra["cost"]) == cost  # type: ignore[index]
    gateway.flush()
    assert gateway.services.ledger.balance(org) == before - cost

    chat = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"},
        ],
        max_tokens=30,
    )
    c = chat.parse()
    assert c.choices[0].message.content == r.output_text
    chat_row = row_of(gateway, chat.headers["x-request-id"])
    assert chat_row["endpoint"] == "chat"
    for f in ("input_tokens", "output_tokens", "cost_nanos", "held_nanos"):
        assert row[f] == chat_row[f], f


@pytest.mark.parametrize("model", ["sim-small", "sim-claude"])
def test_function_call_then_output_chained_by_previous_response_id(
    gateway: Gateway, client: openai.OpenAI, model: str
) -> None:
    first = client.responses.create(
        model=model, input="What is the weather in Paris?", tools=[WEATHER_TOOL]
    )
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "example"}
    raw = client.responses.with_raw_response.create(
        model=model,
        previous_response_id=first.id,
        input=[
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21C"}
        ],
        tools=[WEATHER_TOOL],
    )
    second = raw.parse()
    assert second.previous_response_id == first.id
    assert second.output_text.startswith("[simulated]")
    row = row_of(gateway, raw.headers["x-request-id"])

    # The chained call re-sent the whole conversation upstream, and is billed for it.
    lead = [o for o in first.output if o.type == "message"]
    assistant: dict[str, Any] = {
        "role": "assistant",
        "content": lead[0].content[0].text if lead else None,  # type: ignore[union-attr]
        "tool_calls": [
            {
                "id": calls[0].call_id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": calls[0].arguments},
            }
        ],
    }
    chat = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            assistant,  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": calls[0].call_id, "content": "Sunny, 21C"},
        ],
        tools=[CHAT_WEATHER_TOOL],  # type: ignore[list-item]
    )
    chat_row = row_of(gateway, chat.headers["x-request-id"])
    assert chat.parse().choices[0].message.content == second.output_text
    for f in ("input_tokens", "output_tokens", "cost_nanos"):
        assert row[f] == chat_row[f], f
    assert row["input_tokens"] > first.usage.input_tokens  # type: ignore[union-attr]


def test_json_schema_text_format_gives_parseable_json(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model="sim-small",
        input="Make up a person.",
        text={
            "format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}
        },
    )
    assert json.loads(r.output_text) == {"name": "example", "age": 1}
    assert r.text.format.type == "json_schema"  # type: ignore[union-attr]


EXPECTED_TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def _collapse(types: list[str]) -> list[str]:
    """Event types with runs of the same delta event collapsed to one."""
    out: list[str] = []
    for t in types:
        if not (out and out[-1] == t and t.endswith(".delta")):
            out.append(t)
    return out


@pytest.mark.parametrize("model", ["sim-small", "sim-claude"])
def test_stream_helper_events_in_order_with_usage_and_cost(
    gateway: Gateway, client: openai.OpenAI, org: str, model: str
) -> None:
    with client.responses.stream(model=model, input="Tell me a story") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert _collapse([e.type for e in events]) == EXPECTED_TEXT_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text.startswith("[simulated]") and final.output_text == text
    u = final.usage
    assert u is not None and u.output_tokens > 0
    (row,) = gateway.wait_events(1, org_id=org)  # the test's own organisation
    assert row["input_tokens"] == u.input_tokens and row["status"] == "ok"
    assert nanos(u.model_extra["cost"]) == row["cost_nanos"] > 0  # type: ignore[index]
    # Stored: a stream's answer is retrievable as a whole.
    got = client.responses.retrieve(final.id)
    assert got.output_text == text and got.usage.output_tokens == u.output_tokens  # type: ignore[union-attr]


@pytest.mark.parametrize("model", ["sim-small", "sim-claude"])
def test_streamed_function_call_events(client: openai.OpenAI, model: str) -> None:
    stream = client.responses.create(
        model=model,
        input="What is the weather in Oslo?",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        stream=True,
    )
    events = list(stream)
    types = _collapse([e.type for e in events])
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    i = types.index("response.function_call_arguments.done")
    assert types[i - 2 : i + 2] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(done.arguments) == json.loads(deltas) == {"city": "example"}
    final = events[-1].response  # type: ignore[union-attr]
    (call,) = [o for o in final.output if o.type == "function_call"]
    assert call.name == "get_weather" and call.arguments == done.arguments
    assert final.usage is not None and final.usage.output_tokens > 0


def test_retrieve_input_items_and_delete(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model="sim-small",
        input=[
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
        ],
    )
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    items = client.responses.input_items.list(r.id)
    assert [i.role for i in items.data] == ["user", "developer"]  # type: ignore[union-attr]
    asc = client.responses.input_items.list(r.id, order="asc", limit=1)
    assert [i.role for i in asc.data] == ["developer"] and asc.has_more  # type: ignore[union-attr]
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_store_false_is_not_kept(client: openai.OpenAI) -> None:
    r = client.responses.create(model="sim-small", input="Hi", store=False)
    assert r.store is False and r.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_unknown_or_foreign_previous_response_id_is_404(
    gateway: Gateway, client: openai.OpenAI
) -> None:
    mine = client.responses.create(model="sim-small", input="Hi")
    before = len(gateway.events())
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="sim-small", input="Hi", previous_response_id="resp_nope")
    assert e.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert "resp_nope" in e.value.message
    other = openai.OpenAI(
        base_url=gateway.base_url,
        api_key=gateway.new_key(org_id=gateway.new_org(10**9)),
        max_retries=0,
    )
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="sim-small", input="Hi", previous_response_id=mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    assert client.responses.retrieve(mine.id).id == mine.id  # still there for its owner
    assert len(gateway.events()) == before  # nothing reached a vendor, nothing billed


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": 5}, "input"),
        ({"input": []}, "input"),
        ({"input": ["hi"]}, "input[0]"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
        ),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "background": True}, "background"),
        ({}, "input"),
    ],
)
def test_malformed_input_is_400_naming_the_field(
    client: openai.OpenAI, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.post("/responses", body={"model": "sim-small", **body}, cast_to=dict)
    assert e.value.status_code == 400
    assert e.value.body["param"] == param  # type: ignore[index]


def test_stream_cut_upstream_ends_in_response_failed_and_bills_what_was_produced(
    gateway: Gateway, client: openai.OpenAI
) -> None:
    sim_faults(gateway.sim_url, "single-a", ["disconnect:3"])
    stream = client.responses.create(model="single", input="Tell me a story", stream=True)
    events = list(stream)
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-2:] == ["error", "response.failed"]
    assert "response.completed" not in types
    got = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None
    (row,) = gateway.wait_events(1, request_id=stream.response.headers["x-request-id"])
    assert row["status"] == "upstream_cut" and row["usage_source"] == "counted"
    assert row["output_tokens"] == gateway.services.counter.count_text("single-a", got) > 0
    assert row["cost_nanos"] > 0


def test_output_cap_makes_an_incomplete_response(client: openai.OpenAI) -> None:
    r = client.responses.create(model="sim-small", input="Tell me a story", max_output_tokens=5)
    assert r.status == "incomplete"
    assert r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 5
    events = list(
        client.responses.create(
            model="sim-small", input="Tell me a story", max_output_tokens=5, stream=True
        )
    )
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.usage is not None and last.response.usage.output_tokens == 5


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_tokens_are_reported_and_billed(
    gateway: Gateway, client: openai.OpenAI, org: str, stream: bool
) -> None:
    kw: dict[str, Any] = {"model": "ds-reasoner", "input": "Think, then say hi."}
    if stream:
        with client.responses.stream(**kw) as s:
            r = s.get_final_response()
    else:
        r = client.responses.create(**kw)
    u = r.usage
    assert u is not None and u.output_tokens_details.reasoning_tokens > 0
    (row,) = gateway.wait_events(1, org_id=org)  # the test's own organisation
    assert row["reasoning_tokens"] == u.output_tokens_details.reasoning_tokens
    assert nanos(u.model_extra["cost"]) == row["cost_nanos"] > 0  # type: ignore[index]
