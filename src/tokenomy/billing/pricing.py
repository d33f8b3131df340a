"""What a request costs: exact Decimal per component, rounded to nanos once per request.

Order of application, for the tier chosen by the prompt length (every input token):

1. an active promotion's price overrides replace the tier's prices;
2. fallbacks fill the gaps (cache reads and writes at the input price, one-hour cache
   writes at the cache-write price, reasoning at output);
3. token prices are scaled by the window multiplier (time of day), the promotion
   multiplier and the batch multiplier; the per-request fee is not scaled;
4. each component is ``tokens * price / 10**6`` exactly; the sum plus the fee is rounded
   half-up to nanos once (:func:`tokenomy.billing.money.round_nanos`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from fractions import Fraction
from typing import Final, NamedTuple

from tokenomy.billing.catalog import PriceVersion, PricingError, Promotion, TokenPrices
from tokenomy.billing.fx import FxTable
from tokenomy.billing.identity_memo import IdentityMemo
from tokenomy.billing.money import (
    EXACT,
    MAX_DECIMAL_PLACES,
    Currency,
    Money,
    round_half_up_div,
    round_nanos,
)
from tokenomy.billing.windows import TimeWindow, require_aware
from tokenomy.core.usage import Usage

_MILLION: Final = Decimal(10**6)
_ONE: Final = Decimal(1)
# Display only (never money): per-token price strings for /v1/models.
_DISPLAY: Final = Context(prec=18, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class CostLine:
    """One billed component: ``tokens`` at ``price_per_million`` (after every multiplier)."""

    component: str
    tokens: int
    price_per_million: Decimal
    amount: Decimal  # exact units, not rounded


@dataclass(frozen=True, slots=True)
class Cost:
    """The cost of one request and the price it was billed at."""

    version_id: str
    total: Money
    exact: Decimal
    lines: tuple[CostLine, ...]
    tier: int
    window: str | None
    promotion: str | None
    batch: bool

    @property
    def currency(self) -> Currency:
        return self.total.currency


class _Counts(NamedTuple):
    uncached: int
    cached: int
    write: int
    plain_output: int
    reasoning: int
    #: The part of ``write`` written to a one-hour cache.
    write_1h: int

    @classmethod
    def of(cls, usage: Usage) -> _Counts:
        """Token counts per component, clamped so they never add up to more than reported."""
        inp, cached, write = usage.input_tokens, usage.cached_tokens, usage.cache_write_tokens
        out, reasoning = usage.output_tokens, usage.reasoning_tokens
        hour = usage.cache_write_1h_tokens
        if not (
            type(inp) is type(cached) is type(write) is type(out) is type(reasoning) is int
            and type(hour) is int
        ):
            for name in _USAGE_FIELDS:  # name the first field that is not an int
                _require_int(getattr(usage, name), name)
        if not (
            cached >= 0
            and write >= 0
            and cached + write <= inp
            and 0 <= reasoning <= out
            and 0 <= hour <= write
        ):
            # Clamping leaves counts within these bounds as they are: only others need it.
            inp = max(0, inp)
            cached = min(max(0, cached), inp)
            write = min(max(0, write), inp - cached)
            out = max(0, out)
            reasoning = min(max(0, reasoning), out)
            hour = min(max(0, hour), write)
        return cls(inp - cached - write, cached, write - hour, out - reasoning, reasoning, hour)


_USAGE_FIELDS: Final = (
    "input_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cache_write_1h_tokens",
)


def _require_int(v: object, name: str) -> None:
    if type(v) is not int:
        raise TypeError(f"usage.{name} must be int, not {type(v).__name__}")


def _scale(version: PriceVersion, at: datetime, batch: bool) -> Decimal:
    window = version.window_at(at)
    promo = version.promotion_at(at)
    m = window.multiplier if window else _ONE
    m *= promo.multiplier if promo else _ONE
    if batch:
        if version.batch_multiplier is None:
            raise PricingError(f"{version.id} has no batch price")
        m *= version.batch_multiplier
    return m


def _given_prices(version: PriceVersion, tier: int, promo: Promotion | None) -> TokenPrices:
    """The tier's prices with the promotion's overrides, fallbacks not yet filled in."""
    prices = version.tiers[tier].prices
    return promo.applied_to(prices) if promo else prices


def price_request(
    version: PriceVersion, usage: Usage, *, at: datetime, batch: bool = False
) -> Cost:
    """The cost of ``usage`` under ``version`` at instant ``at`` (tz-aware)."""
    require_aware(at)
    if not version.covers(at):
        raise PricingError(f"{version.id} does not apply at {at.isoformat()}")
    counts = _Counts.of(usage)
    tier = version.tier_index(counts.uncached + counts.cached + counts.write + counts.write_1h)
    window, promo = version.window_at(at), version.promotion_at(at)
    r = _rates(version, tier, window, promo, batch)
    with localcontext(EXACT):
        rows: list[tuple[str, int, Decimal]] = [
            ("input", counts.uncached, r.input),
            ("cached_input", counts.cached, r.cached_input),
            ("cache_write", counts.write, r.cache_write),
            ("cache_write_1h", counts.write_1h, r.cache_write_1h),
        ]
        if r.reasoning is None:  # reasoning is billed as ordinary output
            rows.append(("output", counts.plain_output + counts.reasoning, r.output))
        else:
            rows += [("output", counts.plain_output, r.output)]
            rows += [("reasoning", counts.reasoning, r.reasoning)]
        lines = tuple(
            CostLine(name, n, price, n * price / _MILLION) for name, n, price in rows if n
        )
        exact = sum((line.amount for line in lines), Decimal(0)) + r.request
    if r.request:
        lines += (CostLine("request", 1, r.request, r.request),)
    return Cost(
        version_id=version.id,
        total=Money(round_nanos(exact), version.currency),
        exact=exact,
        lines=lines,
        tier=tier,
        window=window.name if window else None,
        promotion=promo.name if promo else None,
        batch=batch,
    )


def cost_nanos(
    version: PriceVersion, usage: Usage, *, at: datetime, batch: bool = False
) -> tuple[int, Fraction]:
    """``price_request``'s total in nanos, and the exact cost in nanos, in integers.

    The same prices, fallbacks, multipliers and single half-up rounding, without building
    cost lines: what settling a call needs, on every request."""
    num, denom = exact_cost_nanos(version, usage, at=at, batch=batch)
    return round_half_up_div(num, denom), Fraction(num, denom)


def exact_cost_nanos(
    version: PriceVersion, usage: Usage, *, at: datetime, batch: bool = False
) -> tuple[int, int]:
    """The exact cost in nanos as ``(numerator, denominator)`` (see :func:`cost_nanos`),
    for a caller that needs no Fraction when no currency is converted."""
    require_aware(at)
    if not version.covers(at):
        raise PricingError(f"{version.id} does not apply at {at.isoformat()}")
    c = _Counts.of(usage)
    tier = version.tier_index(c.uncached + c.cached + c.write + c.write_1h)
    r = _int_rates(version, tier, version.window_at(at), version.promotion_at(at), batch)
    num = c.uncached * r[0] + c.cached * r[1] + c.write * r[2] + r[5]
    if c.write_1h:
        num += c.write_1h * r[7]
    if r[4] is None:  # reasoning is billed as ordinary output
        num += (c.plain_output + c.reasoning) * r[3]
    else:
        num += c.plain_output * r[3] + c.reasoning * r[4]
    return num, r[6]


#: (input, cached, cache write, output, reasoning or None, request fee, denominator,
#: one-hour cache write): a tier's scaled prices as nanos per token (the fee in nanos),
#: times the denominator.
_IntRates = tuple[int, int, int, int, int | None, int, int, int]
_int_scaled: IdentityMemo[_IntRates] = IdentityMemo()


def _int_rates(
    version: PriceVersion,
    tier: int,
    window: TimeWindow | None,
    promo: Promotion | None,
    batch: bool,
) -> _IntRates:
    key = (id(version), tier, id(window), id(promo), batch)
    hit = _int_scaled.get(version, key)
    if hit is not None:
        return hit
    d = _rates(version, tier, window, promo, batch)
    per_m = [d.input, d.cached_input, d.cache_write, d.output, d.cache_write_1h]
    if d.reasoning is not None:
        per_m.append(d.reasoning)
    ints, fee, denom = _nanos_over_one_denominator(per_m, d.request)
    reasoning = ints[5] if d.reasoning is not None else None
    out: _IntRates = (ints[0], ints[1], ints[2], ints[3], reasoning, fee, denom, ints[4])
    _int_scaled.put(version, key, out)
    return out


def _nanos_over_one_denominator(
    per_million: Sequence[Decimal], fee: Decimal
) -> tuple[list[int], int, int]:
    """Prices per million tokens (in units) as nanos per token, and a fee in units as
    nanos, all as integers over one common denominator: (per token, fee, denominator).
    Exact: the caller's integer arithmetic then rounds once."""
    # Per million tokens in units is per token in nanos times 10**9 / 10**6.
    per_token = [Fraction(p) * 10 ** (MAX_DECIMAL_PLACES - 6) for p in per_million]
    fee_nanos = Fraction(fee) * 10**MAX_DECIMAL_PLACES
    denom = math.lcm(*(f.denominator for f in (*per_token, fee_nanos)))
    return [int(f * denom) for f in per_token], int(fee_nanos * denom), denom


