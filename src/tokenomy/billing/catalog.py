"""The price catalogue as immutable objects: effective-dated versions per vendor model.

Prices are ``Decimal`` units of the version's currency per million tokens. A version
applies from its ``effective_from`` until the next version's (or the model's
``priced_until``); a usage record keeps ``PriceVersion.id`` so it can be re-priced later.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from tokenomy.billing.money import Currency
from tokenomy.billing.windows import TimeWindow, first_window, require_aware

TOKEN_FIELDS: Final = (
    "input",
    "cached_input",
    "cache_write",
    "cache_write_1h",
    "output",
    "reasoning",
)
# How far ahead PriceBook.outlook looks for the next change: a window excepted over a long
# public holiday (a week plus weekends) must not hide the change after it.
_OUTLOOK_DAYS: Final = 40


class PricingError(ValueError):
    """A price cannot be computed: bad catalogue data, or a request it does not cover."""


class PriceNotFound(LookupError):
    """No price is known for this vendor and model at that instant."""


def _in_utc(obj: object, *names: str) -> None:
    """The same instants in UTC: every request is timed in UTC, and comparing datetimes
    of two different time zones costs about twenty times what comparing in one does."""
    for name in names:
        t = getattr(obj, name)
        if t is not None and t.tzinfo is not UTC:
            object.__setattr__(obj, name, t.astimezone(UTC))


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """Per-million-token prices of one tier; ``None`` means "billed as the fallback".

    Fallbacks: cache reads and writes at ``input``, one-hour cache writes at
    ``cache_write`` (Anthropic's 2x input, where the catalogue gives it), reasoning at
    ``output``.
    ``request`` is a fixed fee per request, in units (not per million).
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    request: Decimal = Decimal(0)
    cache_write_1h: Decimal | None = None

    def __post_init__(self) -> None:
        for name in (*TOKEN_FIELDS, "request"):
            v = getattr(self, name)
            if v is None:
                continue
            if not isinstance(v, Decimal) or not v.is_finite() or v < 0:
                raise PricingError(f"price {name} must be a non-negative Decimal, not {v!r}")

    def resolved(self) -> TokenPrices:
        """The same prices with every fallback filled in."""
        write = self.input if self.cache_write is None else self.cache_write
        return replace(
            self,
            cached_input=self.input if self.cached_input is None else self.cached_input,
            cache_write=write,
            cache_write_1h=write if self.cache_write_1h is None else self.cache_write_1h,
            reasoning=self.output if self.reasoning is None else self.reasoning,
        )

    def with_overrides(self, overrides: Mapping[str, Decimal]) -> TokenPrices:
        return replace(self, **dict(overrides)) if overrides else self


@dataclass(frozen=True, slots=True)
class Tier:
    """Prices for requests whose prompt (all input tokens) is at most ``up_to`` tokens."""

    up_to: int | None
    prices: TokenPrices


@dataclass(frozen=True, slots=True)
class Promotion:
    """A discount active in ``[starts, ends)``: override some prices, then scale them."""

    name: str
    starts: datetime
    ends: datetime | None
    multiplier: Decimal = Decimal(1)
    overrides: tuple[tuple[str, Decimal], ...] = ()

    def __post_init__(self) -> None:
        require_aware(self.starts, f"promotion {self.name!r} starts")
        if self.ends is not None and require_aware(self.ends, "ends") <= self.starts:
            raise PricingError(f"promotion {self.name!r} ends before it starts")
        _in_utc(self, "starts", "ends")
        if self.multiplier < 0:
            raise PricingError(f"promotion {self.name!r}: multiplier must not be negative")
        for key, _ in self.overrides:
            if key not in (*TOKEN_FIELDS, "request"):
                raise PricingError(f"promotion {self.name!r}: unknown price {key!r}")

    def active(self, at: datetime) -> bool:
        return self.starts <= at and (self.ends is None or at < self.ends)

    def applied_to(self, prices: TokenPrices) -> TokenPrices:
        return prices.with_overrides(dict(self.overrides))


@dataclass(frozen=True, slots=True)
class PriceVersion:
    """The prices of one model from ``effective_from`` until ``until`` (exclusive)."""

    vendor: str
    model: str
    currency: Currency
    effective_from: datetime
    until: datetime | None
    tiers: tuple[Tier, ...]
    source: str
    as_of: date
    status: str
    windows: tuple[TimeWindow, ...] = ()
    promotions: tuple[Promotion, ...] = ()
    batch_multiplier: Decimal | None = None
    note: str = ""
    id: str = field(init=False)

    def __post_init__(self) -> None:
        require_aware(self.effective_from, "effective_from")
        if not self.tiers:
            raise PricingError(f"{self.vendor}/{self.model}: a version needs prices")
        bounds = [t.up_to for t in self.tiers]
        if bounds[-1] is not None or None in bounds[:-1]:
            raise PricingError(f"{self.vendor}/{self.model}: only the last tier is open-ended")
        finite = [b for b in bounds if b is not None]
        if finite != sorted(set(finite)) or any(b <= 0 for b in finite):
            raise PricingError(f"{self.vendor}/{self.model}: tier bounds must increase")
        if self.batch_multiplier is not None and self.batch_multiplier < 0:
            raise PricingError(f"{self.vendor}/{self.model}: negative batch multiplier")
        _in_utc(self, "effective_from", "until")
        stamp = self.effective_from.strftime("%Y-%m-%dT%H:%M:%SZ")
        object.__setattr__(self, "id", f"{self.vendor}/{self.model}/{self.currency}@{stamp}")

    def tier_index(self, prompt_tokens: int) -> int:
        """Index of the tier a prompt of ``prompt_tokens`` tokens is billed in."""
        for i, tier in enumerate(self.tiers):
            if tier.up_to is None or prompt_tokens <= tier.up_to:
                return i
        raise AssertionError("unreachable: the last tier is open-ended")

    def window_at(self, at: datetime) -> TimeWindow | None:
        return first_window(self.windows, at)

    def promotion_at(self, at: datetime) -> Promotion | None:
        """The first active promotion in catalogue order (promotions never stack)."""
        for p in self.promotions:
            if p.active(at):
                return p
        return None

    def covers(self, at: datetime) -> bool:
        return self.effective_from <= at and (self.until is None or at < self.until)


@dataclass(frozen=True, slots=True)
class ModelPrices:
    """Every version of one vendor model in one currency, oldest first."""

    vendor: str
    model: str
    currency: Currency
    versions: tuple[PriceVersion, ...]

    def at(self, at: datetime) -> PriceVersion | None:
        for v in reversed(self.versions):
            if v.effective_from <= at:
                return v if v.covers(at) else None
        return None


@dataclass(frozen=True, slots=True)
class PriceOutlook:
    """What applies at an instant and when that next changes (``None``: not scheduled)."""

    version: PriceVersion
    window: TimeWindow | None
    promotion: Promotion | None
    changes_at: datetime | None
    next_version: PriceVersion | None


class PriceBook:
    """All known prices, looked up by vendor, model and instant. Immutable once built."""

    __slots__ = ("_by_id", "_models")

    def __init__(self, models: Iterable[ModelPrices]) -> None:
        by_model: dict[tuple[str, str], list[ModelPrices]] = {}
        by_id: dict[str, PriceVersion] = {}
        for m in models:
            entries = by_model.setdefault((m.vendor, m.model), [])
            if any(e.currency is m.currency for e in entries):
                raise PricingError(f"{m.vendor}/{m.model} priced twice in {m.currency}")
            entries.append(m)
            for v in m.versions:
                by_id[v.id] = v
        self._models = {k: tuple(v) for k, v in by_model.items()}
        self._by_id = by_id

    @classmethod
    def load(cls, overrides: Iterable[Mapping[str, Any]] = ()) -> PriceBook:
        """The packaged catalogue, with ``overrides`` (entries shaped like prices.yaml's)."""
        from tokenomy.billing.price_schema import load_catalog_models  # pydantic: load lazily

        return cls(load_catalog_models(overrides))

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._models

    def __iter__(self) -> Iterator[ModelPrices]:
        for entries in self._models.values():
            yield from entries

    def version(self, version_id: str) -> PriceVersion:
        """The version with this id, as kept on a usage record."""
        try:
            return self._by_id[version_id]
        except KeyError:
            raise PriceNotFound(f"no price version {version_id!r}") from None

    def lookup(
        self, vendor: str, model: str, at: datetime, *, currency: Currency | None = None
    ) -> PriceVersion:
        """The version in effect at ``at`` (the first-listed currency unless one is asked)."""
        require_aware(at)
        entries = self._models.get((vendor, model), ())
        for m in entries:
            if currency is None or m.currency is currency:
                v = m.at(at)
                if v is None:
                    break
                return v
        raise PriceNotFound(f"no price for {vendor}/{model} at {at.isoformat()}")

    def outlook(
        self, vendor: str, model: str, at: datetime, *, currency: Currency | None = None
    ) -> PriceOutlook:
        """What applies now and the next instant at which the applicable price changes."""
        version = self.lookup(vendor, model, at, currency=currency)
        candidates: set[datetime] = set()
        if version.until is not None:
            candidates.add(version.until)
        for p in version.promotions:
            candidates.update(t for t in (p.starts, p.ends) if t is not None and t > at)
        for w in version.windows:
            candidates.update(w.boundaries(at, _OUTLOOK_DAYS))
        horizon = at + timedelta(days=_OUTLOOK_DAYS)
        now_state = _state(version, at)
        changes_at = None
        for t in sorted(c for c in candidates if c <= horizon or c == version.until):
            if t == version.until or _state(version, t) != now_state:
                changes_at = t
                break
        next_version = None
        if changes_at is not None and changes_at == version.until:
            try:
                next_version = self.lookup(vendor, model, changes_at, currency=version.currency)
            except PriceNotFound:
                next_version = None
        return PriceOutlook(
            version=version,
            window=version.window_at(at),
            promotion=version.promotion_at(at),
            changes_at=changes_at,
            next_version=next_version,
        )


def _state(version: PriceVersion, at: datetime) -> tuple[str | None, str | None]:
    w, p = version.window_at(at), version.promotion_at(at)
    return (w.name if w else None, p.name if p else None)
