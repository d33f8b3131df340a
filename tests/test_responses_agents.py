"""A real agent framework against the gateway: the OpenAI Agents SDK runs a two-turn,
tool-calling agent over the Responses API (chained by previous_response_id, and with the
whole input re-sent), on an OpenAI-dialect and an Anthropic-dialect deployment."""

from __future__ import annotations

import asyncio

import openai
import pytest
from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, function_tool
from openai import AsyncOpenAI

from tests.conftest import Gateway

CITIES: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    CITIES.append(city)
    return f"Sunny in {city}, 21C"


@pytest.mark.parametrize("model", ["sim-small", "sim-claude"])
@pytest.mark.parametrize("chained", [True, False])
@pytest.mark.parametrize("streamed", [False, True])
def test_agent_calls_its_tool_then_answers(
    gateway: Gateway, model: str, chained: bool, streamed: bool
) -> None:
    org = gateway.new_org(10**10)
    key = gateway.new_key(org_id=org)
    before = len(gateway.events(org_id=org))

    async def run() -> tuple[str, list[str]]:
        client = AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
        agent = Agent(
            name="weather",
            instructions="Answer with the help of your tools.",
            tools=[get_weather],
            model=OpenAIResponsesModel(model=model, openai_client=client),
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
        ids = [r.response_id or "" for r in result.raw_responses]
        await client.close()
        return str(result.final_output), ids

    CITIES.clear()
    final, ids = asyncio.run(run())
    assert CITIES == ["example"]  # the simulator's schema-valid argument
    assert final.startswith("[simulated]")
    assert len(ids) == 2 and all(i.startswith("resp_") for i in ids)
    sync = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    second_turn = sync.responses.retrieve(ids[1])
    assert second_turn.previous_response_id == (ids[0] if chained else None)
    rows = gateway.wait_events(before + 2, org_id=org)[before:]
    assert [r["endpoint"] for r in rows] == ["responses", "responses"]
    assert all(r["status"] == "ok" and r["cost_nanos"] > 0 for r in rows)
    # The second turn re-read the first (chained or re-sent): more input, billed.
    first, second = sorted(rows, key=lambda r: r["ts_ms"])
    assert second["input_tokens"] > first["input_tokens"]
    gateway.flush()
    spent = sum(r["cost_nanos"] for r in rows)
    assert gateway.services.ledger.balance(org) == 10**10 - spent
