"""Stream translation, checked against recorded vendor streams and the official SDKs.

The fixtures are SSE streams in each vendor's documented format. Translated output is fed
to the real ``anthropic`` and ``openai`` clients (over a mock HTTP transport), so what the
SDKs accumulate -- text, thinking, tool inputs, stop reasons, usage -- is what a client of
the gateway would see.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anthropic
import anthropic.types
import httpx2
import openai
import openai.types.chat
import pydantic
import pytest

from tokenomy.core.usage import Usage, UsageSource
from tokenomy.providers.sse import SSEEvent, frame_data, frame_event, iter_events
from tokenomy.providers.translate_stream import AnthropicToOpenAIStream, OpenAIToAnthropicStream

FIXTURES = Path(__file__).parent / "fixtures" / "translate"

OPENAI_STREAMS = [
    "openai_stream_text.sse",
    "openai_stream_tool_calls.sse",
    "openai_stream_no_usage.sse",
    "deepseek_stream_reasoning.sse",
    "deepseek_stream_cache_hit.sse",
    "kimi_stream_usage_in_choice.sse",
]
ANTHROPIC_STREAMS = [
    "anthropic_stream_text.sse",
    "anthropic_stream_thinking.sse",
    "anthropic_stream_tool_use.sse",
]

Event = tuple[str, dict[str, Any]]
RAW_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)


def validate_anthropic_event(data: dict[str, Any]) -> None:
    """Validate one streamed event with the SDK's own models (ping carries nothing)."""
    if data["type"] == "error":
        anthropic.types.ErrorResponse.model_validate(data)
    elif data["type"] != "ping":
        RAW_EVENT.validate_python(data)


# --- helpers -------------------------------------------------------------------------


def sse_events(name: str) -> list[SSEEvent]:
    async def one_chunk() -> AsyncIterator[bytes]:
        yield (FIXTURES / name).read_bytes()

    async def collect() -> list[SSEEvent]:
        return [ev async for ev in iter_events(one_chunk())]

    return asyncio.run(collect())


def openai_chunks(name: str) -> list[dict[str, Any]]:
    """The fixture's chunks; its [DONE] must be the last event."""
    events = sse_events(name)
    assert events[-1].data == b"[DONE]"
    return [json.loads(ev.data) for ev in events[:-1]]


def anthropic_events(name: str) -> list[Event]:
    out = []
    for ev in sse_events(name):
        assert ev.event is not None
        out.append((ev.event, json.loads(ev.data)))
    return out


def to_anthropic(
    chunks: list[dict[str, Any]], *, hint: int = 7, usage: Usage | None = None
) -> list[Event]:
    tr = OpenAIToAnthropicStream(model="claude-gw", message_id="msg_gw", input_tokens_hint=hint)
    events: list[Event] = []
    for chunk in chunks:
        events += tr.feed(chunk)
    events += tr.finish(usage)
    return events


def to_openai(events: list[Event], *, include_usage: bool = True) -> list[dict[str, Any]]:
    tr = AnthropicToOpenAIStream(
        model="gpt-gw", completion_id="chatcmpl-gw", created=1700000000, include_usage=include_usage
    )
    chunks: list[dict[str, Any]] = []
    for name, data in events:
        chunks += tr.feed(name, data)
    return chunks


def mock_client(body: bytes) -> httpx2.Client:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    return httpx2.Client(transport=httpx2.MockTransport(handler))


