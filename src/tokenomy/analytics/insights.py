"""Growth, milestones and savings: the questions asked of token usage over time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any, Final

from sqlalchemy import Engine, Select, func, select

from tokenomy.analytics.queries import EVERYONE, R, Scope, _n, cube, usage
from tokenomy.analytics.rollup import DAY
from tokenomy.billing.catalog import PriceBook, PriceNotFound, PriceVersion, TokenPrices
from tokenomy.billing.fx import FxTable
from tokenomy.billing.money import EXACT, Currency, Money, convert, round_nanos

#: The default savings reference: what the same tokens would cost at Claude Opus 4.6.
REFERENCE: Final = ("anthropic", "claude-opus-4-6")
MILESTONES: Final = (10**9, 10**12)


def daily_tokens(
    engine: Engine, start_ms: int, end_ms: int, *, scope: Scope = EVERYONE
) -> list[tuple[int, int]]:
    """(day, tokens) for every day in ``[start, end)``, zero-filled."""
    start = start_ms - start_ms % DAY
    got = {r["bucket_ms"]: r["total_tokens"] for r in usage(engine, start, end_ms, scope=scope)}
    return [(d, got.get(d, 0)) for d in range(start, end_ms, DAY)]


def _ratio(now: int, before: int) -> float | None:
    return (now - before) / before if before else None


def growth(
    engine: Engine, end_ms: int, *, window_days: int = 28, scope: Scope = EVERYONE
) -> dict[str, Any]:
    """Day over day, week over week, and the doubling time of daily tokens.

    Uses complete days before ``end_ms``'s day. The doubling time fits a straight line to
    log(tokens) over the window's days with usage; None when flat or shrinking.
    """
    end = end_ms - end_ms % DAY
    days = daily_tokens(engine, end - max(window_days, 14) * DAY, end, scope=scope)
    tokens = [t for _, t in days]
    last, prev = tokens[-1], tokens[-2]
    week, prev_week = sum(tokens[-7:]), sum(tokens[-14:-7])
    pts = [(i, math.log(t)) for i, t in enumerate(tokens[-window_days:]) if t > 0]
    doubling = rate = None
    if len(pts) >= 3:
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        var = sum((x - mx) ** 2 for x, _ in pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / var if var else 0.0
        rate = math.exp(slope) - 1
        doubling = math.log(2) / slope if slope > 1e-12 else None
    return {
        "last_day_ms": days[-1][0],
        "last_day_tokens": last,
        "previous_day_tokens": prev,
        "day_over_day": _ratio(last, prev),
        "last_week_tokens": week,
        "previous_week_tokens": prev_week,
        "week_over_week": _ratio(week, prev_week),
        "daily_growth_rate": rate,
        "doubling_days": doubling,
        "daily": [{"day_ms": d, "tokens": t} for d, t in days[-window_days:]],
    }


def milestones(
    engine: Engine,
    *,
    thresholds: Sequence[int] = MILESTONES,
    scope: Scope = EVERYONE,
    end_ms: int | None = None,
) -> list[dict[str, Any]]:
    """Each organisation's cumulative tokens and the day it crossed each threshold."""
    q: Select[Any] = select(R.org_id, R.bucket_ms, func.sum(R.input_tokens + R.output_tokens))
    q = scope.apply(q.where(R.period == cube("d", scope, ["org_id"])))
    if end_ms is not None:
        q = q.where(R.bucket_ms < end_ms)
    q = q.group_by(R.org_id, R.bucket_ms).order_by(R.org_id, R.bucket_ms)
    orgs: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    for org, day, tokens in rows:
        o = orgs.setdefault(
            org,
            {"org_id": org, "total_tokens": 0, "crossed": {str(t): None for t in thresholds}},
        )
        before, o["total_tokens"] = o["total_tokens"], o["total_tokens"] + _n(tokens)
        for t in thresholds:
            if before < t <= o["total_tokens"]:
                o["crossed"][str(t)] = int(day)
    return sorted(orgs.values(), key=lambda o: -o["total_tokens"])


