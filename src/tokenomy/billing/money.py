"""Money as an integer count of nano-units of a currency: no float ever touches it.

One unit (a dollar, a yuan) is ``10**9`` nanos. Prices are ``Decimal`` per million tokens;
a cost is computed exactly in ``Decimal`` and turned into nanos by :func:`round_nanos`,
the single rounding rule of the system:

    exact cost (units) = sum(tokens * price_per_million / 10**6) [+ per-request fee]
    nanos              = round_half_up(exact cost * 10**9)        -- once, at the end

Rounding happens once per request total (never per component), and once per FX
conversion, half away from zero ("half-up" for the non-negative amounts costs are).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal, Inexact, InvalidOperation, localcontext
from enum import StrEnum
from fractions import Fraction
from typing import Final

NANOS_PER_UNIT: Final = 10**9
# Largest magnitude a parsed user amount may have: 10**18 nanos is one billion units,
# far above any balance or budget, and well inside a signed 64-bit column (9.2e18).
MAX_NANOS: Final = 10**18
MAX_DECIMAL_PLACES: Final = 9
_MAX_INPUT_LEN: Final = 64
# ASCII only: a bare \d also matches full-width and Arabic-Indic digits, which Decimal accepts.
_AMOUNT_RE: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)
# Exact arithmetic: products of token counts and prices need far fewer than 80 digits,
# and the Inexact trap turns any silent rounding into an error instead of a wrong bill.
EXACT: Final = Context(prec=80, rounding=ROUND_HALF_UP, traps=[InvalidOperation, Inexact])


class Currency(StrEnum):
    """Currencies the gateway bills in."""

    USD = "USD"
    CNY = "CNY"

    @property
    def symbol(self) -> str:
        return _SYMBOLS[self]


_SYMBOLS: Final = {Currency.USD: "$", Currency.CNY: "¥"}


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount: ``nanos`` of ``currency`` (1 unit = 10**9 nanos)."""

    nanos: int
    currency: Currency

    def __post_init__(self) -> None:
        # bool is an int subclass; a float here would be the bug this type exists to stop.
        if type(self.nanos) is not int:
            raise TypeError(f"Money.nanos must be int, not {type(self.nanos).__name__}")
        if not isinstance(self.currency, Currency):
            raise TypeError(f"Money.currency must be Currency, not {self.currency!r}")

    @classmethod
    def zero(cls, currency: Currency) -> Money:
        return cls(0, currency)

    @classmethod
    def parse(cls, text: str, currency: Currency, *, allow_negative: bool = False) -> Money:
        """A user-supplied amount such as ``"12.50"``; see :func:`parse_nanos`."""
        return cls(parse_nanos(text, allow_negative=allow_negative), currency)

    def _check(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency is not self.currency:
            raise ValueError(f"currency mismatch: {self.currency} vs {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._check(other)
        return Money(self.nanos + other.nanos, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._check(other)
        return Money(self.nanos - other.nanos, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.nanos, self.currency)

    def __bool__(self) -> bool:
        return self.nanos != 0

    # Ordering only within one currency: comparing dollars with yuan is a bug, not False.
    def __lt__(self, other: Money) -> bool:
        self._check(other)
        return self.nanos < other.nanos

    def __le__(self, other: Money) -> bool:
        self._check(other)
        return self.nanos <= other.nanos

    def __gt__(self, other: Money) -> bool:
        self._check(other)
        return self.nanos > other.nanos

    def __ge__(self, other: Money) -> bool:
        self._check(other)
        return self.nanos >= other.nanos

    def to_decimal(self) -> Decimal:
        """The exact amount in units, e.g. ``Decimal("0.000123")``."""
        return Decimal(self.nanos).scaleb(-MAX_DECIMAL_PLACES)

    def to_decimal_str(self) -> str:
        """The exact amount as a plain decimal string, no exponent: ``"12.5"``, ``"0"``."""
        return _plain(self.to_decimal())

    def format(self, *, min_places: int = 2) -> str:
        """Human form with the currency symbol: ``"$0.000123"``, ``"-¥12.50"``."""
        sign = "-" if self.nanos < 0 else ""
        units, frac = divmod(abs(self.nanos), NANOS_PER_UNIT)
        digits = f"{frac:09d}".rstrip("0").ljust(min_places, "0")
        body = f"{units}.{digits}" if digits else str(units)
        return f"{sign}{self.currency.symbol}{body}"

    def __str__(self) -> str:
        return self.format()


def parse_nanos(text: str, *, allow_negative: bool = False) -> int:
    """Nanos from a decimal string like ``"12.50"``, with a clear ``ValueError`` otherwise.

    Rejects non-strings (floats would carry binary error), exponents, NaN and Infinity,
    more than 9 decimal places, negatives unless ``allow_negative``, and magnitudes above
    ``MAX_NANOS``.
    """
    if not isinstance(text, str):
        raise ValueError(f"amount must be a decimal string, not {type(text).__name__}")
    s = text.strip()
    if not s:
        raise ValueError("amount is empty")
    if len(s) > _MAX_INPUT_LEN:
        raise ValueError(f"amount is longer than {_MAX_INPUT_LEN} characters")
    if s.lstrip("+-").lower() in {"nan", "snan", "inf", "infinity"}:
        raise ValueError(f"amount must be a finite number, not {s!r}")
    if not _AMOUNT_RE.fullmatch(s):
        raise ValueError(f"amount {s!r} is not a plain decimal number such as 12.50")
    frac = s.partition(".")[2]
    if len(frac) > MAX_DECIMAL_PLACES:
        raise ValueError(f"amount {s!r} has more than {MAX_DECIMAL_PLACES} decimal places")
    value = Decimal(s)
    if value < 0 and not allow_negative:
        raise ValueError(f"amount {s!r} must not be negative")
    nanos = int(value.scaleb(MAX_DECIMAL_PLACES, EXACT))
    if abs(nanos) > MAX_NANOS:
        raise ValueError(f"amount {s!r} exceeds the maximum of {MAX_NANOS // NANOS_PER_UNIT}")
    return nanos


def round_nanos(units: Decimal) -> int:
    """The one rounding rule: exact ``units`` to nanos, half away from zero."""
    if not isinstance(units, Decimal) or not units.is_finite():
        raise ValueError(f"cannot round {units!r} to nanos")
    with localcontext(EXACT):
        return int(units.scaleb(MAX_DECIMAL_PLACES).to_integral_value(rounding=ROUND_HALF_UP))


def money_from_units(units: Decimal, currency: Currency) -> Money:
    """An exact Decimal amount of units as Money, rounded once by :func:`round_nanos`."""
    return Money(round_nanos(units), currency)


def convert(amount: Money, rate: Decimal | Fraction, to: Currency) -> Money:
    """``amount`` times ``rate`` (units of ``to`` per unit of ``amount``), rounded once.

    Computed as an exact fraction, so an inverted rate (1 / 6.737012) loses nothing
    before the single half-up rounding to nanos.
    """
    if isinstance(rate, Decimal):
        if not rate.is_finite():
            raise ValueError(f"FX rate must be finite, not {rate!r}")
        rate = Fraction(rate)
    if not isinstance(rate, Fraction) or rate <= 0:
        raise ValueError(f"FX rate must be a positive Decimal or Fraction, not {rate!r}")
    return Money(round_half_up_fraction(Fraction(amount.nanos) * rate), to)


def round_half_up_fraction(x: Fraction) -> int:
    """``x`` rounded to an integer, halves away from zero, with integer arithmetic only."""
    return round_half_up_div(x.numerator, x.denominator)


def round_half_up_div(num: int, denom: int) -> int:
    """``num / denom`` (``denom`` > 0) rounded to an integer, halves away from zero."""
    q, r = divmod(abs(num), denom)
    if 2 * r >= denom:
        q += 1
    return q if num >= 0 else -q


def _plain(d: Decimal) -> str:
    """A Decimal as a plain string without exponent or trailing zeros."""
    if d.is_zero():
        return "0"
    return format(d.normalize(), "f")
