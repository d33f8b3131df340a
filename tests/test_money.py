"""Money: integer nanos, one parsing rule for user amounts, one rounding rule for costs."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenomy.billing.money import (
    MAX_NANOS,
    NANOS_PER_UNIT,
    Currency,
    Money,
    convert,
    money_from_units,
    parse_nanos,
    round_half_up_fraction,
    round_nanos,
)

INT64_MAX = 2**63 - 1

# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("12.50", 12_500_000_000),
        ("0", 0),
        ("  7 ", 7 * NANOS_PER_UNIT),
        ("+3", 3 * NANOS_PER_UNIT),
        (".5", 500_000_000),
        ("5.", 5 * NANOS_PER_UNIT),
        ("0.000000001", 1),
        ("0.123456789", 123_456_789),
        ("1000000000", MAX_NANOS),
        ("-0", 0),
    ],
)
def test_parse_accepts_plain_decimals(text: str, nanos: int) -> None:
    assert parse_nanos(text) == nanos


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.0000000001", "more than 9 decimal places"),
        ("1.1234567891", "more than 9 decimal places"),
        ("-1", "must not be negative"),
        ("-0.000000001", "must not be negative"),
        ("1000000000.000000001", "exceeds the maximum"),
        ("9223372036.854775808", "exceeds the maximum"),  # one nano past int64
        ("99999999999999999999", "exceeds the maximum"),
        ("1e3", "not a plain decimal"),
        ("1E-9", "not a plain decimal"),
        ("NaN", "finite"),
        ("-inf", "finite"),
        ("Infinity", "finite"),
        ("", "empty"),
        ("   ", "empty"),
        ("1,000", "not a plain decimal"),
        ("$5", "not a plain decimal"),
        ("5 USD", "not a plain decimal"),
        ("0x10", "not a plain decimal"),
        ("1_000", "not a plain decimal"),
        ("--1", "not a plain decimal"),
        ("١٢", "not a plain decimal"),  # Arabic-Indic digits
        ("１２", "not a plain decimal"),  # full-width digits
        ("1" * 65, "longer than"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_nanos(text)


@pytest.mark.parametrize("value", [1.5, 0.1, 3, Decimal("1"), None, b"1"])
def test_parse_rejects_non_strings(value: object) -> None:
    with pytest.raises(ValueError, match="decimal string"):
        parse_nanos(value)  # type: ignore[arg-type]


def test_negative_allowed_only_when_asked() -> None:
    assert parse_nanos("-2.5", allow_negative=True) == -2_500_000_000
    assert parse_nanos("-1000000000", allow_negative=True) == -MAX_NANOS
    with pytest.raises(ValueError, match="exceeds the maximum"):
        parse_nanos("-1000000000.000000001", allow_negative=True)


def test_money_parse_unknown_currency() -> None:
    with pytest.raises(ValueError):
        Currency("EUR")
    with pytest.raises(TypeError, match="Currency"):
        Money.parse("1", "USD")  # type: ignore[arg-type]
    assert Money.parse("1.25", Currency.CNY) == Money(1_250_000_000, Currency.CNY)


@given(st.integers(0, MAX_NANOS))
def test_parse_round_trips_every_nano_amount(nanos: int) -> None:
    text = Money(nanos, Currency.USD).to_decimal_str()
    assert parse_nanos(text) == nanos
    assert parse_nanos(f"{nanos // NANOS_PER_UNIT}.{nanos % NANOS_PER_UNIT:09d}") == nanos


@given(st.integers(0, 10**9 - 1), st.integers(1, 10**9 - 1), st.integers(10, 40))
def test_parse_rejects_more_than_nine_places(units: int, frac: int, places: int) -> None:
    text = f"{units}.{frac:0{places}d}"
    with pytest.raises(ValueError, match="decimal places"):
        parse_nanos(text)


@given(st.integers(1, MAX_NANOS))
def test_parse_rejects_negatives_unless_allowed(nanos: int) -> None:
    text = "-" + Money(nanos, Currency.USD).to_decimal_str()
    with pytest.raises(ValueError, match="negative"):
        parse_nanos(text)
    assert parse_nanos(text, allow_negative=True) == -nanos


@given(st.integers(MAX_NANOS + 1, 10**30))
def test_parse_rejects_overflow(nanos: int) -> None:
    text = f"{nanos // NANOS_PER_UNIT}.{nanos % NANOS_PER_UNIT:09d}"
    with pytest.raises(ValueError, match="exceeds the maximum"):
        parse_nanos(text)


@given(st.text(max_size=30))
def test_parse_never_returns_out_of_range(text: str) -> None:
    """Whatever the input: a ValueError, or a nano count that fits a signed 64-bit column."""
    try:
        nanos = parse_nanos(text, allow_negative=True)
    except ValueError:
        return
    assert type(nanos) is int
    assert abs(nanos) <= MAX_NANOS < INT64_MAX
    assert nanos == int(Decimal(text.strip()) * NANOS_PER_UNIT)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_float_reprs_beyond_nine_places_rejected(x: float) -> None:
    """A float's repr is either an exact short decimal or rejected: never silently rounded."""
    text = repr(x)
    try:
        nanos = parse_nanos(text, allow_negative=True)
    except ValueError:
        return
    assert Decimal(nanos) / NANOS_PER_UNIT == Decimal(text)


# -------------------------------------------------------------------------- rounding


