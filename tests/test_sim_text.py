"""The simulator's pure parts: text, answers, tool arguments, fault parsing, settings."""

from __future__ import annotations

import random

import orjson
import pytest

from tokenomy.sim import text
from tokenomy.sim.answer import Ask, make_answer
from tokenomy.sim.counting import EstimateCounter, default_counter
from tokenomy.sim.faults import FaultScript, named_fault, parse_fault, random_fault
from tokenomy.sim.lru import LRU
from tokenomy.sim.settings import SimSettings
from tokenomy.sim.toolcalls import ToolChoice, ToolSpec, choose_tool, sample_arguments

EST = EstimateCounter()
SETTINGS = SimSettings()


class WordCounter:
    """A tokenizer stand-in that is not additive-friendly: one token per word, plus one."""

    def count_text(self, model: str, s: str) -> int:
        return len(s.split()) + 1

    def count_messages(self, model: str, messages: object, tools: object = None) -> int:
        return 7

    def count_anthropic_request(self, model: str, body: object) -> int:
        return 7


def count(s: str) -> int:
    return EST.count_text("m", s)


def test_words_are_deterministic_and_seed_dependent() -> None:
    assert text.words(1, 50) == text.words(1, 50)
    assert text.words(1, 50) != text.words(2, 50)
    assert text.seed_for(0, "m", b"p") == text.seed_for(0, "m", b"p") != text.seed_for(1, "m")


@pytest.mark.parametrize("cap", [1, 2, 3, 5, 17, 64, 200])
def test_fit_stays_within_the_cap_and_reports_the_counters_count(cap: int) -> None:
    pieces = text.words(7, cap + 8)
    out, n = text.fit(count, text.MARKER, pieces, "", cap)
    assert n == count(out) <= cap
    if cap >= count(text.MARKER):
        assert out.startswith(text.MARKER)
        # The next word would not have fitted: the budget is used, not wasted.
        k = len(text.split_pieces(out)) - 1
        if k < len(pieces):
            assert count(text.MARKER + "".join(pieces[: k + 1])) > cap


def test_shorter_caps_give_prefixes_of_the_same_text() -> None:
    pieces = text.words(3, 80)
    long, _ = text.fit(count, text.MARKER, pieces, "", 60)
    short, _ = text.fit(count, text.MARKER, pieces, "", 20)
    assert long.startswith(short) and len(short) < len(long)


def test_cut_at_stop_takes_the_earliest_match() -> None:
    assert text.cut_at_stop("a b c d", ["d", " c"]) == ("a b", " c")
    assert text.cut_at_stop("a b", ["x", ""]) == ("a b", None)


def test_split_pieces_rejoin_exactly() -> None:
    s = "[simulated] one two.  Three "
    assert "".join(text.split_pieces(s)) == s


def _ask(**kw: object) -> Ask:
    return Ask(model="m", prompt=b"prompt", **kw)  # type: ignore[arg-type]


def test_answers_are_deterministic_and_marked() -> None:
    a = make_answer(SETTINGS, EST, _ask(), 0)
    assert a == make_answer(SETTINGS, EST, _ask(), 0)
    assert a.text.startswith("[simulated] ")
    assert a.finish == "stop" and a.output_tokens == count(a.text)
    assert make_answer(SETTINGS, EST, _ask(), 1).text != a.text
    assert make_answer(SimSettings(seed=5), EST, _ask(), 0).text != a.text


def test_max_tokens_caps_output_and_finishes_with_length() -> None:
    a = make_answer(SETTINGS, EST, _ask(max_tokens=10), 0)
    assert a.finish == "length" and a.output_tokens == count(a.text) <= 10
    full = make_answer(SETTINGS, EST, _ask(), 0)
    assert full.text.startswith(a.text)
    assert full.output_tokens <= SETTINGS.default_output_tokens


def test_usage_follows_the_counter_passed_in() -> None:
    wc = WordCounter()
    a = make_answer(SETTINGS, wc, _ask(max_tokens=12), 0)
    assert a.output_tokens == wc.count_text("m", a.text) <= 12


def test_stop_sequence_truncates() -> None:
    full = make_answer(SETTINGS, EST, _ask(), 0).text
    stop = full.split()[5]
    a = make_answer(SETTINGS, EST, _ask(stops=(stop,)), 0)
    assert a.text == full[: full.index(stop)] and a.stop_sequence == stop
    assert a.finish == "stop" and a.output_tokens == count(a.text)


def test_json_modes_answer_valid_json() -> None:
    a = make_answer(SETTINGS, EST, _ask(json_object=True), 0)
    assert orjson.loads(a.text)["answer"].startswith("[simulated]")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    b = make_answer(SETTINGS, EST, _ask(json_schema=orjson.dumps(schema)), 0)
    assert orjson.loads(b.text) == {"n": 1}


