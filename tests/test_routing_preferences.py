"""OpenRouter-style provider preferences: each field changes the choice as documented."""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal as D
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenomy.core.errors import InvalidRequest
from tokenomy.routing.health import BreakerState, HealthSnapshot, Percentiles
from tokenomy.routing.preferences import (
    Candidate,
    Needs,
    NoHealth,
    Preferences,
    parse_preferences,
    rank,
    request_parameters,
    split_model_suffix,
)

QWEN = Candidate(
    "qwen/qwen3.5", "qwen", D("0.11"), D("0.44"), frozenset({"tools", "json", "stream"}), 131072
)
MINIMAX = Candidate(
    "minimax/m2.5", "minimax", D("0.30"), D("1.10"), frozenset({"tools", "stream"}), 204800
)
GLM = Candidate("zhipu/glm-5", "zhipu", D("0.30"), D("2.55"), frozenset({"json", "stream"}), 32768)
OPUS = Candidate(
    "anthropic/opus",
    "anthropic",
    D("5"),
    D("25"),
    frozenset({"tools", "json", "vision", "stream"}),
    200000,
)
LOCAL = Candidate("local/llm", "local", None, None, frozenset({"tools", "json", "stream"}), 8192)
ALL = [OPUS, GLM, LOCAL, MINIMAX, QWEN]


def pct(v: float) -> Percentiles:
    return Percentiles(v, v, v, v)


def snap(
    ttft: float | None = None, tps: float | None = None, breaker: BreakerState = BreakerState.CLOSED
) -> HealthSnapshot:
    return HealthSnapshot(10, 0, pct(ttft) if ttft else None, pct(tps) if tps else None, breaker)


class Health:
    def __init__(self, snaps: dict[str, HealthSnapshot]) -> None:
        self.snaps = snaps

    def snapshot(self, deployment_id: str) -> HealthSnapshot | None:
        return self.snaps.get(deployment_id)


# Measured: qwen is cheap but slow, opus fast to first token, minimax the highest throughput.
MEASURED = Health(
    {
        "qwen/qwen3.5": snap(ttft=4.0, tps=20),
        "minimax/m2.5": snap(ttft=1.0, tps=150),
        "zhipu/glm-5": snap(ttft=0.8, tps=60),
        "anthropic/opus": snap(ttft=0.3, tps=80),
    }
)


def ids(cands: list[Candidate]) -> list[str]:
    return [c.vendor for c in cands]


def prefs(
    provider: dict[str, Any] | None, model: str = "m", default: Preferences | None = None
) -> Preferences:
    return parse_preferences(provider, model, default)[1]


def test_default_is_cheapest_first_and_unpriced_last() -> None:
    assert ids(rank(ALL, prefs(None), NoHealth(), Needs())) == [
        "qwen",
        "minimax",
        "zhipu",
        "anthropic",
        "local",
    ]


def test_price_sort_uses_the_request_token_mix() -> None:
    # MiniMax and GLM share an input price; output-heavy requests make GLM dearer, and an
    # input-only mix ties them (heavier weight first).
    heavy_glm = Candidate("zhipu/glm-5", "zhipu", D("0.30"), D("2.55"), GLM.capabilities, weight=5)
    out_heavy = rank(
        [heavy_glm, MINIMAX], prefs(None), NoHealth(), Needs(prompt_tokens=100, output_tokens=4000)
    )
    assert ids(out_heavy) == ["minimax", "zhipu"]
    in_only = rank([MINIMAX, heavy_glm], prefs(None), NoHealth(), Needs(prompt_tokens=100_000))
    assert ids(in_only) == ["zhipu", "minimax"]


def test_order_goes_first_then_the_rest_by_price() -> None:
    p = prefs({"order": ["anthropic", "zhipu"]})
    assert ids(rank(ALL, p, NoHealth(), Needs())) == [
        "anthropic",
        "zhipu",
        "qwen",
        "minimax",
        "local",
    ]


