"""The model's side of the simulation: from what a request asks to the answer it gets."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from tokenomy.sim import text
from tokenomy.sim.counting import Counter
from tokenomy.sim.settings import SimSettings
from tokenomy.sim.toolcalls import sample_arguments, sample_value

_JSON_HEAD = '{"answer": "' + text.MARKER
_JSON_TAIL = '"}'


@dataclass(frozen=True, slots=True)
class Ask:
    """What one request asks for, in dialect-neutral terms; hashable, so answers can be memoised.

    ``prompt`` is a digest of everything the model would read; schemas are kept as their JSON
    bytes. ``lead_text`` makes a tool call come after a short sentence, as Claude does.
    """

    model: str
    prompt: bytes
    max_tokens: int | None = None
    stops: tuple[str, ...] = ()
    tool_name: str | None = None
    tool_schema: bytes = b"{}"
    json_object: bool = False
    json_schema: bytes | None = None
    reasoning: bool = False
    lead_text: bool = False


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call; ``id`` is a dialect-neutral suffix ("call_" or "toolu_" goes before it)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Answer:
    """A finished answer. ``finish`` is OpenAI's vocabulary: "stop", "length" or "tool_calls".

    ``output_tokens`` is what the counter says of the produced text (reasoning, content, and a
    tool call's name plus arguments), so a client counting what it received agrees with it.
    """

    text: str
    reasoning: str
    tool_call: ToolCall | None
    finish: str
    stop_sequence: str | None
    output_tokens: int
    reasoning_tokens: int


def make_answer(settings: SimSettings, counter: Counter, ask: Ask, index: int) -> Answer:
    """The deterministic answer number ``index`` (for ``n`` > 1) to ``ask``.

    Text depends only on (seed, model, prompt, index): ``max_tokens`` and stop sequences cut
    the same text shorter, as they would a real model's.
    """
    model = ask.model

    def count(s: str) -> int:
        return counter.count_text(model, s)

    seed = text.seed_for(settings.seed, model, ask.prompt, index)
    default = settings.default_output_tokens
    capped = ask.max_tokens is not None and ask.max_tokens <= default
    cap = min(ask.max_tokens, default) if ask.max_tokens is not None else default

    reasoning, r_tokens = "", 0
    if ask.reasoning and cap >= 2:
        r_cap = cap // 2
        reasoning, r_tokens = text.fit(
            count, text.MARKER, text.words(seed ^ 1, r_cap + 8), "", r_cap
        )
        cap -= r_tokens

    if ask.tool_name is not None:
        return _tool_answer(ask, seed, count, reasoning, r_tokens)

    if ask.json_schema is not None:
        content = orjson.dumps(sample_value(orjson.loads(ask.json_schema), 0)).decode()
        c_tokens = count(content)
        return Answer(content, reasoning, None, "stop", None, r_tokens + c_tokens, r_tokens)

    head, tail = (_JSON_HEAD, _JSON_TAIL) if ask.json_object else (text.MARKER, "")
    content, c_tokens = text.fit(count, head, text.words(seed, cap + 8), tail, cap)
    content, matched = text.cut_at_stop(content, ask.stops)
    if matched is not None:
        c_tokens = count(content)
    finish = "length" if capped and matched is None else "stop"
    return Answer(content, reasoning, None, finish, matched, r_tokens + c_tokens, r_tokens)


def _tool_answer(ask: Ask, seed: int, count: text.Count, reasoning: str, r_tokens: int) -> Answer:
    name = ask.tool_name or ""
    arguments = orjson.dumps(sample_arguments(orjson.loads(ask.tool_schema))).decode()
    lead = f"{text.MARKER} Calling {name}." if ask.lead_text else ""
    tokens = r_tokens + count(name) + count(arguments) + (count(lead) if lead else 0)
    call = ToolCall(f"sim{seed:016x}", name, arguments)
    return Answer(lead, reasoning, call, "tool_calls", None, tokens, r_tokens)
