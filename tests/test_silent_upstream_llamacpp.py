"""A real llama.cpp server (llama-cpp-python's ``llama_cpp.server``) behind the gateway.

llama.cpp's server never reports usage in a stream, even when asked
(``stream_options.include_usage``); its whole answers do carry usage. The model is a tiny
llama-architecture GGUF written by the test itself (``tests/tiny_gguf.py``: nothing is
downloaded) whose answer is known: " the quick brown fox jumps over lazy dog the ...", one
token a word both in its own vocabulary and in cl100k, the tokenizer tokenomy counts this
model with. So the server's own count of a whole answer and tokenomy's count of the same
answer streamed must agree, and every figure the client sees must be what was billed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import Gateway, gateway_yaml
from tests.procs import Proc, ProcError
from tests.servers import ThreadServer, free_port
from tests.test_silent_usage import completions_stream, nanos
from tests.tiny_gguf import WORDS, write_model
from tokenomy.app import app_for
from tokenomy.billing.catalog import PriceBook
from tokenomy.billing.pricing import price_request
from tokenomy.config import parse_config
from tokenomy.core.usage import Usage
from tokenomy.services import build_services

MODEL = "tiny-llama"
MSGS = [{"role": "user", "content": "Say something."}]
MAX_TOKENS = 12
BOOK = PriceBook.load()


def require_llama_cpp() -> None:
    """llama-cpp-python's server, from the dev extra: under CI a missing one fails."""
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as e:
        reason = f"llama-cpp-python[server] is not installed ({e}); the dev extra has it"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a llama.cpp server serving the tiny model."""
    require_llama_cpp()
    tmp = tmp_path_factory.mktemp("llama")
    model = write_model(tmp / "tiny.gguf")
    proc: Proc | None = None
    for _ in range(3):  # a free port may be taken before the server binds it
        port = free_port()
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model)]
        argv += ["--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--n_ctx", "512", "--n_threads", "1", "--verbose", "false"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = Proc("llama.cpp", argv, port, tmp / f"llama-{port}.log", "/v1/models", env)
        try:
            proc.start(timeout=120)
            break
        except ProcError as e:
            if "address already in use" not in str(e).lower():
                raise
    assert proc is not None and proc.alive
    try:
        yield proc.url
    finally:
        with contextlib.suppress(ProcError):
            proc.terminate(timeout=10)
        proc.kill()


@pytest.fixture(scope="module")
def gw(
    llama: str, sim: ThreadServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("llama-gw")
    extra = f"""
  - name: {MODEL}
    deployments: [{{vendor: llama, model: {MODEL}, price: sim/sim-small, max_output: 256}}]