def _reference_version(book: PriceBook, vendor: str, model: str, at: datetime) -> PriceVersion:
    try:
        return book.lookup(vendor, model, at)
    except PriceNotFound:
        for m in book:  # before the model's first price: its first version
            if (m.vendor, m.model) == (vendor, model) and m.versions:
                return m.versions[0]
        raise


def reference_cost(version: PriceVersion | TokenPrices, tokens: dict[str, int]) -> int:
    """What these token counts cost at a version's base-tier prices (or at resolved
    ``prices``), in nanos (exact, rounded once). Time-of-day windows and promotions are
    left out: a list price."""
    p = version if isinstance(version, TokenPrices) else version.tiers[0].prices.resolved()
    cached, write = tokens["cached_tokens"], tokens["cache_write_tokens"]
    reasoning = tokens["reasoning_tokens"]
    with localcontext(EXACT):
        units = (
            (tokens["input_tokens"] - cached - write) * p.input
            + cached * (p.cached_input or p.input)
            + write * (p.cache_write or p.input)
            + (tokens["output_tokens"] - reasoning) * p.output
            + reasoning * (p.reasoning or p.output)
        ) / Decimal(10**6)
    return round_nanos(units)


def savings(
    engine: Engine,
    start_ms: int,
    end_ms: int,
    *,
    book: PriceBook,
    fx: FxTable,
    reference: tuple[str, str] = REFERENCE,
    scope: Scope = EVERYONE,
) -> dict[str, Any]:
    """What the priced tokens cost against what they would have cost at ``reference``.

    Actual costs in other currencies are converted at the day's FX rate. Unpriced usage
    (no currency) is left out and reported as ``unpriced_tokens``.
    """
    rows = usage(
        engine, start_ms, end_ms, granularity="day", group_by=["model", "currency"], scope=scope
    )
    # One price version, price lookup and FX rate per day and currency, not per row.
    versions: dict[int, tuple[Currency, TokenPrices]] = {}
    rates: dict[tuple[int, str], Fraction] = {}
    ref_cur: Currency | None = None
    by_model: dict[str, dict[str, Any]] = {}
    by_day: dict[int, dict[str, Any]] = {}
    unpriced = 0
    for r in rows:
        cur = r["currency"]
        if not cur:
            unpriced += r["total_tokens"]
            continue
        day = r["bucket_ms"]
        if day not in versions:
            at = datetime.fromtimestamp(day / 1000, UTC)
            v = _reference_version(book, *reference, at)
            versions[day] = (v.currency, v.tiers[0].prices.resolved())
        ref_cur, prices = versions[day]
        ref = reference_cost(prices, r)
        paid = r["cost_nanos"].get(cur, 0)
        if cur != ref_cur.value and paid:
            rate = rates.get((day, cur))
            if rate is None:
                rate = rates[(day, cur)] = _rate(fx, Currency(cur), ref_cur, day)
            paid = convert(Money(paid, Currency(cur)), rate, ref_cur).nanos
        for acc, key in ((by_model, r["model"]), (by_day, day)):
            a = acc.setdefault(key, {"tokens": 0, "actual_nanos": 0, "reference_nanos": 0})
            a["tokens"] += r["total_tokens"]
            a["actual_nanos"] += paid
            a["reference_nanos"] += ref
    actual = sum(a["actual_nanos"] for a in by_day.values())
    ref_total = sum(a["reference_nanos"] for a in by_day.values())
    return {
        "reference": "/".join(reference),
        "currency": (ref_cur.value if ref_cur else None),
        "actual_nanos": actual,
        "reference_nanos": ref_total,
        "saved_nanos": ref_total - actual,
        "ratio": ref_total / actual if actual else None,
        "unpriced_tokens": unpriced,
        "by_model": sorted(
            ({"model": m, **a} for m, a in by_model.items()), key=lambda a: -a["reference_nanos"]
        ),
        "by_day": [{"day_ms": d, **by_day[d]} for d in sorted(by_day)],
    }


def _rate(fx: FxTable, cur: Currency, to: Currency, day_ms: int) -> Fraction:
    on = datetime.fromtimestamp(day_ms / 1000, UTC).date()
    try:
        return fx.rate(cur, to, on)
    except LookupError:  # a day before the first known rate: use the latest one
        return fx.rate(cur, to, None)