@pytest.mark.parametrize(
    ("units", "nanos"),
    [
        ("0.0000000005", 1),  # half rounds up
        ("0.00000000049999", 0),
        ("0.0000000015", 2),
        ("0.0000000025", 3),  # half-up, not banker's rounding
        ("1.0000000004999999", 1_000_000_000),
        ("-0.0000000005", -1),  # half away from zero
        ("0", 0),
        ("123.456789012", 123_456_789_012),
    ],
)
def test_round_nanos_half_up(units: str, nanos: int) -> None:
    assert round_nanos(Decimal(units)) == nanos


@pytest.mark.parametrize("bad", [Decimal("NaN"), Decimal("Infinity"), 1.5, 1])
def test_round_nanos_rejects_non_finite_and_non_decimal(bad: object) -> None:
    with pytest.raises(ValueError):
        round_nanos(bad)  # type: ignore[arg-type]


@given(st.integers(0, 10**15), st.integers(0, 10**6))
def test_round_nanos_is_half_up_of_the_exact_value(numerator: int, scale_exp: int) -> None:
    exact = Fraction(numerator, 10 ** (scale_exp % 13))  # units, up to 12 decimal places
    units = Decimal(numerator).scaleb(-(scale_exp % 13))
    nanos = round_nanos(units)
    scaled = exact * NANOS_PER_UNIT
    assert scaled - Fraction(1, 2) < nanos <= scaled + Fraction(1, 2)
    assert nanos == round_half_up_fraction(scaled)


@given(st.fractions(), st.integers(-(10**6), 10**6))
def test_round_half_up_fraction(x: Fraction, shift: int) -> None:
    n = round_half_up_fraction(x)
    assert abs(n - x) <= Fraction(1, 2)
    if abs(n - x) == Fraction(1, 2):  # a tie: away from zero
        assert abs(n) > abs(x)
    assert round_half_up_fraction(-x) == -n
    assert round_half_up_fraction(x + shift) == n + shift


def test_money_from_units_rounds_once() -> None:
    # three components of 0.4 nanos each: 1.2 nanos in total, rounded once to 1 nano,
    # where rounding each component would give 0
    parts = [Decimal("0.0000000004")] * 3
    assert money_from_units(sum(parts, Decimal(0)), Currency.USD).nanos == 1
    assert sum(round_nanos(p) for p in parts) == 0


# ------------------------------------------------------------------------ the type


def test_money_rejects_floats_and_bools() -> None:
    with pytest.raises(TypeError, match="int"):
        Money(1.0, Currency.USD)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int"):
        Money(True, Currency.USD)


def test_money_arithmetic_and_ordering_within_a_currency() -> None:
    a, b = Money(5, Currency.USD), Money(3, Currency.USD)
    assert a + b == Money(8, Currency.USD)
    assert a - b == Money(2, Currency.USD)
    assert -a == Money(-5, Currency.USD)
    assert b < a and a > b and a >= a and b <= a
    assert not Money.zero(Currency.CNY)
    assert bool(a)


def test_money_refuses_mixing_currencies() -> None:
    usd, cny = Money(1, Currency.USD), Money(1, Currency.CNY)
    with pytest.raises(ValueError, match="currency mismatch"):
        _ = usd + cny
    with pytest.raises(ValueError, match="currency mismatch"):
        _ = usd < cny
    with pytest.raises(TypeError):
        _ = usd + 1  # type: ignore[operator]


@pytest.mark.parametrize(
    ("nanos", "currency", "formatted", "plain"),
    [
        (12_500_000_000, Currency.USD, "$12.50", "12.5"),
        (123_000, Currency.USD, "$0.000123", "0.000123"),
        (-12_500_000_000, Currency.CNY, "-¥12.50", "-12.5"),
        (0, Currency.USD, "$0.00", "0"),
        (1, Currency.USD, "$0.000000001", "0.000000001"),
        (7 * NANOS_PER_UNIT, Currency.CNY, "¥7.00", "7"),
    ],
)
def test_money_formats(nanos: int, currency: Currency, formatted: str, plain: str) -> None:
    m = Money(nanos, currency)
    assert m.format() == str(m) == formatted
    assert m.to_decimal_str() == plain
    assert m.to_decimal() == Decimal(plain)


# ------------------------------------------------------------------------ conversion


def test_convert_rounds_once_half_up() -> None:
    one_usd = Money(NANOS_PER_UNIT, Currency.USD)
    assert convert(one_usd, Decimal("6.737012"), Currency.CNY) == Money(6_737_012_000, Currency.CNY)
    # 1 nano * 2.5 = 2.5 -> 3; 1 nano / 2 = 0.5 -> 1
    assert convert(Money(1, Currency.USD), Decimal("2.5"), Currency.CNY).nanos == 3
    assert convert(Money(1, Currency.USD), Fraction(1, 2), Currency.CNY).nanos == 1
    assert convert(Money(-1, Currency.USD), Fraction(1, 2), Currency.CNY).nanos == -1


@pytest.mark.parametrize("rate", [Decimal(0), Decimal(-1), Decimal("NaN"), Fraction(0), 1.5])
def test_convert_rejects_bad_rates(rate: object) -> None:
    with pytest.raises(ValueError, match="FX rate"):
        convert(Money(1, Currency.USD), rate, Currency.CNY)  # type: ignore[arg-type]
