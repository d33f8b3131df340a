"""The stream relay and metering, on recorded vendor streams split at awkward boundaries.

A fake upstream replays a fixture's bytes in small pieces (every 7 bytes by default, so
events, lines, multi-byte characters and CRLFs are split), the way a socket hands them over.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest

from tokenomy.core.call import Call
from tokenomy.core.keys import ApiKey
from tokenomy.core.metering import (
    anthropic_delta_text,
    count_prompt,
    counted_usage,
    openai_chunk_text,
)
from tokenomy.core.tokencount import TokenCounter
from tokenomy.core.usage import Usage, UsageSource
from tokenomy.gateway.relay import StreamRelay
from tokenomy.providers.response import TransportError
from tokenomy.providers.sse import (
    SSEEvent,
    frames_data,
    iter_event_batches,
    iter_event_bytes,
    iter_events,
)

FIXTURES = Path(__file__).parent / "fixtures" / "translate"
KEY = ApiKey(
    id="key_1",
    prefix="tk-test",
    name="test",
    org_id=None,
    project_id=None,
    allowed_models=None,
    created_ms=0,
    revoked_ms=None,
)
CHAT_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "stream": True,
    "messages": [{"role": "user", "content": "Tell me a story about a lighthouse keeper."}],
}
MESSAGES_BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "stream": True,
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "Tell me a story about a lighthouse keeper."}],
}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class FakeUpstream:
    """An upstream response replaying bytes in fixed-size pieces, optionally failing after."""

    status = 200

    def __init__(self, body: bytes, *, size: int = 7, error: BaseException | None = None) -> None:
        self.body = body
        self.size = size
        self.error = error
        self.released = 0

    async def read(self) -> bytes:
        return self.body

    async def _pieces(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.body), self.size):
            yield self.body[i : i + self.size]
            await asyncio.sleep(0)
        if self.error is not None:
            raise self.error

    def event_batches(self) -> AsyncIterator[list[SSEEvent]]:
        return iter_event_batches(self._pieces())

    def event_bytes(self) -> AsyncIterator[bytes]:
        return iter_event_bytes(self._pieces())

    def release(self) -> None:
        self.released += 1


COUNTER = TokenCounter()


def count(call: Call) -> Callable[[], Usage]:
    """The relay's own count of ``call``'s usage, as the pipeline gives it."""
    return lambda: counted_usage(COUNTER, call)


def vendor_model(raw: bytes) -> str:
    """The model a recorded stream names (a call for that name relays it unchanged)."""
    named = re.search(rb'"model": ?"([^"]*)"', raw)
    assert named is not None
    return named.group(1).decode()


def make_call(dialect: str, *, wants_usage: bool = False, model: str | None = None) -> Call:
    if dialect == "openai":
        return Call(
            endpoint="chat",
            dialect="openai",
            body=CHAT_BODY,
            model=model or "gpt-4o-mini",
            stream=True,
            key=KEY,
            wants_usage=wants_usage,
        )
    return Call(
        endpoint="messages",
        dialect="anthropic",
        body=MESSAGES_BODY,
        model=model or "claude-sonnet-4-5",
        stream=True,
        key=KEY,
    )


async def relay(
    call: Call, upstream: FakeUpstream, upstream_dialect: str
) -> tuple[bytes, StreamRelay]:
    r = StreamRelay(
        call, upstream, upstream_dialect, prompt_tokens_hint=lambda: 42, count_usage=count(call)
    )
    out = b"".join([b async for b in r.chunks()])
    return out, r


def blocks(raw: bytes) -> list[bytes]:
    return [b for b in raw.split(b"\n\n") if b]


def without_usage_chunk(raw: bytes) -> bytes:
    """The OpenAI stream minus its usage-only (``choices: []``) chunk."""
    kept = [b for b in blocks(raw) if b'"choices":[],"usage":{' not in b]
    assert len(kept) == len(blocks(raw)) - 1
    return b"".join(b + b"\n\n" for b in kept)


def cut(raw: bytes, fraction: float) -> bytes:
    """The stream cut off part-way, in the middle of an event."""
    at = int(len(raw) * fraction)
    assert raw[at - 2 : at] != b"\n\n"
    return raw[:at]


def mock_http(body: bytes) -> httpx2.Client:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    return httpx2.Client(transport=httpx2.MockTransport(handler))


def openai_sdk_chunks(body: bytes) -> list[Any]:
    client = openai.OpenAI(
        api_key="t", base_url="http://gw.test", http_client=mock_http(body), max_retries=0
    )
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    return list(stream)


def anthropic_sdk_message(body: bytes) -> Any:
    client = anthropic.Anthropic(
        api_key="t", base_url="http://gw.test", http_client=mock_http(body), max_retries=0
    )
    with client.messages.stream(
        model="claude-gw", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        return stream.get_final_message()


# --- SSE parsing across chunk boundaries ---------------------------------------------------


async def _parse(body: bytes, size: int) -> list[SSEEvent]:
    return [ev async for ev in iter_events(FakeUpstream(body, size=size)._pieces())]


@pytest.mark.parametrize(
    "name",
    [
        "openai_stream_tool_calls.sse",
        "anthropic_stream_thinking.sse",
        "kimi_stream_usage_in_choice.sse",
    ],
)
@pytest.mark.parametrize("size", [1, 2, 7, 13, 4096])
async def test_sse_parser_is_independent_of_chunk_boundaries(name: str, size: int) -> None:
    whole = await _parse(fixture(name), 1 << 20)
    assert len(whole) > 3
    assert await _parse(fixture(name), size) == whole
    # The same stream with CRLF line endings, a CR and its LF landing in different pieces.
    crlf = fixture(name).replace(b"\n", b"\r\n")
    assert await _parse(crlf, size) == whole


async def _event_bytes(body: bytes, size: int) -> list[bytes]:
    out = []
    async for raw in iter_event_bytes(FakeUpstream(body, size=size)._pieces()):
        assert raw.endswith(b"\n\n") and b"\r" not in raw
        out.append(raw)
    return out


@pytest.mark.parametrize("name", ["openai_stream_tool_calls.sse", "anthropic_stream_thinking.sse"])
@pytest.mark.parametrize("size", [1, 7, 4096])
async def test_unparsed_event_bytes_keep_every_byte_and_event(name: str, size: int) -> None:
    body = fixture(name)
    assert body.endswith(b"\n\n")
    whole = [ev.data for ev in await _parse(body, 1 << 20)]
    for given in (body, body.replace(b"\n", b"\r\n")):
        raws = await _event_bytes(given, size)
        assert b"".join(raws) == body  # passed through as sent, line ends normalised
        assert [d for raw in raws for d in frames_data(raw)] == whole
    tail = b": keep-alive\n\nevent: ping\ndata: {}\n\ndata: [DONE]"
    assert b"".join(await _event_bytes(tail, 3)) == tail + b"\n\n"
    cut = await _event_bytes(b'data: {"a":1}\n\ndata: {"b":', 3)
    assert cut == [b'data: {"a":1}\n\n']  # half an event is never passed on


async def test_sse_parser_keeps_a_final_event_without_its_blank_line() -> None:
    events = await _parse(b": keep-alive\n\nevent: ping\ndata: {}\n\ndata: [DONE]", 3)
    assert events == [SSEEvent("ping", b"{}"), SSEEvent(None, b"[DONE]")]
    events = await _parse(b'data: {"a":1}\n\ndata: {"b":2}\r\n', 3)
    assert events == [SSEEvent(None, b'{"a":1}'), SSEEvent(None, b'{"b":2}')]


async def test_sse_parser_drops_an_event_cut_mid_line() -> None:
    events = await _parse(b'data: {"a":1}\n\ndata: {"b":', 3)
    assert events == [SSEEvent(None, b'{"a":1}')]


# --- same dialect: passthrough --------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "openai_stream_text.sse",
        "openai_stream_tool_calls.sse",
        "deepseek_stream_reasoning.sse",
        "deepseek_stream_cache_hit.sse",
        "kimi_stream_usage_in_choice.sse",
    ],
)
@pytest.mark.parametrize("size", [7, 1 << 20])  # in pieces, and the whole stream at once
async def test_openai_passthrough_is_byte_for_byte(name: str, size: int) -> None:
    call = make_call("openai", wants_usage=True, model=vendor_model(fixture(name)))
    upstream = FakeUpstream(fixture(name), size=size)
    out, r = await relay(call, upstream, "openai")
    assert out == fixture(name)
    assert r.completed and call.status == "ok" and call.error_code is None
    assert upstream.released == 1
    assert call.usage is not None and call.usage.source is UsageSource.UPSTREAM
    assert call.output_text == []  # the vendor's count is known: nothing kept to count
    assert call.first_token_at is not None


@pytest.mark.parametrize("size", [7, 1 << 20])
@pytest.mark.parametrize("public", ["o4", "a-public-name-longer-than-the-vendor-s-id"])
async def test_openai_passthrough_names_the_public_model_in_every_chunk(
    size: int, public: str
) -> None:
    raw = fixture("openai_stream_tool_calls.sse")
    vendor_id = re.search(rb'"model":"([^"]*)"', raw).group(0)  # type: ignore[union-attr]
    call = make_call("openai", wants_usage=True, model=public)
    out, _ = await relay(call, FakeUpstream(raw, size=size), "openai")
    events = [line[6:] for line in out.split(b"\n") if line.startswith(b"data: {")]
    assert len(events) == raw.count(vendor_id) > 1
    assert all(orjson.loads(e)["model"] == public for e in events)
    named = b'"model":' + orjson.dumps(public)
    if len(named) < len(vendor_id):
        # A shorter name is padded with JSON whitespace to the vendor's length, so the
        # stream is rewritten in place (a copy, not a rebuild): the same bytes elsewhere.
        pad = b" " * (len(vendor_id) - len(named))
        assert out == raw.replace(vendor_id, b'"model":' + pad + orjson.dumps(public))
    else:
        assert out == raw.replace(vendor_id, named)


@pytest.mark.parametrize(
    ("name", "usage"),
    [
        ("openai_stream_text.sse", Usage(input_tokens=1200, cached_tokens=1024, output_tokens=3)),
        ("openai_stream_tool_calls.sse", Usage(input_tokens=80, output_tokens=40)),
        (
            "deepseek_stream_reasoning.sse",
            Usage(input_tokens=16, output_tokens=20, reasoning_tokens=12),
        ),
        (
            "deepseek_stream_cache_hit.sse",
            Usage(input_tokens=1100, cached_tokens=1024, output_tokens=7),
        ),
        (
            "kimi_stream_usage_in_choice.sse",
            Usage(input_tokens=39, cached_tokens=32, output_tokens=12),
        ),
    ],
)
async def test_openai_passthrough_records_upstream_usage(name: str, usage: Usage) -> None:
    call = make_call("openai")
    await relay(call, FakeUpstream(fixture(name)), "openai")
    assert call.usage == usage


async def test_keep_alive_comments_before_the_first_token_do_not_start_it() -> None:
    body = fixture("openai_stream_text.sse")
    comment = b": OPENROUTER PROCESSING\n\n"
    call = make_call("openai")
    relay = StreamRelay(
        call,
        FakeUpstream(comment + body, size=len(comment)),
        "openai",
        prompt_tokens_hint=lambda: 0,
        count_usage=count(call),
    )
    chunks = relay.chunks()
    assert await chunks.__anext__() == comment  # passed through as it came
    assert call.first_token_at is None
    rest = b"".join([b async for b in chunks])
    assert call.first_token_at is not None and rest.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("name", ["openai_stream_text.sse", "deepseek_stream_cache_hit.sse"])
@pytest.mark.parametrize("size", [7, 1 << 20])
async def test_usage_only_chunk_is_stripped_unless_the_client_asked(name: str, size: int) -> None:
    call = make_call("openai", wants_usage=False, model=vendor_model(fixture(name)))
    out, _ = await relay(call, FakeUpstream(fixture(name), size=size), "openai")
    assert out == without_usage_chunk(fixture(name))
    assert call.usage is not None and call.usage.input_tokens > 0  # still metered
    chunks = openai_sdk_chunks(out)
    assert all(c.usage is None for c in chunks)


async def test_usage_on_a_chunk_with_choices_is_kept() -> None:
    # DeepSeek puts usage on the finishing chunk: it cannot be dropped without the text.
    name = "deepseek_stream_reasoning.sse"
    call = make_call("openai", model=vendor_model(fixture(name)))
    out, _ = await relay(call, FakeUpstream(fixture(name)), "openai")
    assert out == fixture(name)


def _odd_usage_stream(separators: tuple[str, str] = (",", ":")) -> bytes:
    """An OpenAI stream with usage in odd places: null on every chunk, a mid-stream
    cumulative figure, the final one on the chunk that carries the last text, and
    look-alikes of usage and of the end in the produced text; compact JSON unless
    ``separators`` say otherwise."""

    def chunk(delta: dict[str, Any], usage: Any, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        body = {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
        data = json.dumps({**body, "usage": usage}, separators=separators)
        return b"data: " + data.encode() + b"\n\n"

    def used(out: int) -> dict[str, int]:
        return {"prompt_tokens": 9, "completion_tokens": out, "total_tokens": 9 + out}

    return b"".join(
        [
            chunk({"role": "assistant", "content": ""}, None),
            chunk({"content": 'say "usage": 1 and '}, None),
            chunk({"content": "[DONE]\n, then"}, used(2)),
            chunk({"content": " more"}, None),
            chunk({"content": "."}, used(4), "stop"),
            b"data: [DONE]\n\n",
        ]
    )


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")], ids=["compact", "spaced"])
async def test_usage_in_odd_places_is_found_wherever_the_chunks_split(
    separators: tuple[str, str],
) -> None:
    # Every split of the stream into two network chunks, and byte by byte: the usage
    # event or the end may straddle two chunks, or arrive with the events before them.
    raw = _odd_usage_stream(separators)
    bytewise = [raw[i : i + 1] for i in range(len(raw))]
    for pieces in [[raw[:i], raw[i:]] for i in range(1, len(raw))] + [bytewise]:
        call = make_call("openai", wants_usage=True, model="m")
        upstream = FakeUpstream(b"", size=1)
        upstream._pieces = lambda p=pieces: _replay(p)  # type: ignore[method-assign]
        out, r = await relay(call, upstream, "openai")
        assert out == raw
        assert r.completed and call.status == "ok"
        assert call.usage == Usage(input_tokens=9, output_tokens=4)


async def test_a_long_read_is_relayed_whole_with_its_final_usage() -> None:
    # 2,000 events in one read, usage null on each but the last: the events before the
    # usage chunk leave as they came; the usage is the last one, the end is seen.
    body = b"".join(
        b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
        b'"delta":{"content":"w"},"finish_reason":null}],"usage":null}\n\n'
        for _ in range(2_000)
    )
    final = b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[],'
    final += b'"usage":{"prompt_tokens":3,"completion_tokens":2000,"total_tokens":2003}}\n\n'
    raw = body + final + b"data: [DONE]\n\n"
    call = make_call("openai", wants_usage=True, model="m")
    out, r = await relay(call, FakeUpstream(raw, size=len(raw)), "openai")
    assert out == raw
    assert r.completed and call.status == "ok"
    assert call.usage == Usage(input_tokens=3, output_tokens=2000)


async def test_events_after_the_end_in_its_read_do_not_hide_it() -> None:
    # A keep-alive comment after [DONE] in the same read: the stream still ended (the
    # comment, after the end, is not passed on).
    raw = _odd_usage_stream()
    call = make_call("openai", wants_usage=True, model="m")
    out, r = await relay(call, FakeUpstream(raw + b": keep-alive\n\n", size=10**6), "openai")
    assert out == raw
    assert r.completed and call.status == "ok"


async def _replay(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for p in pieces:
        yield p


async def test_openai_passthrough_output_reads_in_the_sdk() -> None:
    out, _ = await relay(
        make_call("openai", wants_usage=True),
        FakeUpstream(fixture("kimi_stream_usage_in_choice.sse")),
        "openai",
    )
    chunks = openai_sdk_chunks(out)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "你好，李雷！1+1等于2。"


@pytest.mark.parametrize(
    ("name", "usage"),
    [
        (
            "anthropic_stream_text.sse",
            Usage(input_tokens=1025, cached_tokens=1000, output_tokens=15),
        ),
        # Two cumulative message_delta events: the last wins, nothing is added up.
        ("anthropic_stream_thinking.sse", Usage(input_tokens=120, output_tokens=160)),
        ("anthropic_stream_tool_use.sse", Usage(input_tokens=472, output_tokens=89)),
    ],
)
async def test_anthropic_passthrough_is_byte_for_byte(name: str, usage: Usage) -> None:
    call = make_call("anthropic", model=vendor_model(fixture(name)))
    upstream = FakeUpstream(fixture(name))
    out, r = await relay(call, upstream, "anthropic")
    assert out == fixture(name)
    assert r.completed and call.status == "ok"
    assert call.usage == usage
    assert upstream.released == 1


async def test_anthropic_passthrough_null_usage_fields_keep_message_start_values() -> None:
    # Anthropic-compatible vendors may send null for fields they do not update.
    raw = fixture("anthropic_stream_text.sse").replace(
        b'"usage": {"output_tokens": 15}',
        b'"usage": {"input_tokens": null, "cache_read_input_tokens": null, "output_tokens": 15}',
    )
    assert raw != fixture("anthropic_stream_text.sse")
    call = make_call("anthropic")
    await relay(call, FakeUpstream(raw), "anthropic")
    assert call.usage == Usage(input_tokens=1025, cached_tokens=1000, output_tokens=15)


async def test_anthropic_error_event_is_relayed_once() -> None:
    call = make_call("anthropic", model=vendor_model(fixture("anthropic_stream_error.sse")))
    out, _ = await relay(call, FakeUpstream(fixture("anthropic_stream_error.sse")), "anthropic")
    assert out == fixture("anthropic_stream_error.sse")
    assert out.count(b"event: error") == 1
    assert call.status == "upstream_error"
    # message_start's output count is a placeholder: the call is counted locally instead.
    assert call.usage is None
    assert call.output_text == ["Partial"]


@pytest.mark.parametrize(
    ("client", "upstream_dialect", "name"),
    [
        ("openai", "openai", "openai_stream_tool_calls.sse"),
        ("openai", "anthropic", "anthropic_stream_tool_use.sse"),
        ("anthropic", "anthropic", "anthropic_stream_thinking.sse"),
        ("anthropic", "openai", "openai_stream_tool_calls.sse"),
    ],
)
async def test_events_arriving_together_leave_in_one_write(
    client: str, upstream_dialect: str, name: str
) -> None:
    body = fixture(name)
    call = make_call(client, wants_usage=True)
    r = StreamRelay(
        call,
        FakeUpstream(body, size=len(body)),
        upstream_dialect,
        prompt_tokens_hint=lambda: 42,
        count_usage=count(call),
    )
    writes = [b async for b in r.chunks()]
    assert len(writes) == 1 and len(blocks(writes[0])) > 3
    # Arriving in small pieces changes the number of writes, never the bytes.
    piecewise, _ = await relay(
        make_call(client, wants_usage=True), FakeUpstream(body), upstream_dialect
    )
    assert _without_ids(piecewise) == _without_ids(writes[0])
    assert r.completed and call.usage is not None


def _without_ids(raw: bytes) -> bytes:
    """A translated stream with the per-call ids blanked (each call gets its own)."""
    return re.sub(rb'"(id|created)":("[^"]*"|\d+)', b'"id":""', raw)


# --- cut-off streams ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "upstream_dialect", "name"),
    [
        ("openai", "openai", "openai_stream_text.sse"),
        ("openai", "anthropic", "anthropic_stream_tool_use.sse"),
        ("anthropic", "anthropic", "anthropic_stream_thinking.sse"),
        ("anthropic", "openai", "openai_stream_tool_calls.sse"),
    ],
)
@pytest.mark.parametrize("how", ["eof", "broken", "stalled"])
async def test_cut_stream_ends_with_an_in_band_error_and_is_counted(
    client: str, upstream_dialect: str, name: str, how: str
) -> None:
    errors: dict[str, BaseException | None] = {
        "eof": None,
        "broken": TransportError("the connection closed before the answer was whole"),
        "stalled": TimeoutError(),
    }
    call = make_call(client, wants_usage=True)
    upstream = FakeUpstream(cut(fixture(name), 0.6), error=errors[how])
    out, r = await relay(call, upstream, upstream_dialect)
    assert not r.completed
    assert call.status == "upstream_cut"
    assert call.error_code == ("gateway_timeout" if how == "stalled" else "bad_gateway")
    assert upstream.released == 1
    last = blocks(out)[-1]
    if client == "openai":
        assert last.startswith(b"data: ")
        err = json.loads(last[6:])["error"]
        assert err["code"] == call.error_code and err["type"] == "upstream_error"
        assert b"[DONE]" not in out
        with pytest.raises(openai.APIError):
            openai_sdk_chunks(out)
    else:
        name_line, data_line = last.split(b"\n")
        assert name_line == b"event: error"
        err = json.loads(data_line[6:])
        assert err["type"] == "error"
        assert err["error"]["type"] == ("timeout_error" if how == "stalled" else "api_error")
        assert b"message_stop" not in out
        with pytest.raises(anthropic.APIError):
            anthropic_sdk_message(out)
    # No usage arrived: what was produced so far is kept and counted locally.
    assert call.usage is None
    produced = "".join(call.output_text)
    assert produced
    counter = TokenCounter()
    usage = counted_usage(counter, call)
    assert usage.source is UsageSource.COUNTED
    assert usage.input_tokens == count_prompt(counter, call) > 0
    assert usage.output_tokens == counter.count_text(call.model, produced) > 0


async def test_cut_after_usage_keeps_the_upstream_count() -> None:
    # Usage arrived, only [DONE] is missing: the vendor's count stands.
    raw = fixture("openai_stream_text.sse").replace(b"data: [DONE]\n\n", b"")
    call = make_call("openai", wants_usage=True)
    await relay(call, FakeUpstream(raw), "openai")
    assert call.status == "upstream_cut"
    assert call.usage == Usage(input_tokens=1200, cached_tokens=1024, output_tokens=3)
    assert call.output_text == []


async def test_cut_anthropic_stream_after_message_start_is_not_billed_from_it() -> None:
    # message_start says output_tokens 1: not a usage report to bill a cut stream from.
    raw = fixture("anthropic_stream_text.sse")
    raw = raw[: raw.index(b"event: message_delta")]
    call = make_call("openai", wants_usage=True)
    out, _ = await relay(call, FakeUpstream(raw), "anthropic")
    assert call.status == "upstream_cut"
    assert call.usage is None
    assert call.output_text == ["Hello!"]
    assert counted_usage(TokenCounter(), call).source is UsageSource.COUNTED
    assert out.count(b'"error"') == 1


async def test_client_going_away_releases_upstream_and_keeps_text() -> None:
    call = make_call("openai")
    upstream = FakeUpstream(fixture("openai_stream_text.sse"))
    r = StreamRelay(call, upstream, "openai", prompt_tokens_hint=lambda: 0, count_usage=count(call))
    gen = r.chunks()
    got = [await gen.__anext__() for _ in range(3)]
    assert len(got) == 3
    await gen.aclose()
    assert upstream.released == 1
    assert call.usage is None
    # Three chunks reached the client: the role chunk, "Hello" and " there!".
    assert "".join(call.output_text) == "Hello there!"


# --- translated streams ---------------------------------------------------------------------


async def test_openai_upstream_to_anthropic_client() -> None:
    call = make_call("anthropic")
    out, r = await relay(call, FakeUpstream(fixture("openai_stream_tool_calls.sse")), "openai")
    assert r.completed and call.status == "ok"
    assert call.usage == Usage(input_tokens=80, output_tokens=40)
    assert call.usage.source is UsageSource.UPSTREAM
    msg = anthropic_sdk_message(out)
    assert [(b.type, b.input) for b in msg.content] == [
        ("tool_use", {"city": "Paris"}),
        ("tool_use", {"city": "Tokyo"}),
    ]
    assert msg.stop_reason == "tool_use"
    assert msg.id == "msg_" + call.request_id[4:]
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (80, 40)


async def test_kimi_upstream_to_anthropic_client_uses_usage_in_choice() -> None:
    call = make_call("anthropic")
    out, _ = await relay(call, FakeUpstream(fixture("kimi_stream_usage_in_choice.sse")), "openai")
    assert call.usage == Usage(input_tokens=39, cached_tokens=32, output_tokens=12)
    msg = anthropic_sdk_message(out)
    assert msg.content[0].text == "你好，李雷！1+1等于2。"
    assert (msg.usage.cache_read_input_tokens, msg.usage.output_tokens) == (32, 12)


def silent_anthropic_stream() -> bytes:
    """Anthropic's text stream from a vendor that reports no usage at all."""
    out = []
    for block in fixture("anthropic_stream_text.sse").split(b"\n\n"):
        head, _, data = block.partition(b"\ndata: ")
        if data:
            obj = json.loads(data)
            obj.pop("usage", None)
            if isinstance(obj.get("message"), dict):
                obj["message"].pop("usage", None)
            block = head + b"\ndata: " + json.dumps(obj).encode()
        out.append(block)
    return b"\n\n".join(out)


