"""FX: dated exact rates, inverse derived exactly, one half-up rounding per conversion."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenomy.billing.fx import FxRate, FxTable
from tokenomy.billing.money import MAX_NANOS, NANOS_PER_UNIT, Currency, Money

USD, CNY = Currency.USD, Currency.CNY


def table(*rates: tuple[str, str]) -> FxTable:
    return FxTable(
        FxRate(USD, CNY, Decimal(rate), date.fromisoformat(day), "test") for day, rate in rates
    )


def test_packaged_table_has_a_sourced_usd_cny_rate() -> None:
    fx = FxTable.load()
    rates = list(fx)
    assert rates, "fx.yaml has no rates"
    for r in rates:
        assert r.source.strip() and isinstance(r.as_of, date)
    assert fx.rate(USD, CNY) == Fraction(Decimal("6.737012"))
    assert fx.rate(CNY, USD) == 1 / Fraction(Decimal("6.737012"))
    with pytest.raises(LookupError):
        fx.rate(USD, CNY, date(2000, 1, 1))


def test_rate_is_the_latest_dated_on_or_before_the_day() -> None:
    fx = table(("2026-01-01", "7.1"), ("2026-06-01", "7.0"))
    assert fx.rate(USD, CNY, date(2026, 3, 1)) == Fraction(71, 10)
    assert fx.rate(USD, CNY, date(2026, 6, 1)) == 7
    assert fx.rate(USD, CNY) == 7
    assert fx.rate(CNY, USD, date(2026, 1, 1)) == Fraction(10, 71)
    assert fx.rate(USD, USD) == 1
    with pytest.raises(LookupError):
        fx.rate(USD, CNY, date(2025, 12, 31))


def test_convert_uses_the_dated_rate_and_rounds_half_up() -> None:
    fx = table(("2026-01-01", "7"))
    assert fx.convert(Money(NANOS_PER_UNIT, USD), CNY) == Money(7 * NANOS_PER_UNIT, CNY)
    # 1 nano of yuan is 1/7 nano of dollar: rounds to 0; 4 nanos is 4/7 -> 1
    assert fx.convert(Money(1, CNY), USD).nanos == 0
    assert fx.convert(Money(4, CNY), USD).nanos == 1
    assert fx.convert(Money(5, USD), USD) == Money(5, USD)


def test_extra_rates_from_config_are_validated() -> None:
    fx = FxTable.load(
        [{"base": "CNY", "quote": "USD", "rate": "0.14", "as_of": "2030-01-01", "source": "cfg"}]
    )
    assert fx.rate(USD, CNY, date(2030, 1, 2)) == 1 / Fraction(14, 100)
    with pytest.raises(ValueError, match="strings"):
        FxTable.load(
            [{"base": "USD", "quote": "CNY", "rate": 7.1, "as_of": "2030-01-01", "source": "x"}]
        )
    with pytest.raises(ValueError):
        FxTable.load(
            [{"base": "USD", "quote": "EUR", "rate": "1", "as_of": "2030-01-01", "source": "x"}]
        )
    with pytest.raises(ValueError, match="positive"):
        FxTable.load(
            [{"base": "USD", "quote": "CNY", "rate": "0", "as_of": "2030-01-01", "source": "x"}]
        )
    with pytest.raises(ValueError, match="two different"):
        FxRate(USD, USD, Decimal(1), date(2030, 1, 1), "x")


rates = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1000"), places=6).filter(
    lambda d: d > 0
)


@given(st.integers(0, MAX_NANOS), rates)
def test_round_trip_loses_at_most_one_rounding_step(nanos: int, rate: Decimal) -> None:
    """There and back is off by at most half a nano of the far currency, seen from home."""
    fx = table(("2026-01-01", str(rate)))
    for home, away in ((USD, CNY), (CNY, USD)):
        r = fx.rate(home, away)
        there = fx.convert(Money(nanos, home), away)
        back = fx.convert(there, home)
        assert back.currency is home
        # |there - nanos*r| <= 1/2, so |back - nanos| <= (1/2)/r + 1/2
        assert abs(back.nanos - nanos) <= Fraction(1, 2) / r + Fraction(1, 2)
        if r >= 1:  # converting into the smaller unit and back is exact
            assert back.nanos == nanos


@given(st.integers(-MAX_NANOS, MAX_NANOS))
def test_packaged_round_trip_dollars_are_exact(nanos: int) -> None:
    fx = FxTable.load()
    assert fx.convert(fx.convert(Money(nanos, USD), CNY), USD) == Money(nanos, USD)
