"""Prompt-cache reads and writes priced as each vendor documents them.

Figures: Anthropic's pricing page (base input, 5-minute writes at 1.25x, one-hour writes at
2x, hits and refreshes at 0.1x: Opus 4.6 $5 / $6.25 / $10 / $0.50, Sonnet 4.6 $3 / $3.75 /
$6 / $0.30, Haiku 4.5 $1 / $1.25 / $2 / $0.10 per million tokens); OpenAI's GPT-5.4
($2.50 input, $0.25 cached input); DeepSeek's Flash off-peak ($0.15 miss, $0.003 hit).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tokenomy.billing.catalog import PriceBook
from tokenomy.billing.money import Currency
from tokenomy.billing.pricing import cost_nanos, price_request
from tokenomy.core.usage import Usage

BOOK = PriceBook.load()
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
#: 20:00 Beijing, a Wednesday: DeepSeek's off-peak price.
OFF_PEAK = datetime(2026, 11, 25, 12, tzinfo=UTC)
M = 1_000_000


def nanos(usd: str) -> int:
    from decimal import Decimal

    return int(Decimal(usd) * 10**9)


@pytest.mark.parametrize(
    ("model", "base", "write_5m", "write_1h", "read"),
    [
        ("claude-opus-4-6", "5", "6.25", "10", "0.50"),
        ("claude-sonnet-4-6", "3", "3.75", "6", "0.30"),
        ("claude-haiku-4-5", "1", "1.25", "2", "0.10"),
    ],
)
def test_anthropic_writes_by_lifetime_and_reads_at_a_tenth(
    model: str, base: str, write_5m: str, write_1h: str, read: str
) -> None:
    v = BOOK.lookup("anthropic", model, NOW)

    def cost(**u: int) -> int:
        usage = Usage(**u)
        total = price_request(v, usage, at=NOW).total
        assert total.currency is Currency.USD
        assert cost_nanos(v, usage, at=NOW)[0] == total.nanos  # the settling path agrees
        return total.nanos

    assert cost(input_tokens=M) == nanos(base)
    assert cost(input_tokens=M, cache_write_tokens=M) == nanos(write_5m)
    assert cost(input_tokens=M, cache_write_tokens=M, cache_write_1h_tokens=M) == nanos(write_1h)
    assert cost(input_tokens=M, cached_tokens=M) == nanos(read)


def test_anthropic_usage_with_both_lifetimes_is_billed_per_part() -> None:
    # A Sonnet 4.6 answer as the Messages API reports it: input_tokens excludes the cache.
    u = Usage.from_anthropic(
        {
            "input_tokens": 50,
            "cache_creation_input_tokens": 10_000,
            "cache_read_input_tokens": 100_000,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 4_000,
                "ephemeral_1h_input_tokens": 6_000,
            },
            "output_tokens": 500,
        }
    )
    assert (u.input_tokens, u.cached_tokens, u.cache_write_tokens, u.cache_write_1h_tokens) == (
        110_050,
        100_000,
        10_000,
        6_000,
    )
    v = BOOK.lookup("anthropic", "claude-sonnet-4-6", NOW)
    cost = price_request(v, u, at=NOW)
    # 50 x $3 + 4,000 x $3.75 + 6,000 x $6 + 100,000 x $0.30 + 500 x $15, per million
    assert cost.total.nanos == 150_000 + 15_000_000 + 36_000_000 + 30_000_000 + 7_500_000
    assert {line.component: line.tokens for line in cost.lines} == {
        "input": 50,
        "cache_write": 4_000,
        "cache_write_1h": 6_000,
        "cached_input": 100_000,
        "output": 500,
    }
    # Sent on to an Anthropic client as it came.
    assert u.to_anthropic()["cache_creation"] == {
        "ephemeral_5m_input_tokens": 4_000,
        "ephemeral_1h_input_tokens": 6_000,
    }


def test_anthropic_split_without_a_total_and_without_a_split() -> None:
    only_split = Usage.from_anthropic(
        {"input_tokens": 1, "cache_creation": {"ephemeral_1h_input_tokens": 7}, "output_tokens": 1}
    )
    assert (only_split.cache_write_tokens, only_split.cache_write_1h_tokens) == (7, 7)
    plain = Usage.from_anthropic({"input_tokens": 1, "cache_creation_input_tokens": 9})
    assert (plain.cache_write_tokens, plain.cache_write_1h_tokens) == (9, 0)
    assert "cache_creation" not in plain.to_anthropic()  # five-minute writes need no split
    # A vendor's split that claims more than its total is held to the total.
    odd = Usage.from_anthropic(
        {"cache_creation_input_tokens": 5, "cache_creation": {"ephemeral_1h_input_tokens": 9}}
    )
    assert odd.cache_write_1h_tokens == 5


def test_openai_cached_input() -> None:
    v = BOOK.lookup("openai", "gpt-5.4", NOW)
    u = Usage.from_openai(
        {
            "prompt_tokens": M,
            "completion_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 800_000},
        }
    )
    # 200,000 x $2.50 + 800,000 x $0.25, per million
    assert price_request(v, u, at=NOW).total.nanos == nanos("0.70")


def test_deepseek_cache_hits_from_its_own_fields() -> None:
    v = BOOK.lookup("deepseek", "deepseek-flash", OFF_PEAK)
    u = Usage.from_openai(
        {
            "prompt_tokens": M,
            "completion_tokens": 0,
            "prompt_cache_hit_tokens": 900_000,
            "prompt_cache_miss_tokens": 100_000,
        }
    )
    assert u.cached_tokens == 900_000
    # 100,000 x $0.15 + 900,000 x $0.003, per million, off-peak
    assert price_request(v, u, at=OFF_PEAK).total.nanos == nanos("0.0177")


def test_one_hour_writes_fall_back_to_the_write_price() -> None:
    # A model whose catalogue entry gives no one-hour price bills those writes as writes.
    v = BOOK.lookup("sim", "sim-large", NOW)
    u = Usage(input_tokens=1_000, cache_write_tokens=1_000, cache_write_1h_tokens=1_000)
    w = Usage(input_tokens=1_000, cache_write_tokens=1_000)
    assert price_request(v, u, at=NOW).total == price_request(v, w, at=NOW).total