@pytest.mark.parametrize("size", [7, 1 << 20])
async def test_silent_openai_upstream_to_anthropic_client_is_counted_before_its_end(
    size: int,
) -> None:
    call = make_call("anthropic")
    r = StreamRelay(
        call,
        FakeUpstream(fixture("openai_stream_no_usage.sse"), size=size),
        "openai",
        prompt_tokens_hint=lambda: count_prompt(COUNTER, call),
        count_usage=count(call),
    )
    writes = []
    async for w in r.chunks():
        writes.append(w)
        if r.completed:
            # Settlement runs as the end leaves: the usage must be known by then.
            assert call.usage == counted_usage(COUNTER, call)
    out = b"".join(writes)
    assert r.completed and call.status == "ok"
    assert call.usage is not None and call.usage.source is UsageSource.COUNTED
    assert call.usage.output_tokens == COUNTER.count_text("gpt-4o-mini", "Once upon a time") > 0
    msg = anthropic_sdk_message(out)
    assert msg.stop_reason == "max_tokens"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (
        call.usage.input_tokens,
        call.usage.output_tokens,
    )


@pytest.mark.parametrize("wants_usage", [True, False])
@pytest.mark.parametrize("size", [7, 1 << 20])
async def test_silent_openai_passthrough_is_counted_before_done_and_sends_usage_if_asked(
    wants_usage: bool, size: int
) -> None:
    raw = fixture("openai_stream_no_usage.sse")
    call = make_call("openai", wants_usage=wants_usage, model=vendor_model(raw))
    r = StreamRelay(
        call,
        FakeUpstream(raw, size=size),
        "openai",
        prompt_tokens_hint=lambda: 0,
        count_usage=count(call),
    )
    r.cost = lambda c: "0.000123"
    writes = []
    async for w in r.chunks():
        if r.completed:
            assert call.usage is not None and call.usage.output_tokens > 0
        writes.append(w)
    out = b"".join(writes)
    assert out.endswith(b"data: [DONE]\n\n")
    assert call.usage is not None and call.usage.source is UsageSource.COUNTED
    assert call.usage.output_tokens == COUNTER.count_text("gpt-4o-mini", "Once upon a time")
    chunks = openai_sdk_chunks(out)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Once upon a time"
    usage_chunks = [c for c in chunks if c.usage is not None]
    if not wants_usage:
        assert usage_chunks == [] and out == fixture("openai_stream_no_usage.sse")
        return
    [u] = usage_chunks
    assert u is chunks[-1] and u.choices == []
    assert (u.id, u.model, u.created) == ("chatcmpl-nu", "some-vendor-model", 1723000001)
    assert u.usage is not None
    assert (u.usage.prompt_tokens, u.usage.completion_tokens) == (
        call.usage.input_tokens,
        call.usage.output_tokens,
    )
    assert u.usage.model_extra["cost"] == 0.000123  # type: ignore[index]