"""
    text = gateway_yaml(sim.url, f"sqlite:///{tmp / 'gw.db'}", extra)
    text = text.replace("_timeout_s: 1.5", "_timeout_s: 60").replace(
        "vendors:\n",
        f'vendors:\n  llama: {{dialect: openai, base_url: "{llama}/v1", auth: none, name: llama.cpp}}\n',
        1,
    )
    svc = build_services(parse_config(text, "test-config"), dict(os.environ))
    srv = ThreadServer(lambda: app_for(svc)).start()
    secret, rec = svc.keys.create("fixture")
    svc.key_cache.put(secret, rec)
    yield Gateway(srv, svc, secret, sim.url)
    srv.stop()


@pytest.fixture
def org_key(gw: Gateway) -> tuple[str, str]:
    org = gw.new_org(10**10)
    return org, gw.new_key(org_id=org)


def expected_text(n: int) -> str:
    """What the tiny model says in ``n`` tokens."""
    return "".join(" " + WORDS[i % len(WORDS)] for i in range(n))


def counted(gw: Gateway, text: str) -> int:
    return gw.services.counter.count_text(MODEL, text)


def counted_words(text: str) -> int:
    return len(text.split())


def price(row: dict[str, Any], usage: Usage) -> int:
    at = datetime.fromtimestamp(row["ts_ms"] / 1000, UTC)
    return price_request(BOOK.version(row["price_version"]), usage, at=at).total.nanos


def test_llamacpp_reports_no_usage_in_a_stream_even_when_asked(llama: str) -> None:
    """What the upstream does, on record: the reason for everything below."""
    body: dict[str, Any] = {"model": MODEL, "messages": MSGS, "max_tokens": MAX_TOKENS}
    body["temperature"] = 0
    with httpx.stream(
        "POST",
        llama + "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        timeout=60,
    ) as r:
        datas = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    assert chunks and all(c.get("usage") is None for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == expected_text(MAX_TOKENS)
    whole = httpx.post(llama + "/v1/chat/completions", json=body, timeout=60).json()
    assert whole["choices"][0]["message"]["content"] == text
    assert whole["usage"]["completion_tokens"] == MAX_TOKENS == counted_words(text)


def test_an_openai_stream_from_llamacpp_gets_usage_billed_as_counted(
    gw: Gateway, org_key: tuple[str, str]
) -> None:
    org, key = org_key
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=60)
    raw = c.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MSGS,  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == expected_text(MAX_TOKENS)
    usage_chunks = [ch for ch in chunks if ch.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and not chunks[-1].choices
    u = chunks[-1].usage
    assert u is not None
    (ev,) = gw.wait_events(1, request_id=raw.headers["x-request-id"])
    assert ev["usage_source"] == "counted" and ev["status"] == "ok"
    assert u.completion_tokens == ev["output_tokens"] == counted(gw, text) == MAX_TOKENS
    assert u.prompt_tokens == ev["input_tokens"] > 0
    assert nanos(u.model_extra["cost"]) == ev["cost_nanos"] > 0  # type: ignore[index]
    assert gw.services.ledger.balance(org) == 10**10 - ev["cost_nanos"]


def test_a_llamacpp_stream_bills_the_output_of_the_same_answer_whole(
    gw: Gateway, org_key: tuple[str, str]
) -> None:
    _, key = org_key
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=60)
    whole = c.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MSGS,  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    answer = whole.parse()
    streamed = c.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MSGS,  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,  # without include_usage: billed all the same
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in streamed.parse() if ch.choices)
    assert text == answer.choices[0].message.content
    (w,) = gw.wait_events(1, request_id=whole.headers["x-request-id"])
    (s,) = gw.wait_events(1, request_id=streamed.headers["x-request-id"])
    assert (w["usage_source"], s["usage_source"]) == ("upstream", "counted")
    assert answer.usage is not None
    assert answer.usage.completion_tokens == w["output_tokens"] == s["output_tokens"] > 0
    # The prompts are counted differently (llama.cpp counts its chat template, tokenomy the
    # messages as OpenAI does): the output, which is what went free, bills the same.
    input_w = price(w, Usage(input_tokens=w["input_tokens"]))
    input_s = price(s, Usage(input_tokens=s["input_tokens"]))
    assert w["cost_nanos"] - input_w == s["cost_nanos"] - input_s > 0


def test_an_anthropic_client_of_llamacpp_gets_the_counted_output_tokens(
    gw: Gateway, org_key: tuple[str, str]
) -> None:
    _, key = org_key
    c = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=60)
    # No temperature: the tiny model's answer does not depend on sampling.
    with c.messages.stream(
        model=MODEL,
        max_tokens=MAX_TOKENS,
        messages=MSGS,  # type: ignore[arg-type]
    ) as stream:
        msg = stream.get_final_message()
        rid = stream.response.headers["x-request-id"]
    text = "".join(b.text for b in msg.content if b.type == "text")
    assert text == expected_text(MAX_TOKENS)
    (s,) = gw.wait_events(1, request_id=rid)
    assert s["usage_source"] == "counted"
    assert msg.usage.output_tokens == s["output_tokens"] == counted(gw, text) == MAX_TOKENS
    assert msg.usage.input_tokens == s["input_tokens"] > 0
    whole = c.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=MAX_TOKENS,
        messages=MSGS,  # type: ignore[arg-type]
    )
    m = whole.parse()
    (w,) = gw.wait_events(1, request_id=whole.headers["x-request-id"])
    assert m.usage.output_tokens == w["output_tokens"] == s["output_tokens"]
    body = json.loads(whole.http_response.content, parse_float=Decimal)
    assert nanos(body["usage"]["cost"]) == w["cost_nanos"] > 0


def test_the_tiny_model_is_written_offline(tmp_path: Path) -> None:
    """The model file is made here, from nothing downloaded, and reads back as llama."""
    import gguf

    reader = gguf.GGUFReader(write_model(tmp_path / "m.gguf"))
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    assert len(reader.tensors) == 12


def test_a_legacy_completions_stream_from_llamacpp_gets_usage_billed_as_counted(
    gw: Gateway, org_key: tuple[str, str]
) -> None:
    _, key = org_key
    body = {"model": MODEL, "prompt": "Say something.", "max_tokens": MAX_TOKENS}
    rid, chunks = completions_stream(gw, key, body)
    text = "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"])
    last = chunks[-1]
    assert last["choices"] == [] and last["object"] == "text_completion"
    (ev,) = gw.wait_events(1, request_id=rid)
    assert ev["usage_source"] == "counted"
    assert last["usage"]["completion_tokens"] == ev["output_tokens"] == counted(gw, text) > 0
    assert nanos(last["usage"]["cost"]) == ev["cost_nanos"] > 0
    whole = httpx.post(
        gw.base_url + "/completions",
        headers={"Authorization": f"Bearer {key}"},
        json=body,
        timeout=60,
    ).json()
    assert whole["choices"][0]["text"] == text
    assert whole["usage"]["completion_tokens"] == ev["output_tokens"]
