"""Non-streaming response translation, checked against exact dicts and the SDKs' own models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic.types
import openai.types.chat
import pytest

from tokenomy.providers.translate_response import (
    anthropic_response_to_openai,
    anthropic_stop_reason,
    openai_finish_reason,
    openai_response_to_anthropic,
)

FIXTURES = Path(__file__).parent / "fixtures" / "translate"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


@pytest.mark.parametrize(
    "name",
    [
        "openai_response_text.json",
        "openai_response_tool_calls.json",
        "deepseek_response_reasoning.json",
    ],
)
def test_openai_fixtures_are_valid_completions_and_translate_to_valid_messages(name: str) -> None:
    openai.types.chat.ChatCompletion.model_validate(load(name))
    out = openai_response_to_anthropic(load(name), model="claude-via-gateway")
    anthropic.types.Message.model_validate(out)


@pytest.mark.parametrize(
    "name",
    [
        "anthropic_response_text.json",
        "anthropic_response_tool_use.json",
        "anthropic_response_thinking.json",
    ],
)
def test_anthropic_fixtures_are_valid_messages_and_translate_to_valid_completions(
    name: str,
) -> None:
    anthropic.types.Message.model_validate(load(name))
    out = anthropic_response_to_openai(load(name), model="gpt-via-gateway", created=1)
    openai.types.chat.ChatCompletion.model_validate(out)


def test_openai_text_with_cached_tokens() -> None:
    out = openai_response_to_anthropic(load("openai_response_text.json"), model="gpt-4o")
    assert out == {
        "id": "msg_B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "type": "message",
        "role": "assistant",
        "model": "gpt-4o",
        "content": [{"type": "text", "text": "Hello! How can I help?"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        # Anthropic's input_tokens excludes cache reads: 2006 - 1920.
        "usage": {
            "input_tokens": 86,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 1920,
            "output_tokens": 300,
        },
    }


def test_openai_parallel_tool_calls_with_broken_arguments() -> None:
    out = openai_response_to_anthropic(load("openai_response_tool_calls.json"), model="m")
    assert out["content"] == [
        {
            "type": "tool_use",
            "id": "call_abc123",
            "name": "get_current_weather",
            "input": {"location": "Boston, MA"},
        },
        {
            "type": "tool_use",
            "id": "call_def456",
            "name": "get_current_weather",
            "input": {"_raw": '{"location": "Paris'},
        },
    ]
    assert out["stop_reason"] == "tool_use"
    assert out["usage"]["input_tokens"] == 82 and out["usage"]["output_tokens"] == 17


def test_deepseek_reasoning_and_cache_hits_and_length() -> None:
    out = openai_response_to_anthropic(
        load("deepseek_response_reasoning.json"), model="deepseek-reasoner"
    )
    assert out["id"] == "msg_930c60df-bf64-41c9-a88e-3ec75f81e00e"
    assert out["content"] == [
        {"type": "thinking", "thinking": "Compare the tenths: 8 > 1.", "signature": ""},
        {"type": "text", "text": "9.8 is greater"},
    ]
    assert out["stop_reason"] == "max_tokens"
    assert out["usage"] == {
        "input_tokens": 6,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 10,
        "output_tokens": 200,
        "output_tokens_details": {"thinking_tokens": 180},
    }


def test_anthropic_text_with_cache_reads_and_writes() -> None:
    out = anthropic_response_to_openai(
        load("anthropic_response_text.json"), model="claude", created=7
    )
    assert out == {
        "id": "chatcmpl-013Zva2CMHLNnXjNJJKqJ2EF",
        "object": "chat.completion",
        "created": 7,
        "model": "claude",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hi! My name is Claude.",
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        # prompt_tokens counts every input token: 50 uncached + 248 written + 1800 read.
        "usage": {
            "prompt_tokens": 2098,
            "completion_tokens": 12,
            "total_tokens": 2110,
            "prompt_tokens_details": {"cached_tokens": 1800},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


def test_anthropic_text_and_parallel_tool_use() -> None:
    out = anthropic_response_to_openai(
        load("anthropic_response_tool_use.json"), model="claude", created=7
    )
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": "I'll check both cities.",
        "refusal": None,
        "tool_calls": [
            {
                "id": "toolu_01A09q90qw90lq917835lq9",
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": '{"location":"San Francisco, CA","unit":"celsius"}',
                },
            },
            {
                "id": "toolu_01B09q90qw90lq917835lq9",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
            },
        ],
    }


def test_anthropic_thinking_keeps_signatures_and_thinking_tokens() -> None:
    out = anthropic_response_to_openai(
        load("anthropic_response_thinking.json"), model="claude", created=7
    )
    message = out["choices"][0]["message"]
    assert message["content"] == "Based on my analysis"
    assert message["reasoning_content"] == "Let me analyze this step by step..."
    assert message["thinking_blocks"] == [
        {
            "type": "thinking",
            "thinking": "Let me analyze this step by step...",
            "signature": "WaUjzkypQ2mUEVM36O2TxuC06KN8xyfbJwyem2dw3URve",
        },
        {
            "type": "redacted_thinking",
            "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP",
        },
    ]
    assert out["choices"][0]["finish_reason"] == "stop"  # stop_sequence: which one is lost
    assert out["usage"]["completion_tokens_details"] == {"reasoning_tokens": 600}


def test_tool_only_anthropic_answer_has_null_content() -> None:
    resp = {
        "id": "msg_x",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"_raw": "{bad"}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    message = anthropic_response_to_openai(resp, model="m", created=0)["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == "{bad"


@pytest.mark.parametrize(
    ("finish", "tool_called", "stop"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("stop", True, "tool_use"),  # vendors that say "stop" after calling a tool
        ("length", True, "max_tokens"),
        ("content_filter", False, "refusal"),
        (None, False, "end_turn"),
        ("insufficient_system_resource", False, "end_turn"),
    ],
)
def test_finish_reason_to_stop_reason(finish: str | None, tool_called: bool, stop: str) -> None:
    assert anthropic_stop_reason(finish, tool_called=tool_called) == stop


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        (None, "stop"),
    ],
)
def test_stop_reason_to_finish_reason(stop: str | None, finish: str) -> None:
    assert openai_finish_reason(stop) == finish


def test_response_round_trip_openai_anthropic_openai() -> None:
    original = load("openai_response_tool_calls.json")
    back = anthropic_response_to_openai(
        openai_response_to_anthropic(original, model="gpt-4o-mini"),
        model="gpt-4o-mini",
        created=1699896916,
    )
    assert back["id"] == "chatcmpl-abc123"
    assert back["choices"][0]["finish_reason"] == "tool_calls"
    calls = back["choices"][0]["message"]["tool_calls"]
    # Valid arguments are re-serialised compactly; broken ones come back byte for byte.
    assert [c["function"]["arguments"] for c in calls] == [
        '{"location":"Boston, MA"}',
        '{"location": "Paris',
    ]
    assert back["usage"]["prompt_tokens"] == 82 and back["usage"]["completion_tokens"] == 17


def test_response_round_trip_anthropic_openai_anthropic() -> None:
    original = load("anthropic_response_tool_use.json")
    back = openai_response_to_anthropic(
        anthropic_response_to_openai(original, model="x"), model=original["model"]
    )
    assert back == original
