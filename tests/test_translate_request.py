"""Request translation, OpenAI chat completions <-> Anthropic messages, on documented shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenomy.core.errors import InvalidRequest
from tokenomy.providers.translate_request import (
    JSON_OBJECT_INSTRUCTION,
    anthropic_request_to_openai,
    openai_request_to_anthropic,
)

FIXTURES = Path(__file__).parent / "fixtures" / "translate"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


# --- OpenAI -> Anthropic -------------------------------------------------------------------


def test_openai_chat_with_system_developer_and_images() -> None:
    out = openai_request_to_anthropic(load("openai_request_chat.json"))
    assert out == {
        "model": "gpt-4o",
        "system": [
            {"type": "text", "text": "You are a terse assistant."},
            {"type": "text", "text": "Answer in English."},
        ],
        "messages": [
            {"role": "user", "content": "What is in this picture?"},
            {"role": "assistant", "content": "Please attach it."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Here they are."},
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "iVBORw0KGgo=",
                        },
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/cat.jpg"},
                    },
                ],
            },
        ],
        "max_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop_sequences": ["\n\nHuman:"],
        "metadata": {"user_id": "user-1234"},
        "stream": False,
    }


def test_openai_parallel_tool_calls_and_merged_tool_results() -> None:
    out = openai_request_to_anthropic(load("openai_request_tools.json"))
    assert out["system"] == "Use the tools."
    assert out["max_tokens"] == 512
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather for a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_paris",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_tokyo",
                    "name": "get_weather",
                    "input": {"city": "Tokyo"},
                },
            ],
        },
        # Both tool messages and the following user text form one user turn, results first.
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_paris", "content": "18C, cloudy"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_tokyo",
                    "content": [{"type": "text", "text": "24C, sunny"}],
                },
                {"type": "text", "text": "Which is warmer?"},
            ],
        },
    ]


def test_default_max_tokens_and_max_completion_tokens_precedence() -> None:
    body = {"model": "m", "messages": [user("hi")]}
    assert openai_request_to_anthropic(body)["max_tokens"] == 4096
    assert openai_request_to_anthropic(body, default_max_tokens=1000)["max_tokens"] == 1000
    both = {**body, "max_tokens": 50, "max_completion_tokens": 70}
    assert openai_request_to_anthropic(both)["max_tokens"] == 70


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
    ],
)
def test_tool_choice_to_anthropic(choice: Any, expected: dict[str, Any]) -> None:
    body = {
        "messages": [user("hi")],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": choice,
    }
    out = openai_request_to_anthropic(body)
    assert out["tool_choice"] == expected
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]


def test_parallel_tool_calls_false_without_tool_choice() -> None:
    body = {
        "messages": [user("hi")],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "parallel_tool_calls": False,
    }
    out = openai_request_to_anthropic(body)
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_tool_choice_dropped_without_tools() -> None:
    out = openai_request_to_anthropic({"messages": [user("hi")], "tool_choice": "none"})
    assert "tool_choice" not in out and "tools" not in out


def test_consecutive_same_role_messages_merge() -> None:
    body = {"messages": [user("a"), user([{"type": "text", "text": "b"}]), user("")]}
    out = openai_request_to_anthropic(body)
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


def test_tool_ids_sanitised_consistently_and_bad_arguments_kept_raw() -> None:
    body = {
        "messages": [
            user("go"),
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "functions.get_weather:0",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{not json"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "ok"},
        ]
    }
    msgs = openai_request_to_anthropic(body)["messages"]
    assert msgs[1]["content"] == [
        {
            "type": "tool_use",
            "id": "functions_get_weather_0",
            "name": "get_weather",
            "input": {"_raw": "{not json"},
        }
    ]
    assert msgs[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "functions_get_weather_0", "content": "ok"}
    ]


def test_temperature_is_clamped_to_anthropic_range() -> None:
    out = openai_request_to_anthropic({"messages": [user("hi")], "temperature": 1.7})
    assert out["temperature"] == 1


def test_stop_list_and_user() -> None:
    body = {"messages": [user("hi")], "stop": ["END", "", "STOP"], "user": "u1"}
    out = openai_request_to_anthropic(body)
    assert out["stop_sequences"] == ["END", "STOP"]
    assert out["metadata"] == {"user_id": "u1"}


def test_json_object_mode_becomes_system_instruction() -> None:
    body = {
        "messages": [{"role": "system", "content": "Be brief."}, user("list 3 colors")],
        "response_format": {"type": "json_object"},
    }
    assert openai_request_to_anthropic(body)["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": JSON_OBJECT_INSTRUCTION},
    ]


def test_json_schema_mode_puts_schema_in_system() -> None:
    schema = {"type": "object", "properties": {"colors": {"type": "array"}}}
    body = {
        "messages": [user("list 3 colors")],
        "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    }
    system = openai_request_to_anthropic(body)["system"]
    assert system == (
        f"{JSON_OBJECT_INSTRUCTION} It must conform to this JSON Schema (named 'c'):\n"
        '{"type": "object", "properties": {"colors": {"type": "array"}}}'
    )


def test_pdf_file_part_becomes_document() -> None:
    part = {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"},
    }
    out = openai_request_to_anthropic({"messages": [user([part])]})
    assert out["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
            "title": "a.pdf",
        }
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [user("hi")], "n": 2}, "n"),
        ({"messages": [user("hi")], "logprobs": True}, "logprobs"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [user("hi")], "max_tokens": 0}, "max_tokens"),
        ({"messages": [user("hi")], "reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"messages": [user("hi")], "tool_choice": "sometimes", "tools": [{}]}, "tools[0]"),
        (
            {
                "messages": [
                    user(
                        [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/svg+xml;base64,AA"},
                            }
                        ]
                    )
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {"messages": [user([{"type": "file", "file": {"file_id": "file-abc"}}])]},
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ],
)
def test_untranslatable_openai_requests_raise(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        openai_request_to_anthropic(body)
    assert info.value.param == param
    assert info.value.status == 400


def test_reasoning_effort_becomes_thinking_budget_below_max_tokens() -> None:
    body = {"messages": [user("think")], "reasoning_effort": "high", "max_tokens": 5000}
    assert openai_request_to_anthropic(body)["thinking"] == {
        "type": "enabled",
        "budget_tokens": 4999,
    }
    body = {"messages": [user("think")], "reasoning_effort": "medium", "max_tokens": 20000}
    assert openai_request_to_anthropic(body)["thinking"] == {
        "type": "enabled",
        "budget_tokens": 8192,
    }


@pytest.mark.parametrize(
    "extra",
    [
        {"temperature": 0.3},
        {"max_tokens": 1024},
        {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
        {"reasoning_effort": "none"},
    ],
)
def test_reasoning_effort_skipped_where_anthropic_forbids_thinking(extra: dict[str, Any]) -> None:
    body = {"messages": [user("think")], "reasoning_effort": "low", **extra}
    assert "thinking" not in openai_request_to_anthropic(body)


def _tool_turn(assistant_extra: dict[str, Any]) -> dict[str, Any]:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    return {
        "reasoning_effort": "low",
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [
            user("go"),
            {"role": "assistant", "content": None, "tool_calls": [call], **assistant_extra},
            {"role": "tool", "tool_call_id": "call_1", "content": "done"},
        ],
    }


def test_unsigned_reasoning_in_tool_loop_disables_thinking() -> None:
    out = openai_request_to_anthropic(_tool_turn({"reasoning_content": "hmm"}))
    assert "thinking" not in out
    assert out["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}
    ]


def test_signed_thinking_blocks_are_replayed_and_keep_thinking_on() -> None:
    signed = {"type": "thinking", "thinking": "hmm", "signature": "sig=="}
    out = openai_request_to_anthropic(_tool_turn({"thinking_blocks": [signed]}))
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert out["messages"][1]["content"][0] == signed


# --- Anthropic -> OpenAI -------------------------------------------------------------------


def test_anthropic_chat_with_system_blocks_images_and_stream() -> None:
    out = anthropic_request_to_openai(load("anthropic_request_chat.json"))
    assert out == {
        "model": "claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": "You are a terse assistant.\n\nAnswer in English."},
            {"role": "user", "content": "What is in this picture?"},
            {"role": "assistant", "content": "Please attach it."},
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    {"type": "text", "text": "Here they are."},
                ],
            },
        ],
        "max_tokens": 1024,
        "temperature": 0.5,
        "top_k": 40,
        "stop": ["\n\nHuman:", "END"],
        "user": "user-1234",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_anthropic_tool_loop_with_thinking() -> None:
    out = anthropic_request_to_openai(load("anthropic_request_tools.json"))
    assert out["reasoning_effort"] == "medium"
    assert out["tool_choice"] == "auto"
    assert out["parallel_tool_calls"] is False
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {
            "role": "assistant",
            "content": "Checking both.",
            "reasoning_content": "I need both cities.",
            "tool_calls": [
                {
                    "id": "toolu_01A",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "toolu_01B",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Tokyo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_01A", "content": "18C, cloudy"},
        {"role": "tool", "tool_call_id": "toolu_01B", "content": "24C, sunny"},
        # OpenAI tool messages are text only: the tool's image follows in a user message.
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                {"type": "text", "text": "Which is warmer?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "any"}, "required"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_tool_choice_to_openai(choice: dict[str, Any], expected: Any) -> None:
    body = {
        "messages": [user("hi")],
        "tools": [{"name": "f", "input_schema": {}}],
        "tool_choice": choice,
    }
    out = anthropic_request_to_openai(body)
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, "low"),
        ({"type": "enabled", "budget_tokens": 8192}, "medium"),
        ({"type": "enabled", "budget_tokens": 32000}, "high"),
        ({"type": "disabled"}, None),
        ({"type": "adaptive"}, None),
    ],
)
def test_thinking_to_reasoning_effort(thinking: dict[str, Any], effort: str | None) -> None:
    out = anthropic_request_to_openai({"messages": [user("hi")], "thinking": thinking})
    assert out.get("reasoning_effort") == effort


def test_anthropic_non_streaming_has_no_stream_options() -> None:
    out = anthropic_request_to_openai({"messages": [user("hi")], "stream": False})
    assert out == {"messages": [{"role": "user", "content": "hi"}], "stream": False}


def test_anthropic_documents_become_file_and_text_parts() -> None:
    pdf = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
    }
    txt = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
    }
    out = anthropic_request_to_openai({"messages": [user([pdf, txt])]})
    assert out["messages"][0]["content"] == [
        {
            "type": "file",
            "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "document.pdf"},
        },
        {"type": "text", "text": "notes"},
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {
                "messages": [user("hi")],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "tools[0]",
        ),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [user([{"type": "search_result", "source": "s"}])]},
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "server_tool_use", "id": "s"}]}
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {"messages": [user("hi")], "tools": [{"name": "f"}], "tool_choice": {"type": "x"}},
            "tool_choice",
        ),
    ],
)
def test_untranslatable_anthropic_requests_raise(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        anthropic_request_to_openai(body)
    assert info.value.param == param


# --- Round trips ---------------------------------------------------------------------------


def test_openai_tools_request_round_trip() -> None:
    original = load("openai_request_tools.json")
    back = anthropic_request_to_openai(openai_request_to_anthropic(original))
    assert back["messages"][:3] == original["messages"][:3]
    assert back["messages"][3:] == [
        {"role": "tool", "tool_call_id": "call_paris", "content": "18C, cloudy"},
        {"role": "tool", "tool_call_id": "call_tokyo", "content": "24C, sunny"},
        {"role": "user", "content": "Which is warmer?"},
    ]
    assert back["tools"] == original["tools"]
    assert back["tool_choice"] == "required"
    assert back["parallel_tool_calls"] is False
    assert back["max_tokens"] == 512


def test_anthropic_chat_request_round_trip_keeps_everything_but_cache_control() -> None:
    original = load("anthropic_request_chat.json")
    back = openai_request_to_anthropic(anthropic_request_to_openai(original))
    expected = {**original, "system": "You are a terse assistant.\n\nAnswer in English."}
    expected["messages"] = [
        *original["messages"][:1],
        {"role": "assistant", "content": "Please attach it."},
    ]
    expected["messages"].append(original["messages"][2])
    assert back == expected


turn_text = st.text(min_size=1, max_size=40)


@given(system=st.one_of(st.none(), turn_text), turns=st.lists(turn_text, min_size=1, max_size=8))
def test_plain_conversations_round_trip_both_ways(system: str | None, turns: list[str]) -> None:
    roles = ["user", "assistant"]
    messages = [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
    anthropic_body: dict[str, Any] = {"model": "m", "max_tokens": 64, "messages": messages}
    if system is not None:
        anthropic_body["system"] = system
    openai_body = anthropic_request_to_openai(anthropic_body)
    assert openai_request_to_anthropic(openai_body) == anthropic_body
    assert anthropic_request_to_openai(openai_request_to_anthropic(openai_body)) == openai_body
