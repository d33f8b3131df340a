"""The Anthropic dialect end to end: the official SDK, against native and translated upstreams."""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.conftest import Gateway

TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


@pytest.fixture
def client(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0)


# sim-claude is served over Anthropic's protocol; sim-small over OpenAI's, so /v1/messages
# to it exercises the translation both ways.
@pytest.mark.parametrize("model", ["sim-claude", "sim-small"])
def test_messages_non_streaming(client: anthropic.Anthropic, gateway: Gateway, model: str) -> None:
    raw = client.messages.with_raw_response.create(
        model=model,
        max_tokens=30,
        system="You are terse.",
        messages=[
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "Tell me more"},
        ],
    )
    m = raw.parse()
    assert m.role == "assistant" and m.type == "message"
    assert m.content[0].type == "text" and m.content[0].text.startswith("[simulated]")
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert 0 < m.usage.output_tokens <= 30
    (ev,) = gateway.wait_events(1, request_id=raw.headers["x-request-id"])
    assert ev["dialect"] == "anthropic" and ev["endpoint"] == "messages"
    assert ev["output_tokens"] == m.usage.output_tokens and ev["usage_source"] == "upstream"


@pytest.mark.parametrize("model", ["sim-claude", "sim-small"])
def test_messages_streaming(client: anthropic.Anthropic, gateway: Gateway, model: str) -> None:
    with client.messages.stream(
        model=model, max_tokens=40, messages=[{"role": "user", "content": "Stream please"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        rid = stream.response.headers["x-request-id"]
    assert text.startswith("[simulated]") and final.content[0].text == text  # type: ignore[union-attr]
    assert final.usage.output_tokens > 0
    (ev,) = gateway.wait_events(1, request_id=rid)
    assert ev["stream"] is True and ev["status"] == "ok"
    assert ev["output_tokens"] == final.usage.output_tokens


def test_raw_event_sequence(client: anthropic.Anthropic) -> None:
    events = list(
        client.messages.create(
            model="sim-small",
            max_tokens=20,
            stream=True,
            messages=[{"role": "user", "content": "x"}],
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert "content_block_delta" in kinds
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]


@pytest.mark.parametrize("model", ["sim-claude", "sim-small"])
def test_tool_use_through_messages(client: anthropic.Anthropic, model: str) -> None:
    m = client.messages.create(
        model=model,
        max_tokens=100,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "What's the weather in Oslo?"}],
    )
    assert m.stop_reason == "tool_use"
    block = next(b for b in m.content if b.type == "tool_use")
    assert block.name == "get_weather" and "city" in block.input  # type: ignore[operator]
    # Send the tool result back: a multi-turn conversation with tool_result blocks.
    m2 = client.messages.create(
        model=model,
        max_tokens=50,
        tools=TOOLS,  # type: ignore[arg-type]
        messages=[
            {"role": "user", "content": "What's the weather in Oslo?"},
            {"role": "assistant", "content": [b.model_dump() for b in m.content]},  # type: ignore[misc]
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": block.id, "content": "Sunny, 21C"}
                ],
            },
        ],
    )
    assert m2.content and m2.content[0].type == "text"


def test_openai_client_to_anthropic_upstream(gateway: Gateway) -> None:
    c = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0)
    r = c.chat.completions.create(
        model="sim-claude",
        messages=[{"role": "system", "content": "terse"}, {"role": "user", "content": "hi"}],
        max_tokens=20,
    )
    assert (r.choices[0].message.content or "").startswith("[simulated]")
    assert r.usage is not None and r.usage.completion_tokens > 0
    stream = c.chat.completions.create(
        model="sim-claude",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.startswith("[simulated]")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    (ev,) = gateway.wait_events(1, request_id=stream.response.headers["x-request-id"])
    assert ev["output_tokens"] == chunks[-1].usage.completion_tokens


def test_anthropic_upstream_rejects_embeddings(gateway: Gateway) -> None:
    c = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0)
    with pytest.raises(openai.BadRequestError):
        c.embeddings.create(model="sim-claude", input="x")