@pytest.mark.parametrize("size", [7, 1 << 20])
async def test_silent_anthropic_passthrough_tells_the_client_the_counted_output(
    size: int,
) -> None:
    call = make_call("anthropic")
    out, r = await relay(call, FakeUpstream(silent_anthropic_stream(), size=size), "anthropic")
    assert r.completed and call.usage is not None
    assert call.usage.source is UsageSource.COUNTED
    assert call.usage.output_tokens == COUNTER.count_text("claude-sonnet-4-5", "Hello!") > 0
    msg = anthropic_sdk_message(out)
    assert msg.content[0].text == "Hello!"
    assert msg.usage.output_tokens == call.usage.output_tokens
    assert msg.usage.input_tokens == call.usage.input_tokens > 0


async def test_anthropic_passthrough_without_an_output_count_keeps_the_vendors_input() -> None:
    # message_start reports input (with its placeholder output of 1); message_delta nothing.
    body = fixture("anthropic_stream_text.sse").replace(b', "usage": {"output_tokens": 15}', b"")
    call = make_call("anthropic")
    out, _ = await relay(call, FakeUpstream(body), "anthropic")
    assert call.usage is not None and call.usage.source is UsageSource.COUNTED
    assert (call.usage.input_tokens, call.usage.cached_tokens) == (1025, 1000)
    assert call.usage.output_tokens == COUNTER.count_text("claude-sonnet-4-5", "Hello!")
    msg = anthropic_sdk_message(out)
    assert msg.usage.output_tokens == call.usage.output_tokens


