"""Pricing a request: known vendor prices, one rounding per request, and holds that cover it."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tokenomy.billing.catalog import (
    TOKEN_FIELDS,
    PriceBook,
    PriceVersion,
    PricingError,
    Promotion,
    Tier,
    TokenPrices,
)
from tokenomy.billing.fx import FxTable
from tokenomy.billing.money import NANOS_PER_UNIT, Currency, Money, round_half_up_fraction
from tokenomy.billing.pricing import cost_nanos, openrouter_pricing, price_request, worst_case
from tokenomy.billing.windows import TimeWindow
from tokenomy.core.usage import Usage

BEIJING = ZoneInfo("Asia/Shanghai")
USD, CNY = Currency.USD, Currency.CNY
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
BOOK = PriceBook.load()
M = 1_000_000


def v(
    vendor: str, model: str, at: datetime = NOW, currency: Currency | None = None
) -> PriceVersion:
    return BOOK.lookup(vendor, model, at, currency=currency)


def usd(units: str) -> Money:
    return Money(round_half_up_fraction(Fraction(Decimal(units)) * NANOS_PER_UNIT), USD)


def cny(units: str) -> Money:
    return Money(usd(units).nanos, CNY)


# ------------------------------------------------------------------ known prices


def test_claude_opus_4_6_with_cache_reads_and_writes() -> None:
    opus = v("anthropic", "claude-opus-4-6")
    usage = Usage.from_anthropic(
        {
            "input_tokens": 700_000,
            "cache_read_input_tokens": 200_000,
            "cache_creation_input_tokens": 100_000,
            "output_tokens": 50_000,
        }
    )
    assert usage.input_tokens == 1_000_000
    cost = price_request(opus, usage, at=NOW)
    # 0.7M x $5 + 0.2M x $0.50 + 0.1M x $6.25 + 0.05M x $25
    assert cost.total == usd("5.475")
    assert {line.component: line.amount for line in cost.lines} == {
        "input": Decimal("3.5"),
        "cached_input": Decimal("0.1"),
        "cache_write": Decimal("0.625"),
        "output": Decimal("1.25"),
    }
    assert cost.version_id == "anthropic/claude-opus-4-6/USD@2026-02-05T00:00:00Z"
    assert (cost.tier, cost.window, cost.promotion, cost.batch) == (0, None, None, False)
    batch = price_request(opus, usage, at=NOW, batch=True)
    assert batch.total == usd("2.7375") and batch.batch


def test_claude_opus_4_6_one_million_each_way() -> None:
    cost = price_request(
        v("anthropic", "claude-opus-4-6"), Usage(input_tokens=M, output_tokens=M), at=NOW
    )
    assert cost.total == usd("30")


def test_minimax_m2_5() -> None:
    mm = v("minimax", "MiniMax-M2.5")
    assert price_request(mm, Usage(input_tokens=M, output_tokens=M), at=NOW).total == usd("1.50")
    # half the prompt from the cache: 0.5M x 0.30 + 0.5M x 0.03
    cached = Usage(input_tokens=M, cached_tokens=M // 2)
    assert price_request(mm, cached, at=NOW).total == usd("0.165")


def test_glm_5() -> None:
    glm = v("zhipu", "glm-5")
    assert price_request(glm, Usage(input_tokens=M, output_tokens=M), at=NOW).total == usd("4.20")
    glm_cny = v("zhipu", "glm-5", currency=CNY)
    assert price_request(glm_cny, Usage(input_tokens=M, output_tokens=M), at=NOW).total == cny("22")


def test_qwen3_5_plus_tier_by_whole_prompt() -> None:
    qwen = v("qwen", "qwen3.5-plus")
    small = price_request(qwen, Usage(input_tokens=131_072, output_tokens=M), at=NOW)
    assert small.tier == 0
    assert small.total == cny("4.9048576")  # 131072 x 0.8 / 1M + 4.8
    # the prompt counts cached tokens too: 100K fresh + 31,073 cached crosses 128K
    big = price_request(qwen, Usage(input_tokens=131_073, cached_tokens=31_073), at=NOW)
    assert big.tier == 1
    assert big.total == cny("0.2124292")  # 100000 x 2.0 + 31073 x 0.4, per million
    largest = price_request(qwen, Usage(input_tokens=300_000, output_tokens=1000), at=NOW)
    assert largest.tier == 2 and largest.total == cny("1.224")


def test_deepseek_peak_costs_double_off_peak() -> None:
    usage = Usage.from_openai(
        {"prompt_tokens": M, "completion_tokens": M, "prompt_cache_hit_tokens": 200_000}
    )
    assert usage.cached_tokens == 200_000
    peak = datetime(2026, 11, 18, 10, 0, tzinfo=BEIJING)  # Wednesday morning
    off = datetime(2026, 11, 18, 20, 0, tzinfo=BEIJING)  # Wednesday evening
    saturday = datetime(2026, 11, 21, 10, 0, tzinfo=BEIJING)
    holiday = datetime(2026, 10, 1, 10, 0, tzinfo=BEIJING)
    ds = v("deepseek", "deepseek-flash")
    # off-peak: 0.8M x 0.15 + 0.2M x 0.003 + 1M x 0.60
    expected_off = usd("0.7206")
    costs = {t: price_request(ds, usage, at=t) for t in (peak, off, saturday, holiday)}
    assert costs[off].total == costs[saturday].total == costs[holiday].total == expected_off
    assert costs[peak].total == usd("1.4412")
    assert costs[peak].total.nanos == 2 * costs[off].total.nanos
    assert costs[peak].window == "peak-am" and costs[off].window is None
    ds_cny = v("deepseek", "deepseek-flash", currency=CNY)
    plain = Usage(input_tokens=M, output_tokens=M)
    assert price_request(ds_cny, plain, at=peak).total == cny("10")
    assert price_request(ds_cny, plain, at=off).total == cny("5")


def test_deepseek_2025_off_peak_window_wraps_midnight() -> None:
    chat_at = datetime(2025, 3, 10, 12, tzinfo=UTC)
    chat = v("deepseek", "deepseek-chat", chat_at)
    usage = Usage(input_tokens=M, output_tokens=M)
    full = usd("1.37")
    assert price_request(chat, usage, at=chat_at).total == full
    for t in (datetime(2025, 3, 10, 16, 30, tzinfo=UTC), datetime(2025, 3, 11, 0, 29, tzinfo=UTC)):
        assert price_request(chat, usage, at=t).total == usd("0.685")
    assert price_request(chat, usage, at=datetime(2025, 3, 11, 0, 30, tzinfo=UTC)).total == full


def test_promotion_applies_until_its_end() -> None:
    during = datetime(2026, 9, 1, tzinfo=UTC)
    flash = v("zhipu", "glm-5.3-flash", during)
    usage = Usage(input_tokens=M, output_tokens=M)
    cost = price_request(flash, usage, at=during)
    assert cost.promotion == "launch-50-off" and cost.total == usd("0.325")
    end = datetime(2026, 9, 10, 0, 0, tzinfo=BEIJING)
    assert price_request(flash, usage, at=end - timedelta(microseconds=1)).total == usd("0.325")
    assert price_request(flash, usage, at=end).total == usd("0.65")


def test_reasoning_fee_tiers_and_windows_of_the_simulated_model() -> None:
    sim = v("sim", "sim-large")
    day = datetime(2026, 11, 25, 12, tzinfo=UTC)
    night = datetime(2026, 11, 25, 23, tzinfo=UTC)
    usage = Usage(input_tokens=10_000, output_tokens=3_000, reasoning_tokens=1_000)
    cost = price_request(sim, usage, at=day)
    # 10K x 2 + 2K x 8 + 1K x 10, per million, plus a 0.0001 fee
    assert cost.total == usd("0.0461")
    assert [line.component for line in cost.lines] == ["input", "output", "reasoning", "request"]
    # the night window halves token prices, never the fee
    assert price_request(sim, usage, at=night).total == usd("0.0231")
    long = Usage(input_tokens=40_000)
    assert price_request(sim, long, at=day).tier == 1
    assert price_request(sim, long, at=day).total == usd("0.1601")


def test_reasoning_without_its_own_price_is_output() -> None:
    usage = Usage(input_tokens=0, output_tokens=1000, reasoning_tokens=600)
    cost = price_request(v("anthropic", "claude-opus-4-6"), usage, at=NOW)
    assert [(line.component, line.tokens) for line in cost.lines] == [("output", 1000)]


# -------------------------------------------------------------------- rounding


def flat(**prices: str) -> PriceVersion:
    """A one-tier version with these prices (sub-milli prices give sub-nano token costs)."""
    return PriceVersion(
        vendor="test",
        model="flat",
        currency=USD,
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        until=None,
        tiers=(Tier(None, TokenPrices(**{k: Decimal(p) for k, p in prices.items()})),),
        source="test",
        as_of=datetime(2026, 1, 1).date(),
        status="simulated",
    )


def test_rounding_happens_once_per_request() -> None:
    # $0.0003 per million is 0.3 nanos a token: two components of 0.3 nanos make 0.6 -> 1,
    # where rounding each component first would give 0
    version = flat(input="0.0003", output="0.0003")
    cost = price_request(version, Usage(input_tokens=1, output_tokens=1), at=NOW)
    assert [line.amount for line in cost.lines] == [Decimal("3E-10"), Decimal("3E-10")]
    assert cost.exact == Decimal("6E-10")
    assert cost.total.nanos == 1


@pytest.mark.parametrize(("tokens", "nanos"), [(1, 1), (2, 1), (3, 2), (5, 3), (7, 4)])
def test_half_nanos_round_up(tokens: int, nanos: int) -> None:
    version = flat(input="0.0005", output="0")  # half a nano a token
    cost = price_request(version, Usage(input_tokens=tokens), at=NOW)
    assert cost.total.nanos == nanos  # 2.5 -> 3, not the banker's 2


def test_catalogue_price_with_a_fractional_nano() -> None:
    # DeepSeek V4 Pro's launch: cache hits at $0.0145/M under a 75% discount, 3.625 nanos each
    at = datetime(2026, 5, 1, tzinfo=UTC)
    pro = v("deepseek", "deepseek-v4-pro", at)
    cost = price_request(pro, Usage(input_tokens=2, cached_tokens=2), at=at)
    assert cost.exact == Decimal("7.25E-9") and cost.total.nanos == 7


# ---------------------------------------------------------------------- errors


def test_errors() -> None:
    kimi = v("moonshot", "kimi-k3")
    with pytest.raises(PricingError, match="batch"):
        price_request(kimi, Usage(input_tokens=1), at=NOW, batch=True)
    with pytest.raises(PricingError, match="batch"):
        worst_case(kimi, 1, 1, at=NOW, batch=True)
    with pytest.raises(PricingError, match="does not apply"):
        price_request(kimi, Usage(input_tokens=1), at=datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="timezone-aware"):
        price_request(kimi, Usage(input_tokens=1), at=datetime(2026, 11, 25))
    with pytest.raises(TypeError, match="int"):
        price_request(kimi, Usage(input_tokens=1.0), at=NOW)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int"):
        worst_case(kimi, 1, 1.5, at=NOW)  # type: ignore[arg-type]


def test_inconsistent_counts_are_clamped_to_what_was_reported() -> None:
    opus = v("anthropic", "claude-opus-4-6")
    odd = Usage(
        input_tokens=100,
        cached_tokens=80,
        cache_write_tokens=50,
        output_tokens=-5,
        reasoning_tokens=9,
    )
    cost = price_request(opus, odd, at=NOW)
    assert [(line.component, line.tokens) for line in cost.lines] == [
        ("cached_input", 80),
        ("cache_write", 20),
    ]
    assert cost_nanos(opus, odd, at=NOW) == (cost.total.nanos, Fraction(cost.exact) * 10**9)


def test_settlement_names_the_count_that_is_not_an_int() -> None:
    opus = v("anthropic", "claude-opus-4-6")
    with pytest.raises(TypeError, match=r"usage\.output_tokens must be int, not float"):
        cost_nanos(opus, Usage(input_tokens=1, output_tokens=2.0), at=NOW)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"usage\.cached_tokens must be int, not bool"):
        cost_nanos(opus, Usage(input_tokens=1, cached_tokens=True), at=NOW)


# --------------------------------------------------------------- OpenRouter view


def test_openrouter_pricing() -> None:
    opus = v("anthropic", "claude-opus-4-6")
    assert openrouter_pricing(opus, at=NOW) == {
        "prompt": "0.000005",
        "completion": "0.000025",
        "request": "0",
        "input_cache_read": "0.0000005",
        "input_cache_write": "0.00000625",
    }
    ds = v("deepseek", "deepseek-flash")
    peak = datetime(2026, 11, 18, 10, 0, tzinfo=BEIJING)
    assert openrouter_pricing(ds, at=peak)["prompt"] == "0.0000003"
    qwen = v("qwen", "qwen3.5-plus")
    with pytest.raises(PricingError, match="FxTable"):
        openrouter_pricing(qwen, at=NOW)
    fx = FxTable.load()
    got = openrouter_pricing(qwen, at=NOW, fx=fx)
    expected = Fraction(Decimal("0.8")) / Fraction(Decimal("6.737012")) / M
    assert abs(Fraction(Decimal(got["prompt"])) / expected - 1) < Fraction(1, 10**16)


# ------------------------------------------------------------------ properties

ALL_VERSIONS = [ver for m in BOOK for ver in m.versions]
HORIZON = timedelta(days=120)


@st.composite
def instant_in(draw: st.DrawFn, version: PriceVersion) -> datetime:
    span = (version.until - version.effective_from) if version.until else HORIZON
    seconds = draw(st.integers(0, int(span.total_seconds()) - 1))
    return version.effective_from + timedelta(seconds=seconds)


@st.composite
def usages(draw: st.DrawFn, max_in: int = 2_000_000, max_out: int = 200_000) -> Usage:
    inp = draw(st.integers(0, max_in))
    cached = draw(st.integers(0, inp))
    write = draw(st.integers(0, inp - cached))
    out = draw(st.integers(0, max_out))
    hour = draw(st.integers(0, write))
    return Usage(inp, cached, write, out, draw(st.integers(0, out)), cache_write_1h_tokens=hour)


def reference_exact(version: PriceVersion, usage: Usage, at: datetime, batch: bool) -> Fraction:
    """The documented formula, computed independently with fractions."""
    uncached = usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens
    plain_out = usage.output_tokens - usage.reasoning_tokens
    tier = version.tiers[version.tier_index(usage.input_tokens)].prices
    promo = version.promotion_at(at)
    if promo:
        tier = promo.applied_to(tier)
    window = version.window_at(at)
    mult = Fraction(window.multiplier if window else 1) * Fraction(promo.multiplier if promo else 1)
    if batch:
        assert version.batch_multiplier is not None
        mult *= Fraction(version.batch_multiplier)
    inp, out = Fraction(tier.input), Fraction(tier.output)
    cached = Fraction(tier.cached_input) if tier.cached_input is not None else inp
    write = Fraction(tier.cache_write) if tier.cache_write is not None else inp
    hour = Fraction(tier.cache_write_1h) if tier.cache_write_1h is not None else write
    reasoning = Fraction(tier.reasoning) if tier.reasoning is not None else out
    tokens = (
        uncached * inp
        + usage.cached_tokens * cached
        + (usage.cache_write_tokens - usage.cache_write_1h_tokens) * write
        + usage.cache_write_1h_tokens * hour
        + plain_out * out
        + usage.reasoning_tokens * reasoning
    )
    return tokens * mult / M + Fraction(tier.request)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_catalogue_cost_is_exact_rounded_once_and_never_negative(data: st.DataObject) -> None:
    version = data.draw(st.sampled_from(ALL_VERSIONS))
    at = data.draw(instant_in(version))
    usage = data.draw(usages())
    batch = version.batch_multiplier is not None and data.draw(st.booleans())
    cost = price_request(version, usage, at=at, batch=batch)
    exact = reference_exact(version, usage, at, batch)
    assert Fraction(cost.exact) == exact
    assert cost.total.nanos == round_half_up_fraction(exact * NANOS_PER_UNIT)
    assert cost.total.nanos >= 0 and cost.total.currency is version.currency


@given(
    st.sampled_from(ALL_VERSIONS),
    st.integers(-(10**9), 10**9),
    st.integers(-(10**9), 10**9),
    st.integers(-(10**9), 10**9),
    st.integers(-(10**9), 10**9),
    st.integers(-(10**9), 10**9),
)
def test_cost_is_never_negative_even_for_nonsense_counts(
    version: PriceVersion, a: int, b: int, c: int, d: int, e: int
) -> None:
    cost = price_request(version, Usage(a, b, c, d, e), at=version.effective_from)
    assert cost.total.nanos >= 0 and cost.exact >= 0
    assert all(line.tokens > 0 and line.amount >= 0 for line in cost.lines)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_worst_case_covers_catalogue_prices_at_any_later_instant(data: st.DataObject) -> None:
    version = data.draw(st.sampled_from(ALL_VERSIONS))
    at = data.draw(instant_in(version))
    billed = data.draw(instant_in(version))
    assume(billed >= at)
    prompt = data.draw(st.integers(0, 2_000_000))
    max_out = data.draw(st.integers(0, 200_000))
    usage = data.draw(usages(prompt, max_out))
    batch = version.batch_multiplier is not None and data.draw(st.booleans())
    hold = worst_case(version, prompt, max_out, at=at, batch=batch)
    assert hold >= price_request(version, usage, at=billed, batch=batch).total


# Synthetic versions exercise shapes the catalogue does not have (yet): promotions that
# raise prices, windows above 1x in zones with daylight saving, fees, reasoning prices.
decimals = st.decimals(min_value=0, max_value=50, places=4)
optional = st.none() | decimals
T0 = datetime(2026, 3, 1, tzinfo=UTC)


@st.composite
def token_prices(draw: st.DrawFn) -> TokenPrices:
    return TokenPrices(
        input=draw(decimals),
        output=draw(decimals),
        cached_input=draw(optional),
        cache_write=draw(optional),
        reasoning=draw(optional),
        request=draw(st.decimals(min_value=0, max_value=1, places=6)),
    )


@st.composite
def windows(draw: st.DrawFn, i: int) -> TimeWindow:
    start = time(draw(st.integers(0, 23)), draw(st.sampled_from([0, 30])))
    end = time(draw(st.integers(0, 23)), draw(st.sampled_from([0, 30])))
    assume(start != end)
    return TimeWindow(
        name=f"w{i}",
        tz=draw(st.sampled_from(["UTC", "Asia/Shanghai", "America/New_York", "Europe/London"])),
        start=start,
        end=end,
        multiplier=draw(st.decimals(min_value=0, max_value=3, places=2)),
        days=frozenset(draw(st.lists(st.integers(0, 6), min_size=1, max_size=7))),
    )


@st.composite
def promotions(draw: st.DrawFn, i: int) -> Promotion:
    starts = T0 + timedelta(hours=draw(st.integers(0, 24 * 60)))
    length = draw(st.none() | st.integers(1, 24 * 60))
    keys = draw(st.lists(st.sampled_from([*TOKEN_FIELDS, "request"]), unique=True, max_size=3))
    return Promotion(
        name=f"p{i}",
        starts=starts,
        ends=None if length is None else starts + timedelta(hours=length),
        multiplier=draw(st.decimals(min_value=0, max_value=2, places=2)),
        overrides=tuple((k, draw(decimals)) for k in sorted(keys)),
    )


@st.composite
def synthetic_versions(draw: st.DrawFn) -> PriceVersion:
    bounds = sorted(set(draw(st.lists(st.integers(1, 1_000_000), max_size=3))))
    tiers = tuple(Tier(b, draw(token_prices())) for b in [*bounds, None])
    n_windows = draw(st.integers(0, 2))
    n_promos = draw(st.integers(0, 2))
    return PriceVersion(
        vendor="test",
        model="synthetic",
        currency=USD,
        effective_from=T0,
        until=None,
        tiers=tiers,
        source="generated",
        as_of=T0.date(),
        status="simulated",
        windows=tuple(draw(windows(i)) for i in range(n_windows)),
        promotions=tuple(draw(promotions(i)) for i in range(n_promos)),
        batch_multiplier=draw(st.none() | st.decimals(min_value=0, max_value=2, places=2)),
    )


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(synthetic_versions(), st.data())
def test_worst_case_covers_every_price_shape(version: PriceVersion, data: st.DataObject) -> None:
    at = T0 + timedelta(minutes=data.draw(st.integers(0, 90 * 24 * 60)))
    billed = at + timedelta(minutes=data.draw(st.integers(0, 30 * 24 * 60)))
    prompt = data.draw(st.integers(0, 1_500_000))
    max_out = data.draw(st.integers(0, 100_000))
    usage = data.draw(usages(prompt, max_out))
    batch = version.batch_multiplier is not None and data.draw(st.booleans())
    cost = price_request(version, usage, at=billed, batch=batch)
    assert cost.total.nanos >= 0
    assert Fraction(cost.exact) == reference_exact(version, usage, billed, batch)
    assert worst_case(version, prompt, max_out, at=at, batch=batch) >= cost.total
    # Settlement's integer path gives the same total and the same exact amount.
    nanos, exact = cost_nanos(version, usage, at=billed, batch=batch)
    assert nanos == cost.total.nanos and exact == Fraction(cost.exact) * 10**9


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_settlement_prices_equal_the_itemised_price(data: st.DataObject) -> None:
    version = data.draw(st.sampled_from(ALL_VERSIONS))
    at = data.draw(instant_in(version))
    usage = data.draw(
        usages(data.draw(st.integers(0, 2_000_000)), data.draw(st.integers(0, 200_000)))
    )
    batch = version.batch_multiplier is not None and data.draw(st.booleans())
    cost = price_request(version, usage, at=at, batch=batch)
    assert cost_nanos(version, usage, at=at, batch=batch) == (
        cost.total.nanos,
        Fraction(cost.exact) * 10**9,
    )


def test_worst_case_known_values() -> None:
    opus = v("anthropic", "claude-opus-4-6")
    # every prompt token may be a one-hour cache write ($10), every output token $25
    assert worst_case(opus, M, M, at=NOW) == usd("35")
    assert worst_case(opus, M, M, at=NOW, batch=True) == usd("17.5")
    ds = v("deepseek", "deepseek-flash")
    off = datetime(2026, 11, 18, 20, 0, tzinfo=BEIJING)
    assert worst_case(ds, M, M, at=off) == usd("1.50")  # the peak price: billing time unknown
    # rounded up, not half-up: 1 token at $0.0001/M is 0.1 nanos
    tiny = flat(input="0.0001", output="0")
    assert price_request(tiny, Usage(input_tokens=1), at=NOW).total.nanos == 0
    assert worst_case(tiny, 1, 0, at=NOW).nanos == 1
    qwen = v("qwen", "qwen3.5-plus")
    assert worst_case(qwen, 200_000, 0, at=NOW) == cny("0.5")  # tier 1's input, 2.5 write