def anthropic_sdk_message(events: list[Event]) -> Any:
    """What the anthropic SDK's stream helper accumulates from these events on the wire."""
    body = b"".join(frame_event(name, json.dumps(data).encode()) for name, data in events)
    client = anthropic.Anthropic(
        api_key="test", base_url="http://gateway.test", http_client=mock_client(body), max_retries=0
    )
    with client.messages.stream(
        model="claude-gw", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        return stream.get_final_message()


def openai_sdk_completion(chunks: list[dict[str, Any]]) -> Any:
    """What the openai SDK's stream helper accumulates from these chunks on the wire."""
    body = b"".join(frame_data(json.dumps(c).encode()) for c in chunks) + b"data: [DONE]\n\n"
    client = openai.OpenAI(
        api_key="test", base_url="http://gateway.test", http_client=mock_client(body), max_retries=0
    )
    with client.chat.completions.stream(
        model="gpt-gw", messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        return stream.get_final_completion()


def assert_anthropic_grammar(events: list[Event]) -> None:
    """message_start, then each block as start/delta.../stop, message_delta, message_stop."""
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("message_start") == names.count("message_delta") == 1
    expected_index = 0
    open_index: int | None = None
    for name, data in events[1:-2]:
        assert data["type"] == name
        if name == "content_block_start":
            assert open_index is None, "a block started before the previous one stopped"
            assert data["index"] == expected_index
            open_index = expected_index
            expected_index += 1
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        else:
            raise AssertionError(f"unexpected event {name} inside the message")
    assert open_index is None
    for _, data in events:
        RAW_EVENT.validate_python(data)


def reassemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Content, reasoning and tool calls of the first choice, as a client would join them."""
    text, reasoning = "", ""
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    return {
        "text": text,
        "reasoning": reasoning,
        "tool_calls": [calls[i] for i in sorted(calls)],
        "finish_reason": finish,
    }


# --- the fixtures themselves -----------------------------------------------------------


@pytest.mark.parametrize("name", OPENAI_STREAMS)
def test_openai_fixtures_are_valid_chunks(name: str) -> None:
    for chunk in openai_chunks(name):
        openai.types.chat.ChatCompletionChunk.model_validate(chunk)


@pytest.mark.parametrize("name", [*ANTHROPIC_STREAMS, "anthropic_stream_error.sse"])
def test_anthropic_fixtures_are_valid_events(name: str) -> None:
    for _, data in anthropic_events(name):
        validate_anthropic_event(data)


# --- OpenAI chunks -> Anthropic events ---------------------------------------------------


@pytest.mark.parametrize("name", OPENAI_STREAMS)
def test_openai_to_anthropic_follows_the_event_grammar(name: str) -> None:
    assert_anthropic_grammar(to_anthropic(openai_chunks(name)))


def test_openai_text_exact_events() -> None:
    events = to_anthropic(openai_chunks("openai_stream_text.sse"))
    assert events == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_gw",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-gw",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    # Only the prompt estimate is known before the first chunk.
                    "usage": {
                        "input_tokens": 7,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                        "output_tokens": 0,
                    },
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hello"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": " there!"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                # 1200 prompt tokens of which 1024 were cache reads: Anthropic's
                # input_tokens excludes them.
                "usage": {
                    "input_tokens": 176,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 1024,
                    "output_tokens": 3,
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_openai_text_through_the_anthropic_sdk() -> None:
    msg = anthropic_sdk_message(to_anthropic(openai_chunks("openai_stream_text.sse")))
    assert [(b.type, b.text) for b in msg.content] == [("text", "Hello there!")]
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == 176
    assert msg.usage.cache_read_input_tokens == 1024
    assert msg.usage.output_tokens == 3


def test_openai_tool_calls_through_the_anthropic_sdk() -> None:
    events = to_anthropic(openai_chunks("openai_stream_tool_calls.sse"))
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"input_json_delta"}
    msg = anthropic_sdk_message(events)
    assert [(b.type, b.id, b.name, b.input) for b in msg.content] == [
        ("tool_use", "call_paris", "get_weather", {"city": "Paris"}),
        ("tool_use", "call_tokyo", "get_weather", {"city": "Tokyo"}),
    ]
    assert msg.stop_reason == "tool_use"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (80, 40)


def test_deepseek_reasoning_becomes_a_thinking_block() -> None:
    chunks = openai_chunks("deepseek_stream_reasoning.sse")
    # Usage rides on the finishing chunk, which still has choices.
    assert chunks[-1]["choices"] and chunks[-1]["usage"]
    tr = OpenAIToAnthropicStream(model="claude-gw", message_id="msg_gw")
    for chunk in chunks:
        tr.feed(chunk)
    assert tr.usage == Usage(input_tokens=16, output_tokens=20, reasoning_tokens=12)
    msg = anthropic_sdk_message(to_anthropic(chunks))
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "Compare tenths."
    assert msg.content[0].signature == ""
    assert msg.content[1].text == "9.8 is greater."
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (16, 20)
    assert msg.usage.output_tokens_details is not None
    assert msg.usage.output_tokens_details.thinking_tokens == 12


def test_deepseek_cache_hit_field_counts_as_cached() -> None:
    # DeepSeek's own prompt_cache_hit_tokens, with no prompt_tokens_details at all.
    tr = OpenAIToAnthropicStream(model="claude-gw", message_id="msg_gw")
    for chunk in openai_chunks("deepseek_stream_cache_hit.sse"):
        tr.feed(chunk)
    assert tr.usage == Usage(input_tokens=1100, cached_tokens=1024, output_tokens=7)
    msg = anthropic_sdk_message(to_anthropic(openai_chunks("deepseek_stream_cache_hit.sse")))
    assert msg.content[0].text == "The usage is cached."
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens) == (76, 1024)


def test_kimi_usage_inside_the_finishing_choice() -> None:
    chunks = openai_chunks("kimi_stream_usage_in_choice.sse")
    assert "usage" not in chunks[-1] and "usage" in chunks[-1]["choices"][0]
    tr = OpenAIToAnthropicStream(model="claude-gw", message_id="msg_gw")
    for chunk in chunks:
        tr.feed(chunk)
    assert tr.usage == Usage(input_tokens=39, cached_tokens=32, output_tokens=12)
    msg = anthropic_sdk_message(to_anthropic(chunks))
    assert msg.content[0].text == "你好，李雷！1+1等于2。"
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens) == (7, 32)
    assert msg.usage.output_tokens == 12


def test_no_usage_falls_back_to_the_hint_or_the_given_count() -> None:
    chunks = openai_chunks("openai_stream_no_usage.sse")
    plain = to_anthropic(chunks, hint=11)
    assert plain[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert plain[-2][1]["usage"]["input_tokens"] == 11
    assert plain[-2][1]["usage"]["output_tokens"] == 0
    counted = Usage(input_tokens=12, output_tokens=4, source=UsageSource.COUNTED)
    msg = anthropic_sdk_message(to_anthropic(chunks, hint=11, usage=counted))
    assert msg.content[0].text == "Once upon a time"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (12, 4)


def test_usage_is_the_last_report_never_a_sum() -> None:
    def chunk(choices: list[dict[str, Any]], prompt: int, completion: int) -> dict[str, Any]:
        usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        return {"id": "c", "choices": choices, "usage": usage}

    text = [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]
    stop = [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    # Some vendors report running totals on every chunk.
    events = to_anthropic([chunk(text, 10, 1), chunk(text, 10, 2), chunk(stop, 10, 3)])
    assert events[-2][1]["usage"]["input_tokens"] == 10
    assert events[-2][1]["usage"]["output_tokens"] == 3


def _finish_chunks(finish: str | None, *, tool: bool) -> list[dict[str, Any]]:
    delta: dict[str, Any] = {"content": "x"}
    if tool:
        fn = {"name": "f", "arguments": "{}"}
        delta = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": fn}]}
    return [
        {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
    ]


@pytest.mark.parametrize(
    ("finish", "tool", "stop_reason"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("content_filter", False, "refusal"),
        (None, False, "end_turn"),
        # Vendors that end a tool-calling turn with "stop": Anthropic clients need tool_use.
        ("stop", True, "tool_use"),
        ("length", True, "max_tokens"),
    ],
)
def test_finish_reason_to_stop_reason(finish: str | None, tool: bool, stop_reason: str) -> None:
    events = to_anthropic(_finish_chunks(finish, tool=tool))
    assert_anthropic_grammar(events)
    assert events[-2][1]["delta"]["stop_reason"] == stop_reason


def test_openai_error_chunk_ends_the_stream_with_an_error_event() -> None:
    tr = OpenAIToAnthropicStream(model="claude-gw", message_id="msg_gw")
    first = openai_chunks("openai_stream_text.sse")[1]
    events = tr.feed(first)
    err = {"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded"}}
    events += tr.feed(err)
    assert [n for n, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "error",
    ]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Rate limit reached"},
    }
    validate_anthropic_event(events[-1][1])
    # Nothing after an error: Anthropic streams end there, without message_stop.
    assert tr.feed(first) == []
    assert tr.finish() == []


def test_finish_is_idempotent_and_closes_an_empty_stream() -> None:
    tr = OpenAIToAnthropicStream(model="claude-gw", message_id="msg_gw", input_tokens_hint=3)
    events = tr.finish()
    assert [n for n, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert_anthropic_grammar(events)
    assert tr.finish() == []


# --- Anthropic events -> OpenAI chunks ---------------------------------------------------


@pytest.mark.parametrize("name", ANTHROPIC_STREAMS)
@pytest.mark.parametrize("include_usage", [True, False])
def test_anthropic_to_openai_chunks_are_valid(name: str, include_usage: bool) -> None:
    chunks = to_openai(anthropic_events(name), include_usage=include_usage)
    for chunk in chunks:
        openai.types.chat.ChatCompletionChunk.model_validate(chunk)
        assert chunk["id"] == "chatcmpl-gw" and chunk["model"] == "gpt-gw"
    with_choices = [c for c in chunks if c["choices"]]
    # Exactly one finish chunk, the last with choices.
    assert [c["choices"][0]["finish_reason"] is not None for c in with_choices].count(True) == 1
    assert with_choices[-1]["choices"][0]["finish_reason"] is not None
    usage_chunks = [c for c in chunks if c.get("usage") is not None]
    if include_usage:
        # OpenAI's shape: one final chunk with choices [] and usage; usage null elsewhere.
        assert usage_chunks == [chunks[-1]] and chunks[-1]["choices"] == []
        assert all("usage" in c for c in chunks)
    else:
        assert usage_chunks == [] and all("usage" not in c for c in chunks)


def test_anthropic_text_through_the_openai_sdk() -> None:
    completion = openai_sdk_completion(to_openai(anthropic_events("anthropic_stream_text.sse")))
    choice = completion.choices[0]
    assert choice.message.content == "Hello!"
    assert choice.finish_reason == "stop"
    # message_start's 25 uncached + 1000 cache-read input; message_delta's output.
    assert completion.usage.prompt_tokens == 1025
    assert completion.usage.prompt_tokens_details.cached_tokens == 1000
    assert completion.usage.completion_tokens == 15
    assert completion.usage.total_tokens == 1040


def test_anthropic_tool_use_through_the_openai_sdk() -> None:
    completion = openai_sdk_completion(to_openai(anthropic_events("anthropic_stream_tool_use.sse")))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Okay, let's check the weather."
    [call] = choice.message.tool_calls
    assert call.id == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {
        "location": "San Francisco, CA",
        "unit": "fahrenheit",
    }
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (472, 89)


def test_anthropic_thinking_usage_is_cumulative() -> None:
    events = anthropic_events("anthropic_stream_thinking.sse")
    # Two message_delta events: the second's totals replace the first's, never add.
    assert [n for n, _ in events].count("message_delta") == 2
    tr = AnthropicToOpenAIStream(
        model="gpt-gw", completion_id="chatcmpl-gw", created=1, include_usage=True
    )
    seen: list[Usage | None] = []
    for name, data in events:
        tr.feed(name, data)
        seen.append(tr.usage)
    assert seen[0] == Usage(input_tokens=120, output_tokens=1)  # message_start's placeholder
    assert tr.usage == Usage(input_tokens=120, output_tokens=160)
    out = reassemble(to_openai(events))
    assert out["reasoning"] == (
        "Let me solve this step by step:\n\n1. First break down 27 * 453\n2. 453 = 400 + 50 + 3"
    )
    assert out["text"] == "27 * 453 = 12,231"
    assert out["finish_reason"] == "length"
    assert to_openai(events)[-1]["usage"]["completion_tokens"] == 160
    assert to_openai(events)[-1]["usage"]["prompt_tokens"] == 120


def test_null_fields_in_message_delta_usage_keep_message_start_values() -> None:
    events = anthropic_events("anthropic_stream_text.sse")
    nulls = {
        "input_tokens": None,
        "cache_read_input_tokens": None,
        "cache_creation_input_tokens": None,
        "output_tokens": 15,
    }
    events = [(n, {**d, "usage": nulls}) if n == "message_delta" else (n, d) for n, d in events]
    RAW_EVENT.validate_python(next(d for n, d in events if n == "message_delta"))
    usage = to_openai(events)[-1]["usage"]
    assert usage["prompt_tokens"] == 1025
    assert usage["prompt_tokens_details"]["cached_tokens"] == 1000
    assert usage["completion_tokens"] == 15


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("something_new", "stop"),
    ],
)
def test_stop_reason_to_finish_reason(stop_reason: str, finish_reason: str) -> None:
    events = anthropic_events("anthropic_stream_text.sse")
    events = [
        (n, {**d, "delta": {**d["delta"], "stop_reason": stop_reason}})
        if n == "message_delta"
        else (n, d)
        for n, d in events
    ]
    assert reassemble(to_openai(events))["finish_reason"] == finish_reason


def test_anthropic_error_event_becomes_an_openai_error_chunk() -> None:
    events = anthropic_events("anthropic_stream_error.sse")
    chunks = to_openai(events)
    assert chunks[-1] == {
        "error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": None}
    }
    assert reassemble(chunks[:-1])["text"] == "Partial"
    body = b"".join(frame_data(json.dumps(c).encode()) for c in chunks)
    client = openai.OpenAI(
        api_key="test", base_url="http://gateway.test", http_client=mock_client(body), max_retries=0
    )
    stream = client.chat.completions.create(
        model="gpt-gw", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="Overloaded"):
        for _ in stream:
            pass


def test_anthropic_finish_closes_a_cut_stream_once() -> None:
    events = anthropic_events("anthropic_stream_text.sse")[:4]  # cut before message_delta
    tr = AnthropicToOpenAIStream(
        model="gpt-gw", completion_id="chatcmpl-gw", created=1, include_usage=False
    )
    for name, data in events:
        tr.feed(name, data)
    closing = tr.finish()
    assert [c["choices"][0]["finish_reason"] for c in closing] == ["stop"]
    assert tr.finish() == []
    assert tr.feed("message_stop", {"type": "message_stop"}) == []


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPENAI_STREAMS)
def test_openai_round_trip_keeps_text_reasoning_and_tool_calls(name: str) -> None:
    chunks = openai_chunks(name)
    back = to_openai(to_anthropic(chunks))
    original, returned = reassemble(chunks), reassemble(back)
    assert returned["text"] == original["text"]
    assert returned["reasoning"] == original["reasoning"]
    assert returned["tool_calls"] == original["tool_calls"]


@pytest.mark.parametrize("name", ANTHROPIC_STREAMS)
def test_anthropic_round_trip_keeps_blocks(name: str) -> None:
    events = anthropic_events(name)
    back = to_anthropic(to_openai(events))
    assert_anthropic_grammar(back)
    original, returned = anthropic_sdk_message(events), anthropic_sdk_message(back)

    def blocks(msg: Any) -> list[tuple[str, Any]]:
        key: dict[str, Callable[[Any], Any]] = {
            "text": lambda b: b.text,
            "thinking": lambda b: b.thinking,
            "tool_use": lambda b: (b.id, b.name, b.input),
        }
        return [(b.type, key[b.type](b)) for b in msg.content]

    assert blocks(returned) == blocks(original)
    assert returned.stop_reason == original.stop_reason
    assert returned.usage.output_tokens == original.usage.output_tokens
    assert returned.usage.input_tokens == original.usage.input_tokens
    assert returned.usage.cache_read_input_tokens == (original.usage.cache_read_input_tokens or 0)
