"""The OpenAI dialect end to end: the official SDK against a running gateway and simulator."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import Gateway


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0)


def test_chat_completion_non_streaming(client: openai.OpenAI, gateway: Gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="sim-small",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        max_tokens=20,
        temperature=0.2,
    )
    r = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert raw.headers["x-tokenomy-deployment"] == "sim/sim-small"
    assert r.choices[0].message.content and r.choices[0].message.content.startswith("[simulated]")
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 20
    (ev,) = gateway.wait_events(1, request_id=request_id)
    assert ev["status"] == "ok" and ev["http_status"] == 200
    assert ev["usage_source"] == "upstream"
    assert ev["input_tokens"] == r.usage.prompt_tokens
    assert ev["output_tokens"] == r.usage.completion_tokens
    assert ev["deployment"] == "sim/sim-small" and ev["vendor"] == "sim"
    assert ev["key_id"] is not None and ev["stream"] is False


def test_alias_resolves(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="small", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content


def test_streaming_with_usage(client: openai.OpenAI, gateway: Gateway) -> None:
    stream = client.chat.completions.create(
        model="sim-small",
        messages=[{"role": "user", "content": "Tell me a story"}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=30,
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text.startswith("[simulated]")
    assert usage is not None and usage.completion_tokens > 0
    rid = stream.response.headers["x-request-id"]
    (ev,) = gateway.wait_events(1, request_id=rid)
    assert ev["stream"] is True and ev["status"] == "ok"
    assert ev["output_tokens"] == usage.completion_tokens
    assert ev["usage_source"] == "upstream"
    assert ev["ttft_ms"] is not None


def test_stream_without_include_usage_strips_the_usage_chunk(gateway: Gateway) -> None:
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST",
        gateway.base_url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {gateway.key}"},
    ) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        rid = r.headers["x-request-id"]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert all(c["choices"] for c in chunks), "the usage-only chunk must not reach the client"
    # ...yet the gateway still billed from the vendor's usage, which it asked for itself.
    (ev,) = gateway.wait_events(1, request_id=rid)
    assert ev["usage_source"] == "upstream" and ev["output_tokens"] > 0


def test_usage_on_a_chunk_with_choices(client: openai.OpenAI, gateway: Gateway) -> None:
    stream = client.chat.completions.create(
        model="inline", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    (ev,) = gateway.wait_events(1, request_id=stream.response.headers["x-request-id"])
    assert ev["usage_source"] == "upstream" and ev["output_tokens"] > 0


def test_vendor_without_usage_is_counted(client: openai.OpenAI, gateway: Gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="silent", messages=[{"role": "user", "content": "count me"}], max_tokens=25
    )
    r = raw.parse()
    (ev,) = gateway.wait_events(1, request_id=raw.headers["x-request-id"])
    assert ev["usage_source"] == "counted"
    counted = gateway.services.counter.count_text("silent-a", r.choices[0].message.content or "")
    assert ev["output_tokens"] == counted > 0
    assert ev["input_tokens"] > 0
    # The answer carries the usage it was billed for, though the vendor gave none.
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (
        ev["input_tokens"],
        ev["output_tokens"],
    )


def test_tools_round_trip(client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    r = client.chat.completions.create(
        model="sim-small",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=tools,  # type: ignore[arg-type]
        tool_choice="required",
    )
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert "city" in json.loads(call.function.arguments)  # type: ignore[union-attr]


def test_tools_never_routed_to_a_deployment_without_tools(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="no-tools",
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert "tools" in str(e.value)


def test_json_mode_and_n(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="sim-small",
        messages=[{"role": "user", "content": "give json"}],
        response_format={"type": "json_object"},
        n=2,
    )
    assert len(r.choices) == 2
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)


def test_embeddings(client: openai.OpenAI, gateway: Gateway) -> None:
    raw = client.embeddings.with_raw_response.create(model="sim-embed", input=["alpha", "beta"])
    r = raw.parse()
    assert len(r.data) == 2 and len(r.data[0].embedding) > 8
    (ev,) = gateway.wait_events(1, request_id=raw.headers["x-request-id"])
    assert ev["endpoint"] == "embeddings" and ev["input_tokens"] == r.usage.prompt_tokens > 0


def test_legacy_completions(client: openai.OpenAI) -> None:
    r = client.completions.create(model="sim-small", prompt="Once upon a time", max_tokens=10)
    assert r.choices[0].text


def test_models_list(client: openai.OpenAI, gateway: Gateway) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {"sim-small", "sim-claude", "flaky"} <= set(models)
    small = models["sim-small"].model_dump()
    assert small["context_length"] == 32768
    assert client.models.retrieve("sim-small").id == "sim-small"


def test_key_limited_to_models(gateway: Gateway) -> None:
    c = openai.OpenAI(
        base_url=gateway.base_url, api_key=gateway.new_key(["sim-small"]), max_retries=0
    )
    assert c.chat.completions.create(model="sim-small", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(model="sim-claude", messages=[{"role": "user", "content": "x"}])
    assert [m.id for m in c.models.list()] == ["sim-small"]


def test_standby_deployment_serves_until_the_vendor_key_exists(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="standby-demo", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-tokenomy-deployment"] == "sim/standby-a"