def test_order_matches_a_deployment_id_too() -> None:
    p = prefs({"order": ["MiniMax/M2.5"]})
    assert ids(rank(ALL, p, NoHealth(), Needs()))[0] == "minimax"


def test_allow_fallbacks_false_keeps_only_the_ordered_or_the_best() -> None:
    p = prefs({"order": ["anthropic", "zhipu"], "allow_fallbacks": False})
    assert ids(rank(ALL, p, NoHealth(), Needs())) == ["anthropic", "zhipu"]
    assert ids(rank(ALL, prefs({"allow_fallbacks": False}), NoHealth(), Needs())) == ["qwen"]


def test_only_and_ignore_filter() -> None:
    assert ids(rank(ALL, prefs({"only": ["anthropic", "zhipu"]}), NoHealth(), Needs())) == [
        "zhipu",
        "anthropic",
    ]
    assert ids(rank(ALL, prefs({"ignore": ["qwen", "local"]}), NoHealth(), Needs())) == [
        "minimax",
        "zhipu",
        "anthropic",
    ]


def test_default_policy_applies_and_its_ignore_list_survives_the_request() -> None:
    default = Preferences(sort="latency", ignore=frozenset({"anthropic"}))
    assert ids(rank(ALL, prefs(None, default=default), MEASURED, Needs()))[:3] == [
        "zhipu",
        "minimax",
        "qwen",
    ]
    p = prefs({"sort": "price", "ignore": ["qwen"]}, default=default)
    assert p.ignore == frozenset({"anthropic", "qwen"})
    assert ids(rank(ALL, p, MEASURED, Needs())) == ["minimax", "zhipu", "local"]


def test_sort_latency_and_throughput_use_measured_p50() -> None:
    assert ids(rank(ALL, prefs({"sort": "latency"}), MEASURED, Needs())) == [
        "anthropic",
        "zhipu",
        "minimax",
        "qwen",
        "local",
    ]
    assert ids(rank(ALL, prefs({"sort": {"by": "throughput"}}), MEASURED, Needs())) == [
        "minimax",
        "anthropic",
        "zhipu",
        "qwen",
        "local",
    ]


def test_model_suffixes_floor_and_nitro() -> None:
    assert split_model_suffix("glm-5:floor") == ("glm-5", "price")
    assert split_model_suffix("glm-5:nitro") == ("glm-5", "throughput")
    assert split_model_suffix("qwen3:8b") == ("qwen3:8b", None)
    model, p = parse_preferences(None, "any:nitro", Preferences(sort="latency"))
    assert model == "any"
    assert ids(rank(ALL, p, MEASURED, Needs()))[0] == "minimax"
    _, p = parse_preferences({}, "any:floor", Preferences(sort="latency"))
    assert ids(rank(ALL, p, MEASURED, Needs()))[0] == "qwen"
    _, p = parse_preferences({"sort": "latency"}, "any:floor")  # explicit sort wins
    assert ids(rank(ALL, p, MEASURED, Needs()))[0] == "anthropic"


def test_max_price_is_a_hard_filter_and_excludes_unpriced() -> None:
    p = prefs({"max_price": {"prompt": 0.3, "completion": "1.5"}})
    assert ids(rank(ALL, p, NoHealth(), Needs())) == ["qwen", "minimax"]
    p = prefs({"max_price": {"completion": 1}})
    assert ids(rank(ALL, p, NoHealth(), Needs())) == ["qwen"]
    p = prefs({"max_price": {"prompt": 0.01}})
    assert rank(ALL, p, NoHealth(), Needs()) == []


prices = st.decimals(min_value=0, max_value=50, places=2)