def test_reasoning_counts_toward_output() -> None:
    a = make_answer(SETTINGS, EST, _ask(reasoning=True, max_tokens=40), 0)
    assert a.reasoning.startswith("[simulated]") and a.text.startswith("[simulated]")
    assert a.output_tokens == count(a.reasoning) + count(a.text) <= 40
    assert a.reasoning_tokens == count(a.reasoning)


def test_tool_answer_has_schema_valid_arguments() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["c", "f"]},
            "days": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "number"}},
            "opt": {"type": "boolean"},
        },
        "required": ["city", "unit", "days", "tags"],
    }
    a = make_answer(
        SETTINGS, EST, _ask(tool_name="get_weather", tool_schema=orjson.dumps(schema)), 0
    )
    assert a.tool_call is not None and a.finish == "tool_calls"
    assert orjson.loads(a.tool_call.arguments) == {
        "city": "example",
        "unit": "c",
        "days": 1,
        "tags": [1],
    }
    assert a.output_tokens == count("get_weather") + count(a.tool_call.arguments)


def test_sample_arguments_without_required_fills_the_first_property() -> None:
    assert sample_arguments({"properties": {"q": {"type": "string"}, "k": {}}}) == {"q": "example"}
    assert sample_arguments({}) == {}


def test_choose_tool() -> None:
    tools = [ToolSpec("search", {}), ToolSpec("get_weather", {})]
    assert choose_tool(tools, ToolChoice(), "hello") is None
    assert choose_tool(tools, ToolChoice(), "What is the weather?") == tools[1]
    assert choose_tool(tools, ToolChoice(mode="none"), "weather") is None
    assert choose_tool(tools, ToolChoice(mode="required"), "x") == tools[0]
    assert choose_tool(tools, ToolChoice(mode="required", name="get_weather"), "x") == tools[1]
    assert choose_tool([], ToolChoice(mode="required"), "weather") is None


def test_fault_tokens() -> None:
    assert parse_fault("429", SETTINGS).status == 429
    assert parse_fault("disconnect:5", SETTINGS).after_chunks == 5
    assert parse_fault("disconnect", SETTINGS).after_chunks == SETTINGS.disconnect_after_chunks
    assert parse_fault("timeout", SETTINGS).kind == "timeout"
    assert parse_fault("slow", SETTINGS).kind == "slow"
    for bad in ("nope", "200", "disconnect:x"):
        with pytest.raises(ValueError):
            parse_fault(bad, SETTINGS)


def test_fault_names() -> None:
    def kind(model: str) -> tuple[str, int] | None:
        f = named_fault(model, SETTINGS)
        return None if f is None else (f.kind, f.status or f.after_chunks)

    assert kind("sim-429") == ("status", 429)
    assert kind("acme/sim-fail-503") == ("status", 503)
    assert kind("sim-timeout") == ("timeout", 0)
    assert kind("sim-slow") == ("slow", 0)
    assert kind("sim-disconnect-7") == ("disconnect", 7)
    assert kind("sim-disconnect") == ("disconnect", 3)
    for plain in ("sim-gpt", "gpt-4o", "sim-128k", "sim-slowpoke"):
        assert kind(plain) is None


def test_random_faults_replay_with_the_seed() -> None:
    s = SimSettings(seed=9, error_rate=0.3, rate_limit_rate=0.3)

    def run() -> list[object]:
        rng = random.Random(s.seed)
        return [random_fault(rng, s) for _ in range(40)]

    first = run()
    assert first == run()
    kinds = {f.status if f else None for f in first}
    assert kinds == {None, 429, 500}


def test_script_prefers_the_models_own_queue() -> None:
    script = FaultScript()
    script.push("*", [parse_fault("500", SETTINGS)])
    script.push("a", [parse_fault("429", SETTINGS)])
    assert script.pop("a").status == 429  # type: ignore[union-attr]
    assert script.pop("a").status == 500  # type: ignore[union-attr]
    assert script.pop("a") is None and script.pending() == {}


def test_settings_validate_and_match_globs() -> None:
    s = SimSettings(usage_styles={"deepseek-*": "deepseek", "*-inline": "inline"})
    assert s.usage_style("deepseek-chat") == "deepseek"
    assert s.usage_style("x-inline") == "inline"
    assert s.usage_style("gpt") == "openai"
    with pytest.raises(ValueError):
        SimSettings(usage_styles={"*": "bogus"})
    with pytest.raises(ValueError):
        SimSettings(error_rate=0.7, rate_limit_rate=0.7)


def test_default_counter_has_the_three_methods() -> None:
    c = default_counter()
    assert c.count_text("m", "hello world") > 0
    assert c.count_messages("m", [{"role": "user", "content": "hi"}]) > 0
    assert c.count_anthropic_request("m", {"messages": [{"role": "user", "content": "hi"}]}) > 0


def test_lru_is_bounded() -> None:
    lru: LRU[int, int] = LRU(2)
    lru.put(1, 1)
    lru.put(2, 2)
    assert lru.get(1) == 1
    lru.put(3, 3)
    assert lru.get(2) is None and lru.get(1) == 1 and len(lru) == 2
