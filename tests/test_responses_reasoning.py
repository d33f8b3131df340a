"""A reasoning model's thinking in the Responses API: a ``reasoning`` item (raw
``reasoning_text``) before the answer, ``response.reasoning_text.*`` events in a stream,
and ``output_tokens_details.reasoning_tokens`` as the vendor's usage says. The shapes are
checked against the official SDK's own types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.conftest import Gateway
from tokenomy.providers.translate_responses import (
    chat_answer_to_output,
    finish,
    response_object,
    responses_usage,
)
from tokenomy.providers.translate_responses_stream import ChatToResponsesStream

FIXTURES = Path(__file__).parent / "fixtures" / "translate"
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def test_a_whole_answer_puts_its_reasoning_first() -> None:
    answer = json.loads((FIXTURES / "deepseek_response_reasoning.json").read_text())
    resp = response_object({"model": "deepseek-reasoner"}, "resp_1", "deepseek-reasoner")
    resp["output"], reason = chat_answer_to_output(answer)
    finish(resp, reason)
    resp["usage"] = responses_usage(answer["usage"])
    r = Response.model_validate(resp)
    assert [o.type for o in r.output] == ["reasoning", "message"]
    thought = r.output[0]
    assert thought.type == "reasoning" and thought.summary == []
    assert thought.content is not None and thought.content[0].text == "Compare the tenths: 8 > 1."
    assert r.output_text == "9.8 is greater"
    assert r.status == "incomplete"  # finish_reason "length"
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 180
    assert r.usage.output_tokens == 200


def test_a_reasoning_only_answer_still_has_a_message() -> None:
    answer = {"choices": [{"message": {"reasoning_content": "hm"}, "finish_reason": "length"}]}
    output, _ = chat_answer_to_output(answer)
    assert [o["type"] for o in output] == ["reasoning", "message"]


def stream_events(name: str) -> list[dict[str, Any]]:
    s = ChatToResponsesStream(response_object({}, "resp_2", "deepseek-reasoner"))
    raw = s.start()
    for line in (FIXTURES / name).read_text().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            raw += s.feed(json.loads(line[6:]))
    raw += s.end(responses_usage(s.chat_usage))
    events = []
    for frame in raw:
        head, data = frame.decode().strip().split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        EVENTS.validate_python(event)  # each one as the SDK's types define it
        events.append(event)
    return events


def test_a_stream_sends_reasoning_text_events_before_the_answer() -> None:
    events = stream_events("deepseek_stream_reasoning.sse")
    kinds = [e["type"] for e in events]
    assert kinds[:7] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.output_item.done",
    ]
    assert kinds[7] == "response.output_item.added" and kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    deltas = [e["delta"] for e in events if e["type"] == "response.reasoning_text.delta"]
    done = next(e for e in events if e["type"] == "response.reasoning_text.done")
    assert "".join(deltas) == done["text"] == "Compare tenths."
    assert events[2]["item"]["type"] == "reasoning" and events[2]["output_index"] == 0
    assert events[7]["item"]["type"] == "message" and events[7]["output_index"] == 1
    final = Response.model_validate(events[-1]["response"])
    assert [o.type for o in final.output] == ["reasoning", "message"]
    assert final.output_text == "9.8 is greater."
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 12


@pytest.mark.parametrize("stream", [False, True])
def test_the_sdk_sees_the_reasoning_item(gateway: Gateway, stream: bool) -> None:
    org = gateway.new_org(10**10)
    c = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.new_key(org_id=org), max_retries=0)
    kw: dict[str, Any] = {"model": "ds-reasoner", "input": "Think, then say hi."}
    if stream:
        with c.responses.stream(**kw) as s:
            kinds = [e.type for e in s]
            r = s.get_final_response()
        assert "response.reasoning_text.delta" in kinds
        assert kinds.index("response.reasoning_text.done") < kinds.index(
            "response.output_text.delta"
        )
    else:
        r = c.responses.create(**kw)
    assert [o.type for o in r.output] == ["reasoning", "message"]
    thought = r.output[0]
    assert thought.type == "reasoning" and thought.content and thought.content[0].text
    assert r.output_text
    (row,) = gateway.wait_events(1, org_id=org)
    assert r.usage is not None
    assert row["reasoning_tokens"] == r.usage.output_tokens_details.reasoning_tokens > 0
    # A chained call re-sends the answer, not the reasoning (no vendor takes it back).
    c.responses.create(model="ds-reasoner", input="Again.", previous_response_id=r.id)