@given(
    st.lists(st.tuples(prices, prices), min_size=1, max_size=8),
    st.one_of(st.none(), prices),
    st.one_of(st.none(), prices),
    st.sampled_from([None, "price", "latency", "throughput"]),
    st.booleans(),
)
def test_max_price_never_routes_above_the_price(
    pairs: list[tuple[D, D]],
    prompt: D | None,
    completion: D | None,
    sort: str | None,
    fallbacks: bool,
) -> None:
    cands = [Candidate(f"v{i}/m", f"v{i}", a, b, frozenset()) for i, (a, b) in enumerate(pairs)]
    mp = {k: str(v) for k, v in (("prompt", prompt), ("completion", completion)) if v is not None}
    p = prefs({"max_price": mp, "sort": sort, "allow_fallbacks": fallbacks, "order": ["v3", "v1"]})
    for c in rank(cands, p, MEASURED, Needs()):
        assert c.input_usd_per_m is not None and c.output_usd_per_m is not None
        assert prompt is None or c.input_usd_per_m <= prompt
        assert completion is None or c.output_usd_per_m <= completion


capability_sets = st.frozensets(st.sampled_from(["tools", "json", "vision", "stream", "reasoning"]))


@given(
    st.lists(
        st.tuples(capability_sets, st.one_of(st.none(), st.integers(1000, 200_000))),
        min_size=1,
        max_size=8,
    ),
    capability_sets,
    st.integers(0, 150_000),
    st.sampled_from([None, "price", "latency", "throughput"]),
    st.lists(st.sampled_from(["v0", "v1", "v2", "v5"]), max_size=3),
)
def test_filters_never_pick_a_deployment_lacking_a_capability_or_context(
    specs: list[tuple[frozenset[str], int | None]],
    needs_caps: frozenset[str],
    prompt: int,
    sort: str | None,
    order: list[str],
) -> None:
    cands = [
        Candidate(f"v{i}/m", f"v{i}", D(i), D(i), caps, ctx) for i, (caps, ctx) in enumerate(specs)
    ]
    needs = Needs(capabilities=needs_caps, prompt_tokens=prompt, output_tokens=1000)
    chosen = rank(cands, prefs({"sort": sort, "order": order}), NoHealth(), needs)
    for c in chosen:
        assert needs_caps <= c.capabilities
        assert c.context_length is None or c.context_length >= prompt + 1000
    expected = {
        c.deployment_id
        for c in cands
        if needs_caps <= c.capabilities
        and (c.context_length is None or c.context_length >= prompt + 1000)
    }
    assert {c.deployment_id for c in chosen} == expected


def test_a_tools_request_never_goes_to_a_deployment_without_tools() -> None:
    needs = Needs(capabilities=frozenset({"tools"}))
    for p in (
        prefs({"order": ["zhipu"]}),
        prefs({"only": ["zhipu", "qwen"]}),
        prefs({"sort": "latency"}),
    ):
        assert "zhipu" not in ids(rank(ALL, p, MEASURED, needs))
    assert rank([GLM], prefs({"order": ["zhipu"]}), MEASURED, needs) == []


def test_context_and_explicit_output_length_filter() -> None:
    needs = Needs(prompt_tokens=30_000, output_tokens=4000)
    assert "zhipu" not in ids(rank(ALL, prefs(None), NoHealth(), needs))
    capped = Candidate("a/x", "a", D(1), D(1), frozenset(), max_output=2048)
    roomy = Candidate("b/x", "b", D(2), D(2), frozenset(), max_output=8192)
    assert ids(
        rank(
            [capped, roomy],
            prefs(None),
            NoHealth(),
            Needs(output_tokens=4000, explicit_output=True),
        )
    ) == ["b"]
    # A default cap the client did not ask for does not exclude (the vendor's own cap applies).
    assert ids(rank([capped, roomy], prefs(None), NoHealth(), Needs(output_tokens=4000))) == [
        "a",
        "b",
    ]


def test_preferred_max_latency_moves_slow_deployments_down() -> None:
    got = ids(rank(ALL, prefs({"preferred_max_latency": 2}), MEASURED, Needs()))
    assert got == ["minimax", "zhipu", "anthropic", "local", "qwen"]  # unmeasured local is kept
    # Percentile form: p90 of 0.9 s leaves only GLM and Opus (and unmeasured) on top.
    got = ids(rank(ALL, prefs({"preferred_max_latency": {"p90": 0.9}}), MEASURED, Needs()))
    assert got == ["zhipu", "anthropic", "local", "qwen", "minimax"]