async def test_an_anthropic_vendor_reporting_only_output_is_billed_our_prompt_count() -> None:
    body = fixture("anthropic_stream_text.sse")
    start = next(b for b in body.split(b"\n\n") if b.startswith(b"event: message_start"))
    head, _, data = start.partition(b"\ndata: ")
    obj = json.loads(data)
    del obj["message"]["usage"]
    body = body.replace(start, head + b"\ndata: " + json.dumps(obj).encode())
    call = make_call("anthropic")
    r = StreamRelay(
        call,
        FakeUpstream(body),
        "anthropic",
        prompt_tokens_hint=lambda: count_prompt(COUNTER, call),
        count_usage=count(call),
    )
    out = b"".join([b async for b in r.chunks()])
    assert call.usage is not None and call.usage.output_tokens == 15  # the vendor's
    assert call.usage.input_tokens == count_prompt(COUNTER, call) > 0  # not free
    msg = anthropic_sdk_message(out)
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (call.usage.input_tokens, 15)


async def test_a_second_message_delta_without_usage_counts_the_text_once() -> None:
    body = silent_anthropic_stream()
    delta = next(b for b in body.split(b"\n\n") if b.startswith(b"event: message_delta"))
    body = body.replace(delta, delta + b"\n\n" + delta)
    call = make_call("anthropic")
    out, _ = await relay(call, FakeUpstream(body), "anthropic")
    assert call.usage is not None
    assert call.usage.output_tokens == COUNTER.count_text("claude-sonnet-4-5", "Hello!")
    assert anthropic_sdk_message(out).usage.output_tokens == call.usage.output_tokens


