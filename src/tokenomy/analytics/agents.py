"""Analytics for agent work: tokens per task, the costliest tasks, prompt-cache hit rates
and the money prompt caching saved.

Tasks and price versions are not roll-up dimensions, so the task and savings figures are
summed from the usage events themselves (grouped in the database: one row per task, or
per price version and tier); hit rates come from the roll-ups like every other view.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal, localcontext
from typing import Any, Final

from sqlalchemy import ColumnElement, Connection, Engine, and_, func, select

from tokenomy.analytics.queries import EVERYONE, Scope, _n, _sums
from tokenomy.billing.catalog import PriceBook, PriceNotFound, PriceVersion
from tokenomy.billing.money import EXACT, round_nanos
from tokenomy.store.schema import usage_events

E = usage_events.c
#: OpenRouter's bands of tokens per task: (name, lowest, first token count above it).
BANDS: Final = (
    ("<10K", 0, 10_000),
    ("10K-100K", 10_000, 100_000),
    ("100K-1M", 100_000, 1_000_000),
    (">1M", 1_000_000, None),
)
_PER_MILLION: Final = Decimal(10**6)


def band_of(tokens: int) -> str:
    """The band a task's ``tokens`` (input plus output) falls in; bounds belong above."""
    for name, _lo, hi in BANDS:
        if hi is None or tokens < hi:
            return name
    raise AssertionError("unreachable: the last band is open-ended")


def _where(start_ms: int, end_ms: int, scope: Scope) -> list[ColumnElement[bool]]:
    cond = [E.ts_ms >= start_ms, E.ts_ms < end_ms]
    if scope.key_id is not None:
        cond.append(E.key_id == scope.key_id)
    if scope.org_id is not None:
        cond.append(E.org_id == scope.org_id)
    return cond


def task_totals(
    engine: Engine, start_ms: int, end_ms: int, scope: Scope = EVERYONE
) -> list[dict[str, Any]]:
    """Each task's calls, tokens and cost in the range (calls outside it are not counted)."""
    q = (
        select(
            E.org_id,
            E.task_id,
            E.currency,
            func.count(),
            func.sum(E.input_tokens),
            func.sum(E.cached_tokens),
            func.sum(E.output_tokens),
            func.sum(E.cost_nanos),
        )
        .where(E.task_id.is_not(None), *_where(start_ms, end_ms, scope))
        .group_by(E.org_id, E.task_id, E.currency)
    )
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    tasks: dict[tuple[str | None, str], dict[str, Any]] = {}
    for org, task, currency, calls, inp, cached, out, cost in rows:
        t = tasks.get((org, task))
        if t is None:
            t = tasks[(org, task)] = {
                "task_id": task,
                "org_id": org,
                "calls": 0,
                "input_tokens": 0,
                "cached_tokens": 0,
                "output_tokens": 0,
                "total_tokens": 0,
                "cost_nanos": {},
            }
        t["calls"] += int(calls)
        t["input_tokens"] += _n(inp)
        t["cached_tokens"] += _n(cached)
        t["output_tokens"] += _n(out)
        t["total_tokens"] += _n(inp) + _n(out)
        if currency:
            t["cost_nanos"][currency] = t["cost_nanos"].get(currency, 0) + _n(cost)
    for t in tasks.values():
        t["band"] = band_of(t["total_tokens"])
    return list(tasks.values())


def tasks_view(
    engine: Engine, start_ms: int, end_ms: int, *, limit: int = 10, scope: Scope = EVERYONE
) -> dict[str, Any]:
    """Tasks per band of tokens, and the ``limit`` costliest tasks."""
    tasks = task_totals(engine, start_ms, end_ms, scope)
    bands = []
    for name, lo, hi in BANDS:
        inside = [t for t in tasks if t["band"] == name]
        cost: dict[str, int] = defaultdict(int)
        for t in inside:
            for cur, n in t["cost_nanos"].items():
                cost[cur] += n
        bands.append(
            {
                "band": name,
                "min_tokens": lo,
                "max_tokens": hi,
                "tasks": len(inside),
                "share": len(inside) / len(tasks) if tasks else 0.0,
                "total_tokens": sum(t["total_tokens"] for t in inside),
                "cost_nanos": dict(cost),
            }
        )
    # Each task is billed in one currency (its org's): rank by that amount.
    ranked = sorted(
        tasks, key=lambda t: (-sum(t["cost_nanos"].values()), -t["total_tokens"], t["task_id"])
    )
    for t in ranked:
        t["cache_hit_rate"] = t["cached_tokens"] / t["input_tokens"] if t["input_tokens"] else 0.0
    return {"tasks": len(tasks), "bands": bands, "top_tasks": ranked[:limit]}


def hit_rates(
    engine: Engine, start_ms: int, end_ms: int, dims: Sequence[str], scope: Scope = EVERYONE
) -> list[dict[str, Any]]:
    """Prompt-cache hit rate (cached input tokens over all input tokens) per ``dims``."""
    out = []
    for acc in _sums(engine, start_ms, end_ms, tuple(dims), scope).values():
        inp = acc["input_tokens"]
        out.append(
            {
                **{d: acc[d] or None for d in dims},
                "requests": acc["requests"],
                "input_tokens": inp,
                "cached_tokens": acc["cached_tokens"],
                "cache_write_tokens": acc["cache_write_tokens"],
                "hit_rate": acc["cached_tokens"] / inp if inp else 0.0,
            }
        )
    return sorted(out, key=lambda r: (-r["cached_tokens"], -r["input_tokens"]))


