"""The JSON bytes of an upstream request: the same bytes, without orjson's spare room."""

from __future__ import annotations

import tracemalloc

import orjson

from tokenomy.providers.http import COMPACT_AT, wire_body


def _held(body: object) -> tuple[bytes, int]:
    """The wire bytes of ``body`` and the memory they keep allocated."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        data = wire_body(body)
        return data, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_a_large_prompt_body_holds_no_more_than_its_length() -> None:
    # A ~100K-token prompt: orjson alone keeps several times its length reserved.
    body = {"model": "m", "messages": [{"role": "user", "content": "word " * 80_000}]}
    data, held = _held(body)
    assert data == orjson.dumps(body)
    assert len(data) > 400_000
    assert held < len(data) * 1.1


def test_a_small_body_is_the_same_bytes() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    assert wire_body(body) == orjson.dumps(body)
    assert len(wire_body(body)) < COMPACT_AT