def test_preferred_min_throughput_moves_slow_deployments_down() -> None:
    got = ids(rank(ALL, prefs({"preferred_min_throughput": 50}), MEASURED, Needs()))
    assert got == ["minimax", "zhipu", "anthropic", "local", "qwen"]
    got = ids(
        rank(ALL, prefs({"preferred_min_throughput": {"p50": 70, "p99": 70}}), MEASURED, Needs())
    )
    assert got == ["minimax", "anthropic", "local", "qwen", "zhipu"]


def test_require_parameters_keeps_only_deployments_that_accept_them() -> None:
    body = {"model": "m", "messages": [], "logprobs": True, "seed": 7, "temperature": None}
    needs = Needs(parameters=request_parameters(body))
    assert needs.parameters == frozenset({"model", "messages", "logprobs", "seed"})
    full = Candidate(
        "full/x", "full", D(9), D(9), frozenset(), parameters=frozenset({"logprobs", "seed"})
    )
    cands = [QWEN, full]
    assert ids(rank(cands, prefs(None), NoHealth(), needs)) == ["qwen", "full"]
    assert ids(rank(cands, prefs({"require_parameters": True}), NoHealth(), needs)) == ["full"]
    # Capabilities imply their parameters: tool_choice is fine on a tools deployment.
    tools = Needs(parameters=frozenset({"messages", "tool_choice"}))
    assert ids(rank([GLM, QWEN], prefs({"require_parameters": True}), NoHealth(), tools)) == [
        "qwen"
    ]


def test_resting_deployments_go_last() -> None:
    h = Health({"qwen/qwen3.5": snap(breaker=BreakerState.OPEN)})
    assert ids(rank(ALL, prefs(None), h, Needs())) == [
        "minimax",
        "zhipu",
        "anthropic",
        "local",
        "qwen",
    ]


def test_equal_prices_share_traffic_by_weight() -> None:
    a = Candidate("a/x", "a", D(1), D(1), frozenset(), weight=3)
    b = Candidate("b/x", "b", D(1), D(1), frozenset(), weight=1)
    rng = random.Random(42)
    firsts = Counter(
        rank([a, b], prefs(None), NoHealth(), Needs(), rng=rng)[0].vendor for _ in range(4000)
    )
    assert 0.70 < firsts["a"] / 4000 < 0.80
    assert rank([b, a], prefs(None), NoHealth(), Needs())[0].vendor == "a"


@pytest.mark.parametrize(
    ("provider", "param"),
    [
        ("fast", "provider"),
        ({"order": "qwen"}, "provider.order"),
        ({"only": [1]}, "provider.only"),
        ({"ignore": [""]}, "provider.ignore"),
        ({"allow_fallbacks": "no"}, "provider.allow_fallbacks"),
        ({"require_parameters": 1}, "provider.require_parameters"),
        ({"sort": "cheapest"}, "provider.sort"),
        ({"sort": {"by": "speed"}}, "provider.sort"),
        ({"max_price": 5}, "provider.max_price"),
        ({"max_price": {"prompt": -1}}, "provider.max_price.prompt"),
        ({"max_price": {"completion": "lots"}}, "provider.max_price.completion"),
        ({"max_price": {"tokens": 1}}, "provider.max_price.tokens"),
        ({"preferred_max_latency": {"p95": 1}}, "provider.preferred_max_latency.p95"),
        ({"preferred_max_latency": True}, "provider.preferred_max_latency"),
        ({"preferred_min_throughput": {"p50": "x"}}, "provider.preferred_min_throughput.p50"),
        ({"colour": "blue"}, "provider.colour"),
    ],
)
def test_invalid_shapes_name_the_field(provider: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        parse_preferences(provider, "m")
    assert e.value.param == param
    assert e.value.status == 400


def test_ignored_fields_and_nulls_are_accepted() -> None:
    p = prefs(
        {
            "data_collection": "deny",
            "zdr": True,
            "sort": None,
            "order": None,
            "quantizations": ["fp8"],
        }
    )
    assert p == Preferences()