@pytest.mark.parametrize("wants_usage", [True, False])
async def test_silent_anthropic_upstream_to_openai_client_is_counted(wants_usage: bool) -> None:
    call = make_call("openai", wants_usage=wants_usage)
    out, r = await relay(call, FakeUpstream(silent_anthropic_stream()), "anthropic")
    assert r.completed and out.endswith(b"data: [DONE]\n\n")
    assert call.usage is not None and call.usage.source is UsageSource.COUNTED
    assert call.usage.output_tokens == COUNTER.count_text("gpt-4o-mini", "Hello!") > 0
    usage_chunks = [c for c in openai_sdk_chunks(out) if c.usage is not None]
    if wants_usage:
        [u] = usage_chunks
        assert u.usage is not None and u.usage.completion_tokens == call.usage.output_tokens
    else:
        assert usage_chunks == []


async def test_openai_upstream_error_chunk_to_anthropic_client() -> None:
    raw = fixture("openai_stream_no_usage.sse").replace(
        b"data: [DONE]\n\n",
        b'data: {"error":{"message":"Internal error","type":"server_error"}}\n\n',
    )
    call = make_call("anthropic")
    out, _ = await relay(call, FakeUpstream(raw), "openai")
    assert call.status == "upstream_error"
    assert out.count(b"event: error") == 1
    assert b"message_stop" not in out
    with pytest.raises(anthropic.APIError, match="Internal error"):
        anthropic_sdk_message(out)