@dataclass(frozen=True, slots=True)
class _Scaled:
    """A tier's per-million prices after promotion overrides, fallbacks and multipliers;
    ``reasoning`` None when it is billed as output. ``request`` is never scaled."""

    input: Decimal
    cached_input: Decimal
    cache_write: Decimal
    output: Decimal
    reasoning: Decimal | None
    request: Decimal
    cache_write_1h: Decimal


_scaled: IdentityMemo[_Scaled] = IdentityMemo()


def _rates(
    version: PriceVersion,
    tier: int,
    window: TimeWindow | None,
    promo: Promotion | None,
    batch: bool,
) -> _Scaled:
    """The prices one request pays, worked out once per (version, tier, window, promotion,
    batch): every settlement asks, and resolving fallbacks and multipliers is most of the
    cost of pricing a call."""
    key = (id(version), tier, id(window), id(promo), batch)
    hit = _scaled.get(version, key)
    if hit is not None:
        return hit
    given = _given_prices(version, tier, promo)
    p = given.resolved()
    with localcontext(EXACT):
        m = window.multiplier if window else _ONE
        m *= promo.multiplier if promo else _ONE
        if batch:
            m *= _scale_batch(version)
        out = _Scaled(
            input=p.input * m,
            cached_input=_given(p.cached_input) * m,
            cache_write=_given(p.cache_write) * m,
            cache_write_1h=_given(p.cache_write_1h) * m,
            output=p.output * m,
            reasoning=None if given.reasoning is None else _given(p.reasoning) * m,
            request=p.request,
        )
    # The version holds its windows and promotions, so their ids stay theirs while cached.
    _scaled.put(version, key, out)
    return out


