"""Validation of prices.yaml (and of config overrides) into catalogue objects.

Prices must be quoted strings (or integers) in YAML: an unquoted ``0.30`` is a float, and
a float never becomes money. Every entry needs ``source`` and ``as_of``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Annotated, Any, Literal

import yaml
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from tokenomy.billing.catalog import (
    ModelPrices,
    PriceVersion,
    PricingError,
    Promotion,
    Tier,
    TokenPrices,
)
from tokenomy.billing.money import Currency
from tokenomy.billing.windows import WEEKDAY_NAMES, TimeWindow

Status = Literal["confirmed", "reported", "unconfirmed", "simulated"]


def _decimal(v: Any) -> Decimal:
    if isinstance(v, bool | float):
        raise ValueError(f"quote prices and multipliers as strings ({v!r} is a float)")
    if isinstance(v, Decimal):
        d = v
    elif isinstance(v, int | str):
        try:
            d = Decimal(str(v).strip())
        except InvalidOperation:
            raise ValueError(f"{v!r} is not a decimal number") from None
    else:
        raise ValueError(f"expected a decimal string, got {type(v).__name__}")
    if not d.is_finite() or d < 0:
        raise ValueError(f"{v!r} must be a finite, non-negative number")
    return d


def _clock(v: Any) -> time:
    if isinstance(v, time):
        return v
    if not isinstance(v, str):
        raise ValueError("times are quoted 'HH:MM' strings")
    return time.fromisoformat(v)


Price = Annotated[Decimal, BeforeValidator(_decimal)]
Clock = Annotated[time, BeforeValidator(_clock)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PricesIn(_Strict):
    input: Price
    output: Price
    cached_input: Price | None = None
    cache_write: Price | None = None
    cache_write_1h: Price | None = None
    reasoning: Price | None = None
    request: Price = Decimal(0)

    def build(self) -> TokenPrices:
        return TokenPrices(**self.model_dump())


class TierIn(PricesIn):
    up_to: int | None = Field(default=None, gt=0)

    def build(self) -> TokenPrices:
        return TokenPrices(**self.model_dump(exclude={"up_to"}))


class WindowIn(_Strict):
    name: str
    tz: str
    start: Clock
    end: Clock
    multiplier: Price
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None
    except_dates: list[date] = []

    def build(self) -> TimeWindow:
        days = frozenset(WEEKDAY_NAMES.index(d) for d in self.days or WEEKDAY_NAMES)
        return TimeWindow(
            name=self.name,
            tz=self.tz,
            start=self.start,
            end=self.end,
            multiplier=self.multiplier,
            days=days,
            except_dates=frozenset(self.except_dates),
        )


class PromotionIn(_Strict):
    name: str
    starts: AwareDatetime
    ends: AwareDatetime | None = None
    multiplier: Price = Decimal(1)
    prices: dict[str, Price] = {}
    note: str = ""

    def build(self) -> Promotion:
        return Promotion(
            name=self.name,
            starts=self.starts,
            ends=self.ends,
            multiplier=self.multiplier,
            overrides=tuple(sorted(self.prices.items())),
        )


class VersionIn(_Strict):
    effective_from: AwareDatetime
    prices: PricesIn | None = None
    tiers: list[TierIn] | None = None
    windows: list[WindowIn] = []
    promotions: list[PromotionIn] = []
    batch: Price | None = None
    source: str | None = None
    as_of: date | None = None
    note: str = ""

    @model_validator(mode="after")
    def _one_price_form(self) -> VersionIn:
        if (self.prices is None) == (self.tiers is None):
            raise ValueError("give either prices or tiers, not both or neither")
        for kind, names in (("window", self.windows), ("promotion", self.promotions)):
            labels = [x.name for x in names]
            if len(labels) != len(set(labels)):
                raise ValueError(f"{kind} names must be unique within a version")
        return self

    def build_tiers(self) -> tuple[Tier, ...]:
        if self.prices is not None:
            return (Tier(None, self.prices.build()),)
        return tuple(Tier(t.up_to, t.build()) for t in self.tiers or [])


class ModelIn(_Strict):
    vendor: str = Field(min_length=1)
    model: str = Field(min_length=1)
    currency: Currency
    status: Status
    source: str = Field(min_length=1)
    as_of: date
    note: str = ""
    priced_until: AwareDatetime | None = None
    versions: list[VersionIn] = Field(min_length=1)

    def build(self) -> ModelPrices:
        ordered = sorted(self.versions, key=lambda v: v.effective_from)
        starts = [v.effective_from for v in ordered]
        if len(set(starts)) != len(starts):
            raise PricingError(f"{self.vendor}/{self.model}: two versions start together")
        ends: list[datetime | None] = [*starts[1:], self.priced_until]
        if self.priced_until is not None and self.priced_until <= starts[-1]:
            raise PricingError(f"{self.vendor}/{self.model}: priced_until before last version")
        versions = tuple(
            PriceVersion(
                vendor=self.vendor,
                model=self.model,
                currency=self.currency,
                effective_from=v.effective_from,
                until=end,
                tiers=v.build_tiers(),
                windows=tuple(w.build() for w in v.windows),
                promotions=tuple(p.build() for p in v.promotions),
                batch_multiplier=v.batch,
                source=v.source or self.source,
                as_of=v.as_of or self.as_of,
                status=self.status,
                note=v.note or self.note,
            )
            for v, end in zip(ordered, ends, strict=True)
        )
        return ModelPrices(self.vendor, self.model, self.currency, versions)


class CatalogIn(_Strict):
    schema_version: Literal[1] = Field(alias="schema")
    models: list[ModelIn]


def parse_models(entries: Iterable[Mapping[str, Any]]) -> list[ModelPrices]:
    """Catalogue objects from entries shaped like prices.yaml's ``models`` items."""
    return [ModelIn.model_validate(dict(e)).build() for e in entries]


def read_packaged(name: str) -> Any:
    """A YAML file shipped in ``tokenomy.catalog``, parsed safely."""
    text = resources.files("tokenomy.catalog").joinpath(name).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def load_catalog_models(overrides: Iterable[Mapping[str, Any]] = ()) -> list[ModelPrices]:
    """The packaged prices.yaml; an override replaces the entry of the same model and currency."""
    catalog = CatalogIn.model_validate(read_packaged("prices.yaml"))
    models = {(m.vendor, m.model, m.currency): m.build() for m in catalog.models}
    for m in parse_models(overrides):
        models[(m.vendor, m.model, m.currency)] = m
    return list(models.values())