#: The cache token sums the savings read: cached, written, and written to a one-hour cache.
_CACHE_SUMS = (
    func.sum(E.cached_tokens),
    func.sum(E.cache_write_tokens),
    func.sum(E.cache_write_1h_tokens),
)


def _saving_per_token(v: PriceVersion, tier: int, batch: bool) -> tuple[Decimal, Decimal, Decimal]:
    """(saved per cached token, premium per five-minute and per one-hour cache-written
    token) at the tier's list prices, in the version's currency units per million."""
    p = v.tiers[tier].prices.resolved()
    assert p.cached_input is not None and p.cache_write is not None  # resolved
    hour = p.cache_write if p.cache_write_1h is None else p.cache_write_1h
    with localcontext(EXACT):
        m = v.batch_multiplier if batch and v.batch_multiplier is not None else Decimal(1)
        return (p.input - p.cached_input) * m, (p.cache_write - p.input) * m, (hour - p.input) * m


def _by_tier(
    conn: Connection, cond: list[ColumnElement[bool]], v: PriceVersion, tier_name: str | None
) -> list[tuple[int, int, int, int]]:
    """(tier, cached, written, of those written to a one-hour cache) of a tiered version's
    calls: the tier follows each call's prompt size, so its calls are grouped by that."""
    q = (
        select(E.input_tokens, *_CACHE_SUMS)
        .where(and_(*cond), E.price_version == v.id, E.price_tier == tier_name)
        .group_by(E.input_tokens)
    )
    rows = conn.execute(q).all()
    return [(v.tier_index(int(inp)), _n(c), _n(w), _n(h)) for inp, c, w, h in rows]


def cache_savings(
    engine: Engine, start_ms: int, end_ms: int, *, book: PriceBook, scope: Scope = EVERYONE
) -> dict[str, Any]:
    """What prompt caching saved: each cached token at its full input price less its cached
    price, at the list prices of the version and tier each call was billed at (time-of-day
    windows and promotions left out), exact and rounded once per currency; and what cache
    writes cost above the input price (Anthropic's write premium)."""
    cond = [*_where(start_ms, end_ms, scope), E.price_version.is_not(None)]
    cond.append((E.cached_tokens > 0) | (E.cache_write_tokens > 0))
    base = select(E.price_version, E.price_tier, *_CACHE_SUMS).where(and_(*cond))
    with engine.connect() as conn:
        groups = conn.execute(base.group_by(E.price_version, E.price_tier)).all()
        saved: dict[str, Decimal] = defaultdict(Decimal)
        premium: dict[str, Decimal] = defaultdict(Decimal)
        by_model: dict[tuple[str, str, str], dict[str, Any]] = {}
        unpriced = 0
        for version_id, tier_name, cached, written, hour in groups:
            try:
                v = book.version(version_id)
            except PriceNotFound:  # a version no longer in the catalogue
                unpriced += _n(cached)
                continue
            batch = tier_name == "batch"
            if len(v.tiers) == 1:
                parts = [(0, _n(cached), _n(written), _n(hour))]
            else:
                parts = _by_tier(conn, cond, v, tier_name)
            cur = v.currency.value
            row = by_model.setdefault(
                (v.vendor, v.model, cur),
                {
                    "vendor": v.vendor,
                    "model": v.model,
                    "currency": cur,
                    "cached_tokens": 0,
                    "cache_write_tokens": 0,
                    "_saved": Decimal(0),
                    "_premium": Decimal(0),
                },
            )
            with localcontext(EXACT):
                for tier, c, w, h in parts:
                    per_read, per_write, per_hour = _saving_per_token(v, tier, batch)
                    row["cached_tokens"] += c
                    row["cache_write_tokens"] += w
                    row["_saved"] += c * per_read / _PER_MILLION
                    row["_premium"] += ((w - h) * per_write + h * per_hour) / _PER_MILLION
    models = []
    for row in by_model.values():
        s, p = row.pop("_saved"), row.pop("_premium")
        with localcontext(EXACT):
            saved[row["currency"]] += s
            premium[row["currency"]] += p
        row["saved_nanos"] = round_nanos(s)
        row["write_premium_nanos"] = round_nanos(p)
        models.append(row)
    models.sort(key=lambda r: (-r["saved_nanos"], r["vendor"], r["model"]))
    return {
        "saved_nanos": {c: round_nanos(x) for c, x in saved.items()},
        "write_premium_nanos": {c: round_nanos(x) for c, x in premium.items()},
        "unpriced_cached_tokens": unpriced,
        "by_model": models,
    }


def cache_view(
    engine: Engine, start_ms: int, end_ms: int, *, book: PriceBook, scope: Scope = EVERYONE
) -> dict[str, Any]:
    """Hit rates overall, by model and vendor and by vendor, and what caching saved."""
    by_vendor = hit_rates(engine, start_ms, end_ms, ("vendor",), scope)
    inp = sum(r["input_tokens"] for r in by_vendor)
    cached = sum(r["cached_tokens"] for r in by_vendor)
    savings = cache_savings(engine, start_ms, end_ms, book=book, scope=scope)
    return {
        "input_tokens": inp,
        "cached_tokens": cached,
        "hit_rate": cached / inp if inp else 0.0,
        "saved_nanos": savings["saved_nanos"],
        "write_premium_nanos": savings["write_premium_nanos"],
        "unpriced_cached_tokens": savings["unpriced_cached_tokens"],
        "by_model": hit_rates(engine, start_ms, end_ms, ("model", "vendor"), scope),
        "by_vendor": by_vendor,
        "savings": savings["by_model"],
    }