@pytest.mark.parametrize("wants_usage", [True, False])
async def test_anthropic_upstream_to_openai_client(wants_usage: bool) -> None:
    call = make_call("openai", wants_usage=wants_usage)
    out, r = await relay(call, FakeUpstream(fixture("anthropic_stream_thinking.sse")), "anthropic")
    assert r.completed and call.status == "ok"
    assert out.endswith(b"data: [DONE]\n\n")
    assert call.usage == Usage(input_tokens=120, output_tokens=160)
    chunks = openai_sdk_chunks(out)
    usage_chunks = [c for c in chunks if c.usage is not None]
    if wants_usage:
        [u] = usage_chunks
        assert (u.usage.prompt_tokens, u.usage.completion_tokens) == (120, 160)
        assert u.choices == []
    else:
        assert usage_chunks == []
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "27 * 453 = 12,231"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


async def test_anthropic_upstream_error_to_openai_client_once() -> None:
    call = make_call("openai")
    out, _ = await relay(call, FakeUpstream(fixture("anthropic_stream_error.sse")), "anthropic")
    assert call.status == "upstream_error"
    assert out.count(b'"error"') == 1
    last = json.loads(blocks(out)[-1][6:])
    assert last["error"]["message"] == "Overloaded"
    assert last["error"]["type"] == "overloaded_error"
    with pytest.raises(openai.APIError, match="Overloaded"):
        openai_sdk_chunks(out)
    assert call.usage is None and call.output_text == ["Partial"]


