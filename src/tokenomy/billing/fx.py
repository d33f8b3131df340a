"""A small dated table of exchange rates, for showing or settling money across currencies."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from fractions import Fraction
from typing import Any

from tokenomy.billing.money import Currency, Money, convert


@dataclass(frozen=True, slots=True)
class FxRate:
    """``rate`` units of ``quote`` per one unit of ``base``, from ``as_of`` on."""

    base: Currency
    quote: Currency
    rate: Decimal
    as_of: date
    source: str

    def __post_init__(self) -> None:
        if self.base is self.quote:
            raise ValueError("an FX rate needs two different currencies")
        if not isinstance(self.rate, Decimal) or not self.rate.is_finite() or self.rate <= 0:
            raise ValueError(f"FX rate must be a positive Decimal, not {self.rate!r}")


class FxTable:
    """Rates by date; a conversion uses the latest rate dated on or before the given day."""

    __slots__ = ("_rates",)

    def __init__(self, rates: Iterable[FxRate]) -> None:
        self._rates = tuple(sorted(rates, key=lambda r: r.as_of))

    @classmethod
    def load(cls, extra: Iterable[Mapping[str, Any]] = ()) -> FxTable:
        """The packaged fx.yaml plus ``extra`` rates from the app's config."""
        from tokenomy.billing.price_schema import read_packaged

        raw = read_packaged("fx.yaml") or {}
        return cls(_rate(r) for r in [*(raw.get("rates") or []), *extra])

    def __iter__(self) -> Iterator[FxRate]:
        return iter(self._rates)

    def rate(self, base: Currency, quote: Currency, on: date | None = None) -> Fraction:
        """Exact units of ``quote`` per unit of ``base`` on ``on`` (latest known if None)."""
        if base is quote:
            return Fraction(1)
        found: Fraction | None = None
        for r in self._rates:
            if on is not None and r.as_of > on:
                break
            if (r.base, r.quote) == (base, quote):
                found = Fraction(r.rate)
            elif (r.base, r.quote) == (quote, base):
                found = 1 / Fraction(r.rate)
        if found is None:
            raise LookupError(f"no {base}->{quote} rate on or before {on or 'today'}")
        return found

    def convert(self, amount: Money, to: Currency, on: date | None = None) -> Money:
        """``amount`` in ``to``, rounded half-up to nanos once."""
        return convert(amount, self.rate(amount.currency, to, on), to)


def _rate(r: Mapping[str, Any]) -> FxRate:
    value = r["rate"]
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValueError(f"quote FX rates as strings, not {value!r}")
    as_of = r["as_of"]
    return FxRate(
        base=Currency(r["base"]),
        quote=Currency(r["quote"]),
        rate=Decimal(str(value)),
        as_of=as_of if isinstance(as_of, date) else date.fromisoformat(str(as_of)),
        source=str(r["source"]),
    )
