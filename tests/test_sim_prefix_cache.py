"""The simulator's prompt cache: per deployment, matched on prefixes, cold after its TTL."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.servers import ThreadServer
from tokenomy.sim.server import create_sim_app
from tokenomy.sim.settings import SimSettings

TTL_S = 1.0
LONG = "Read the repository and fix the failing test, one careful step at a time. " * 120


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    srv = ThreadServer(lambda: create_sim_app(SimSettings(cache_ttl_s=TTL_S))).start()
    yield srv.url
    srv.stop()


def chat(url: str, model: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    r = httpx.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": messages, "max_tokens": 8, **extra},
    )
    r.raise_for_status()
    usage: dict[str, Any] = r.json()["usage"]
    return usage


def test_a_growing_conversation_reads_its_earlier_turns_from_the_same_deployment(
    sim: str,
) -> None:
    system = secrets.token_hex(4) + LONG
    convo = [{"role": "system", "content": system}, {"role": "user", "content": "Start."}]
    first = chat(sim, "dep-a", convo)
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    convo += [{"role": "assistant", "content": "Done."}, {"role": "user", "content": LONG}]
    second = chat(sim, "dep-a", convo)
    cached = second["prompt_tokens_details"]["cached_tokens"]
    # The first call's prompt, in whole 64-token blocks, is read; the new turn is not.
    assert first["prompt_tokens"] - 128 < cached <= first["prompt_tokens"] and cached % 64 == 0
    # Another deployment (another upstream model) holds none of it.
    elsewhere = chat(sim, "dep-b", convo)
    assert elsewhere["prompt_tokens_details"]["cached_tokens"] == 0
    # ... until it has seen it.
    again = chat(sim, "dep-b", convo)
    assert again["prompt_tokens_details"]["cached_tokens"] == again["prompt_tokens"] // 64 * 64


def test_the_cache_goes_cold_after_its_ttl_unless_used(sim: str) -> None:
    convo = [{"role": "user", "content": secrets.token_hex(4) + LONG}]
    chat(sim, "dep-a", convo)
    time.sleep(TTL_S * 0.6)
    assert chat(sim, "dep-a", convo)["prompt_tokens_details"]["cached_tokens"] > 0
    time.sleep(TTL_S * 0.6)  # past the first write, within the hit's refresh
    assert chat(sim, "dep-a", convo)["prompt_tokens_details"]["cached_tokens"] > 0
    time.sleep(TTL_S * 1.2)
    assert chat(sim, "dep-a", convo)["prompt_tokens_details"]["cached_tokens"] == 0
    # OpenAI's extended retention keeps it for a day.
    long_kept = [{"role": "user", "content": secrets.token_hex(4) + LONG}]
    chat(sim, "dep-a", long_kept, prompt_cache_retention="24h")
    time.sleep(TTL_S * 1.2)
    u = chat(sim, "dep-a", long_kept, prompt_cache_retention="24h")
    assert u["prompt_tokens_details"]["cached_tokens"] > 0


def test_short_prompts_are_never_cached(sim: str) -> None:
    convo = [{"role": "user", "content": "hi " + secrets.token_hex(4)}]
    chat(sim, "dep-a", convo)
    assert chat(sim, "dep-a", convo)["prompt_tokens_details"]["cached_tokens"] == 0


def messages(url: str, system: list[dict[str, Any]], model: str = "claude-a") -> dict[str, Any]:
    r = httpx.post(
        url + "/v1/messages",
        json={
            "model": model,
            "max_tokens": 8,
            "system": system,
            "messages": [{"role": "user", "content": "Go."}],
        },
    )
    r.raise_for_status()
    usage: dict[str, Any] = r.json()["usage"]
    return usage


@pytest.mark.parametrize("ttl", [None, "1h"])
def test_anthropic_writes_then_reads_by_lifetime(sim: str, ttl: str | None) -> None:
    cc: dict[str, Any] = {"type": "ephemeral"}
    if ttl:
        cc["ttl"] = ttl
    system = [{"type": "text", "text": secrets.token_hex(4) + LONG, "cache_control": cc}]
    w = messages(sim, system)
    assert w["cache_read_input_tokens"] == 0 and w["cache_creation_input_tokens"] > 0
    split = w["cache_creation"]
    hour, five = split["ephemeral_1h_input_tokens"], split["ephemeral_5m_input_tokens"]
    assert (hour, five) == ((w["cache_creation_input_tokens"], 0) if ttl else (0, hour + five))
    r = messages(sim, system)
    assert r["cache_creation_input_tokens"] == 0
    assert r["cache_read_input_tokens"] == w["cache_creation_input_tokens"]
    if ttl:  # an hour's cache outlives the default TTL
        time.sleep(TTL_S * 1.2)
        assert messages(sim, system)["cache_read_input_tokens"] > 0
    # Another deployment writes its own.
    other = messages(sim, system, model="claude-b")
    assert other["cache_read_input_tokens"] == 0 and other["cache_creation_input_tokens"] > 0