# --- metering --------------------------------------------------------------------------------


def test_openai_chunk_text_counts_reasoning_once_and_tool_calls() -> None:
    both = {"choices": [{"delta": {"reasoning_content": "think", "reasoning": "think"}}]}
    assert openai_chunk_text(json.dumps(both).encode()) == "think"
    only = {"choices": [{"delta": {"reasoning": "hmm", "content": "ok"}}]}
    assert openai_chunk_text(json.dumps(only).encode()) == "hmmok"
    call = {"index": 0, "function": {"name": "get_weather", "arguments": '{"city":'}}
    tool = {"choices": [{"delta": {"tool_calls": [call]}}]}
    assert openai_chunk_text(json.dumps(tool).encode()) == 'get_weather{"city":'
    assert openai_chunk_text(b"not json") == ""
    assert openai_chunk_text(b'{"choices":[],"usage":{"prompt_tokens":1}}') == ""


def test_anthropic_delta_text() -> None:
    events = [
        json.dumps({"type": "content_block_delta", "index": 0, "delta": d}).encode()
        for d in (
            {"type": "text_delta", "text": "Hi"},
            {"type": "thinking_delta", "thinking": "hmm"},
            {"type": "input_json_delta", "partial_json": '{"a":'},
            {"type": "signature_delta", "signature": "EqQB"},
        )
    ]
    assert [anthropic_delta_text(e) for e in events] == ["Hi", "hmm", '{"a":', ""]
    assert anthropic_delta_text(b"{broken") == ""


def test_counted_usage_without_output() -> None:
    call = make_call("openai")
    usage = counted_usage(TokenCounter(), call)
    assert usage.source is UsageSource.COUNTED
    assert usage.output_tokens == 0 and usage.input_tokens > 0


async def test_anthropic_passthrough_names_the_public_model() -> None:
    raw = fixture("anthropic_stream_text.sse")
    call = make_call("anthropic", model="our-name")
    out, _ = await relay(call, FakeUpstream(raw), "anthropic")
    assert vendor_model(out) == "our-name" and vendor_model(raw) != "our-name"
    assert call.usage == Usage(input_tokens=1025, cached_tokens=1000, output_tokens=15)
    # Only message_start names the model; every other event leaves as it came.
    assert out.split(b"\n\n")[1:] == raw.split(b"\n\n")[1:]
