"""Bad input from agents gets a clear 4xx in the client's own format and changes nothing:
another organisation's task or stored response, and input items the target vendor's
protocol cannot carry (named in the error)."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import Gateway

MSG = [{"role": "user", "content": "hi"}]
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def balance(gateway: Gateway, org: str) -> int:
    return gateway.services.ledger.balance(org)


def task_of(gateway: Gateway, key: str) -> str:
    r = httpx.post(
        gateway.base_url + "/tasks",
        json={"budget": {"amount": "1.00"}},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200, r.text
    tid: str = r.json()["id"]
    return tid


def task_calls(gateway: Gateway, key: str, task: str) -> int:
    r = httpx.get(gateway.base_url + f"/tasks/{task}", headers={"Authorization": f"Bearer {key}"})
    calls: int = r.json()["calls"]
    return calls


def test_another_organisations_task_is_404_in_every_protocol(gateway: Gateway) -> None:
    owner = gateway.new_key(org_id=gateway.new_org(10**10))
    task = task_of(gateway, owner)
    org = gateway.new_org(10**10)
    other = gateway.new_key(org_id=org)
    head = {"X-Tokenomy-Task": task}
    o = openai.OpenAI(base_url=gateway.base_url, api_key=other, max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        o.responses.create(model="sim-small", input="hi", metadata={"task_id": task})
    assert e.value.body["code"] == "task_not_found" and task in e.value.message  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        o.responses.create(model="sim-small", input="hi", stream=True, extra_headers=head)
    with pytest.raises(openai.NotFoundError):
        o.chat.completions.create(model="sim-small", messages=MSG, stream=True, extra_headers=head)  # type: ignore[arg-type]
    a = anthropic.Anthropic(base_url=gateway.url, api_key=other, max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as ae:
        a.messages.create(model="sim-claude", max_tokens=5, messages=MSG, extra_headers=head)  # type: ignore[arg-type]
    body: Any = ae.value.body
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert task in body["error"]["message"]
    assert balance(gateway, org) == 10**10
    assert task_calls(gateway, owner, task) == 0
    assert all(r["cost_nanos"] == 0 for r in gateway.events(org_id=org))


def test_a_foreign_previous_response_is_404_before_any_stream(gateway: Gateway) -> None:
    mine = openai.OpenAI(
        base_url=gateway.base_url,
        api_key=gateway.new_key(org_id=gateway.new_org(10**10)),
        max_retries=0,
    ).responses.create(model="sim-small", input="hi")
    org = gateway.new_org(10**10)
    other = openai.OpenAI(
        base_url=gateway.base_url, api_key=gateway.new_key(org_id=org), max_retries=0
    )
    with (
        pytest.raises(openai.NotFoundError) as e,
        other.responses.stream(model="sim-small", input="more", previous_response_id=mine.id) as s,
    ):
        list(s)
    assert e.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert balance(gateway, org) == 10**10 and gateway.events(org_id=org) == []


@pytest.mark.parametrize("model", ["sim-small", "sim-claude"])
def test_a_tool_output_with_an_image_is_refused_by_name(gateway: Gateway, model: str) -> None:
    """A chat tool message carries only text: an image in a function_call_output would be
    lost on the way, so it is refused, naming the part."""
    org = gateway.new_org(10**10)
    c = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.new_key(org_id=org), max_retries=0)
    items = [
        {"type": "function_call", "call_id": "c1", "name": "shot", "arguments": "{}"},
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": [
                {"type": "input_text", "text": "here"},
                {"type": "input_image", "image_url": PNG},
            ],
        },
    ]
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model=model, input=items)  # type: ignore[arg-type]
    assert e.value.body["param"] == "input[1].output[1]"  # type: ignore[index]
    assert "input_image" in e.value.message
    assert balance(gateway, org) == 10**10 and gateway.events(org_id=org) == []


def test_an_image_anthropic_cannot_fetch_names_the_input_item(gateway: Gateway) -> None:
    """Translated for an Anthropic deployment, an input part it cannot take is named as the
    client wrote it (the Responses item), not as the chat message it became."""
    org = gateway.new_org(10**10)
    c = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.new_key(org_id=org), max_retries=0)
    items = [
        {"role": "user", "content": "look"},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "this"},
                {"type": "input_image", "image_url": "ftp://example.com/a.png"},
            ],
        },
    ]
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="sim-claude", instructions="Be brief.", input=items)  # type: ignore[arg-type]
    assert e.value.body["param"].startswith("input[1].content[1]")  # type: ignore[index]
    assert balance(gateway, org) == 10**10
    assert all(r["cost_nanos"] == 0 for r in gateway.events(org_id=org))


def test_chat_message_params_map_back_to_what_the_client_wrote() -> None:
    from tokenomy.providers.translate_responses import chat_request, input_items, input_param

    items = input_items(
        [
            {"role": "user", "content": "go"},
            {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "b", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "a", "output": "1"},
            {"role": "user", "content": [{"type": "input_text", "text": "x"}]},
        ]
    )
    context = [{"role": "user", "content": "before"}, {"role": "assistant", "content": "ok"}]
    sources: list[str] = []
    chat = chat_request({"model": "m", "instructions": "Be brief."}, context, items, sources)
    assert len(chat["messages"]) == len(sources) == 7
    assert [input_param(f"messages[{i}].content[0]", sources) for i in range(7)] == [
        "instructions",
        "previous_response_id",
        "previous_response_id",
        "input[0].content[0]",
        "input[1].content[0]",  # both calls joined one assistant turn
        "input[3].content[0]",
        "input[4].content[0]",
    ]
    assert input_param("messages[9]", sources) == "messages[9]"
    assert input_param("tools[0]", sources) == "tools[0]" and input_param(None, sources) is None


def test_an_anthropic_block_an_openai_vendor_cannot_take_is_named(gateway: Gateway) -> None:
    """Claude Code's protocol to an OpenAI-dialect deployment: a block with no chat
    counterpart is a 400 in Anthropic's format whose message says where it is (Anthropic's
    error has no separate field for that), and nothing is charged."""
    org = gateway.new_org(10**10)
    a = anthropic.Anthropic(
        base_url=gateway.url, api_key=gateway.new_key(org_id=org), max_retries=0
    )
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "see"},
                {
                    "type": "search_result",
                    "source": "https://example.com",
                    "title": "t",
                    "content": [{"type": "text", "text": "x"}],
                },
            ],
        }
    ]
    with pytest.raises(anthropic.BadRequestError) as e:
        a.messages.create(model="sim-small", max_tokens=5, messages=messages)  # type: ignore[arg-type]
    body: Any = e.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "search_result" in body["error"]["message"]
    assert "messages[0].content[1]" in body["error"]["message"]
    assert balance(gateway, org) == 10**10
    assert all(r["cost_nanos"] == 0 for r in gateway.events(org_id=org))
