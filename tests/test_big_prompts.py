"""A large prompt at relay cost: no pass over its bytes beyond parsing it, and a hold
bound that is its UTF-8 length without copying it."""

from __future__ import annotations

import orjson

from tests.conftest import Gateway
from tokenomy.core.call import Call
from tokenomy.gateway.validation import MAX_DEPTH, too_deep

PROMPT = "def f(x): return [x, {x: [x]}]  # brackets in the text are not nesting\n" * 2000


def _body(content: object, **extra: object) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": content}], **extra})


def test_a_large_body_full_of_brackets_in_its_text_is_not_too_deep() -> None:
    raw = _body(PROMPT)
    assert len(raw) > 100_000 and raw.count(b"[") > MAX_DEPTH
    assert not too_deep(raw, orjson.loads(raw))


def test_a_large_body_nested_past_the_limit_is_too_deep() -> None:
    deep: object = "x"
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    raw = _body(PROMPT, metadata={"a": deep})
    assert too_deep(raw, orjson.loads(raw))
    ok: object = "x"
    for _ in range(MAX_DEPTH - 4):  # the body's own levels count too
        ok = [ok]
    raw = _body(PROMPT, metadata=ok)
    assert not too_deep(raw, orjson.loads(raw))


def test_the_byte_bound_is_the_utf8_length_of_ascii_and_of_other_text(gateway: Gateway) -> None:
    pricer = gateway.services.ledger_stage.pricer
    key = gateway.services.key_cache.lookup(gateway.key)
    bounds = {}
    for text in ("a" * 50_000, "é" * 50_000, "日本" * 25_000, "😀" * 50_000):
        body = {"model": "ds-reasoner", "messages": [{"role": "user", "content": text}]}
        call = Call("chat", "openai", body, "ds-reasoner", False, key)  # type: ignore[arg-type]
        parts = {
            "model": "ds-reasoner",
            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        }
        as_parts = Call("chat", "openai", parts, "ds-reasoner", False, key)  # type: ignore[arg-type]
        bounds[text[0]] = pricer.prompt_bound(call) - len(text.encode())
        assert pricer.prompt_bound(as_parts) - len(text.encode()) == bounds[text[0]]
    # The same overhead whatever the script: the text's bytes are counted exactly.
    assert len(set(bounds.values())) == 1, bounds
