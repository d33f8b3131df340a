"""The Responses API as chat completions, without a server: requests, answers, streams."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenomy.core.errors import InvalidRequest
from tokenomy.core.ids import stamped_id as new_id
from tokenomy.core.ids import stamped_id_age_s as id_age_s
from tokenomy.providers.translate_responses import (
    chat_answer_to_output,
    chat_request,
    input_items,
    items_to_messages,
    response_object,
)
from tokenomy.providers.translate_responses_stream import ChatToResponsesStream


def test_items_become_chat_turns_with_tool_calls_joined_to_the_assistant_turn() -> None:
    items = input_items(
        [
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {"type": "message", "role": "assistant", "content": "Checking."},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": '{"c":"P"}'},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": '{"c":"O"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "sun"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "rain"}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "And this?"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
                ],
            },
        ]
    )
    assert all(isinstance(i.get("id"), str) for i in items)
    msgs = items_to_messages(items)
    assert msgs[0] == {"role": "user", "content": "Weather in Paris and Oslo?"}
    assert msgs[1]["role"] == "assistant" and msgs[1]["content"] == "Checking."
    assert [c["id"] for c in msgs[1]["tool_calls"]] == ["c1", "c2"]
    assert msgs[2] == {"role": "tool", "tool_call_id": "c1", "content": "sun"}
    assert msgs[3] == {"role": "tool", "tool_call_id": "c2", "content": "rain"}
    assert msgs[4]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "https://x/y.png", "detail": "low"},
    }
    assert len(msgs) == 5


def test_request_fields_map_to_their_chat_equivalents() -> None:
    body: dict[str, Any] = {
        "model": "m",
        "instructions": "Be brief.",
        "input": "hi",
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "p", "schema": {"type": "object"}}},
        "reasoning": {"effort": "low"},
        "max_output_tokens": 99,
        "temperature": 0.5,
        "stream": True,
        "store": False,
        "metadata": {"a": "b"},
    }
    context = [{"role": "user", "content": "earlier"}]
    chat = chat_request(body, context, input_items(body["input"]))
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "earlier"},
        {"role": "user", "content": "hi"},
    ]
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["response_format"]["json_schema"]["name"] == "p"
    assert chat["reasoning_effort"] == "low" and chat["max_completion_tokens"] == 99
    assert chat["stream_options"] == {"include_usage": True} and chat["temperature"] == 0.5
    assert "store" not in chat and "metadata" not in chat


def test_unsupported_parts_are_refused_by_name() -> None:
    with pytest.raises(InvalidRequest) as e:
        input_items([{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}])
    assert e.value.param == "input[0].content[0].type"
    with pytest.raises(InvalidRequest) as e:
        input_items([{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}])
    assert e.value.param == "input[0].content[0].image_url"


def test_ids_carry_their_age() -> None:
    rid = new_id("resp_")
    age = id_age_s(rid, "resp_")
    assert age is not None and 0 <= age < 5
    assert id_age_s("resp_nope", "resp_") is None and id_age_s(rid, "msg_") is None


def test_whole_answer_with_text_and_tool_calls() -> None:
    output, reason = chat_answer_to_output(
        {
            "choices": [
                {
                    "finish_reason": "tool_calls",
                    "message": {
                        "content": "Calling.",
                        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}],
                    },
                }
            ]
        }
    )
    assert reason == "tool_calls"
    assert [o["type"] for o in output] == ["message", "function_call"]
    assert output[1]["call_id"] == "c1" and output[1]["status"] == "completed"


def _events(frames: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for f in frames:
        head, data = f.split(b"\ndata: ")
        ev = orjson.loads(data)
        assert head == b"event: " + ev["type"].encode()
        out.append(ev)
    return out


def test_stream_text_then_tool_call_closes_each_item_before_the_next() -> None:
    s = ChatToResponsesStream(response_object({"model": "m"}, new_id("resp_"), "m"))
    frames = s.start()
    frames += s.feed({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    frames += s.feed({"choices": [{"index": 0, "delta": {"content": "Calling."}}]})
    tc = {"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a"'}}
    frames += s.feed({"choices": [{"index": 0, "delta": {"tool_calls": [tc]}}]})
    more = {"index": 0, "function": {"arguments": ":1}"}}
    frames += s.feed(
        {"choices": [{"index": 0, "delta": {"tool_calls": [more]}, "finish_reason": "tool_calls"}]}
    )
    frames += s.feed({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    usage = {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    events = _events(frames + s.end(usage))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.get("output_index") for e in events[2:13]] == [0] * 6 + [1] * 5
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["usage"] == usage
    assert done["output"][1]["arguments"] == '{"a":1}' and done["output"][1]["call_id"] == "c1"
    assert s.chat_usage == {"prompt_tokens": 3, "completion_tokens": 4}