def _given(v: Decimal | None) -> Decimal:
    if v is None:  # resolved() fills every fallback, so this is a programming error
        raise AssertionError("unresolved price")
    return v


def worst_case(
    version: PriceVersion,
    prompt_tokens: int,
    max_output_tokens: int,
    *,
    at: datetime,
    batch: bool = False,
) -> Money:
    """An upper bound of ``price_request`` for any usage within these limits, for holds.

    Holds for any billing instant from ``at`` on: every tier up to the prompt's, every
    window (when the call will be billed is not known yet), and every promotion not ended
    by ``at``. Rounded up, not half-up, so the bound survives the actual cost's rounding.
    """
    nanos = worst_case_nanos(version, prompt_tokens, max_output_tokens, at=at, batch=batch)
    return Money(nanos, version.currency)


def worst_case_nanos(
    version: PriceVersion,
    prompt_tokens: int,
    max_output_tokens: int,
    *,
    at: datetime,
    batch: bool = False,
) -> int:
    """:func:`worst_case` in nanos of the version's currency (what every hold asks)."""
    require_aware(at)
    _require_int(prompt_tokens, "prompt_tokens")
    _require_int(max_output_tokens, "max_output_tokens")
    prompt, out = max(0, prompt_tokens), max(0, max_output_tokens)
    live = (
        tuple(i for i, p in enumerate(version.promotions) if p.ends is None or p.ends > at)
        if version.promotions
        else ()
    )
    per_in, per_out, fee, denom = _worst_rates(version, version.tier_index(prompt), live, batch)
    # ceil((prompt * in + out * out) / 10**6 + fee) in nanos, in integers: exact, and a
    # fraction of the cost of Decimal arithmetic in a local context on every hold.
    return -(-(prompt * per_in + out * per_out + fee) // denom)


#: Worst-case rates by (version identity, top tier, live promotions, batch). Every hold
#: asks; the answer changes only with those, so it is worked out once per combination.
#: Kept as integers over one denominator: (nanos per input token, per output token, fee
#: nanos) times ``denom``.
_Rates = tuple[int, int, int, int]
_worst: IdentityMemo[_Rates] = IdentityMemo()


def _worst_rates(
    version: PriceVersion, top_tier: int, live: tuple[int, ...], batch: bool
) -> _Rates:
    """The most any usage pays (every multiplier applied), as integers over ``denom``."""
    key = (id(version), top_tier, live, batch)
    hit = _worst.get(version, key)
    if hit is not None:
        return hit
    promos: list[Promotion | None] = [None, *(version.promotions[i] for i in live)]
    with localcontext(EXACT):
        top_in = top_out = top_fee = Decimal(0)
        for tier in range(top_tier + 1):
            for promo in promos:
                p = _given_prices(version, tier, promo).resolved()
                pm = promo.multiplier if promo else _ONE
                inp = max(
                    p.input,
                    _given(p.cached_input),
                    _given(p.cache_write),
                    _given(p.cache_write_1h),
                )
                top_in = max(top_in, inp * pm)
                top_out = max(top_out, max(p.output, _given(p.reasoning)) * pm)
                top_fee = max(top_fee, p.request)
        m = max([_ONE, *(w.multiplier for w in version.windows)])
        if batch:
            m *= _scale_batch(version)
        (per_in, per_out), fee, denom = _nanos_over_one_denominator(
            [top_in * m, top_out * m], top_fee
        )
    rates = (per_in, per_out, fee, denom)
    _worst.put(version, key, rates)
    return rates


def _scale_batch(version: PriceVersion) -> Decimal:
    if version.batch_multiplier is None:
        raise PricingError(f"{version.id} has no batch price")
    return version.batch_multiplier


def openrouter_pricing(
    version: PriceVersion, *, at: datetime, fx: FxTable | None = None
) -> dict[str, str]:
    """OpenRouter-style ``pricing`` for ``/v1/models``: USD per token, as decimal strings.

    Uses the shortest-prompt tier and the window and promotion active at ``at``; a
    version priced in another currency is converted with ``fx``.
    """
    require_aware(at)
    given = _given_prices(version, 0, version.promotion_at(at))
    p = given.resolved()
    rate = Fraction(1)
    if version.currency is not Currency.USD:
        if fx is None:
            raise PricingError(f"{version.id} is priced in {version.currency}: pass an FxTable")
        rate = fx.rate(version.currency, Currency.USD, at.date())
    with localcontext(EXACT):
        m = _scale(version, at, batch=False)
    per_token = Fraction(m) * rate / 10**6
    out = {
        "prompt": _decimal_str(Fraction(p.input) * per_token),
        "completion": _decimal_str(Fraction(p.output) * per_token),
        "request": _decimal_str(Fraction(p.request) * rate),
    }
    if given.cached_input is not None:
        out["input_cache_read"] = _decimal_str(Fraction(given.cached_input) * per_token)
    if given.cache_write is not None:
        out["input_cache_write"] = _decimal_str(Fraction(given.cache_write) * per_token)
    if given.reasoning is not None:
        out["internal_reasoning"] = _decimal_str(Fraction(given.reasoning) * per_token)
    return out


def _decimal_str(x: Fraction) -> str:
    """A plain decimal string of ``x``, to 18 significant digits (prices are far shorter)."""
    with localcontext(_DISPLAY):
        d = Decimal(x.numerator) / Decimal(x.denominator)
    return "0" if d.is_zero() else format(d.normalize(), "f")
