"""Prices of generated media: a catalogue unit of one second of output, per size.

Entries live in ``catalog/media_prices.yaml`` with a source and an as-of date, as token
prices do; config ``video_prices`` entries of the same shape replace or add to them.
A job's cost is ``seconds * price`` in the price's currency, converted with the dated FX
table as one exact fraction and rounded half-up to nanos once: the same figure is held
at submission and posted at completion.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BeforeValidator, Field

from tokenomy.billing.catalog import PriceNotFound, PricingError
from tokenomy.billing.fx import FxTable
from tokenomy.billing.money import NANOS_PER_UNIT, Currency, round_half_up_fraction
from tokenomy.billing.price_schema import Status, _decimal, _Strict, read_packaged

Price = Annotated[Decimal, BeforeValidator(_decimal)]

#: The unit every media price is quoted in.
UNIT = "second"


@dataclass(frozen=True, slots=True)
class MediaPrice:
    """One version of a media model's prices: units of ``currency`` per output second."""

    vendor: str
    model: str
    currency: Currency
    effective_from: datetime
    until: datetime | None
    per_second: Mapping[str, Decimal]
    source: str
    as_of: date
    status: str

    @property
    def id(self) -> str:
        """Kept on each usage record, as a token price version's id is."""
        return f"{self.vendor}/{self.model}@{self.effective_from.isoformat()}/{UNIT}"

    def covers(self, at: datetime) -> bool:
        return self.effective_from <= at and (self.until is None or at < self.until)


@dataclass(frozen=True, slots=True)
class MediaCost:
    cost_nanos: int  # in the org's currency
    currency: Currency
    list_cost_nanos: int  # in the price's currency
    list_currency: Currency
    fx_rate: Fraction
    price: MediaPrice


class _VersionIn(_Strict):
    effective_from: AwareDatetime
    per_second: dict[str, Price] = Field(min_length=1)
    source: str | None = None
    as_of: date | None = None
    note: str = ""


class _ModelIn(_Strict):
    vendor: str = Field(min_length=1)
    model: str = Field(min_length=1)
    currency: Currency
    status: Status
    source: str = Field(min_length=1)
    as_of: date
    note: str = ""
    priced_until: AwareDatetime | None = None
    versions: list[_VersionIn] = Field(min_length=1)

    def build(self) -> list[MediaPrice]:
        ordered = sorted(self.versions, key=lambda v: v.effective_from)
        ends: list[datetime | None] = [*(v.effective_from for v in ordered[1:]), self.priced_until]
        return [
            MediaPrice(
                vendor=self.vendor,
                model=self.model,
                currency=self.currency,
                effective_from=v.effective_from,
                until=end,
                per_second=dict(v.per_second),
                source=v.source or self.source,
                as_of=v.as_of or self.as_of,
                status=self.status,
            )
            for v, end in zip(ordered, ends, strict=True)
        ]


class _CatalogIn(_Strict):
    schema_version: Literal[1] = Field(alias="schema")
    models: list[_ModelIn]


class MediaPriceBook:
    """Media prices by (vendor, model), each a list of versions in time order."""

    def __init__(self, prices: Iterable[MediaPrice]) -> None:
        self._by: dict[tuple[str, str], list[MediaPrice]] = {}
        for p in prices:
            self._by.setdefault((p.vendor, p.model), []).append(p)

    @classmethod
    def load(cls, overrides: Iterable[Mapping[str, Any]] = ()) -> MediaPriceBook:
        """The packaged media_prices.yaml; an override replaces the same vendor model."""
        raw = _CatalogIn.model_validate(read_packaged("media_prices.yaml"))
        models = {(m.vendor, m.model): m.build() for m in raw.models}
        for o in overrides:
            m = _ModelIn.model_validate(dict(o))
            models[(m.vendor, m.model)] = m.build()
        return cls(p for versions in models.values() for p in versions)

    def __contains__(self, ref: tuple[str, str]) -> bool:
        return ref in self._by

    def lookup(self, vendor: str, model: str, at: datetime) -> MediaPrice:
        for p in self._by.get((vendor, model), ()):
            if p.covers(at):
                return p
        raise PriceNotFound(f"no media price for {vendor}/{model} at {at.isoformat()}")

    def sizes(self, vendor: str, model: str, at: datetime) -> frozenset[str]:
        try:
            return frozenset(self.lookup(vendor, model, at).per_second)
        except PriceNotFound:
            return frozenset()


def media_cost(
    price: MediaPrice, size: str, seconds: int, currency: Currency, fx: FxTable, at: datetime
) -> MediaCost:
    """What ``seconds`` of output at ``size`` cost, exactly, in ``currency``."""
    per = price.per_second.get(size)
    if per is None:
        raise PricingError(f"{price.vendor}/{price.model} is not sold at size {size}")
    listed = Fraction(per) * seconds * NANOS_PER_UNIT
    rate = fx.rate(price.currency, currency, at.date())
    return MediaCost(
        cost_nanos=round_half_up_fraction(listed * rate),
        currency=currency,
        list_cost_nanos=round_half_up_fraction(listed),
        list_currency=price.currency,
        fx_rate=rate,
        price=price,
    )
