"""Read-side analytics over the roll-up tables: plain functions over an Engine.

Every function reads ``usage_rollups`` only (never the raw events), picks the coarsest
period that answers the question, and returns plain dicts ready for JSON, a table or a
chart. Money stays integer nanos, keyed by currency; token counts are ints. Tokens mean
``input + output`` (input includes cache reads and writes, output includes reasoning).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import ColumnElement, Engine, Select, func, literal_column, select

from tokenomy.analytics.histogram import quantile
from tokenomy.analytics.rollup import CUBES, DAY, DERIVED, HOUR, MINUTE
from tokenomy.analytics.tables import DIMENSIONS, LATENCY_COLS, TTFT_COLS, usage_rollups

R = usage_rollups.c
WEEK: Final = 7 * DAY
#: Granularity name to (period read, bucket size in ms).
GRANULARITIES: Final = {
    "minute": ("m", MINUTE),
    "hour": ("h", HOUR),
    "day": ("d", DAY),
    "week": ("d", WEEK),
}
TOKEN_COLS: Final = (
    "input_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)
QUANTILES: Final = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose usage a query sees: everyone's (the admin), one org's or one key's."""

    key_id: str | None = None
    org_id: str | None = None

    @property
    def dims(self) -> set[str]:
        """The dimensions this scope filters on."""
        out = set()
        if self.key_id is not None:
            out.add("key_id")
        if self.org_id is not None:
            out.add("org_id")
        return out

    def apply(self, q: Select[Any]) -> Select[Any]:
        if self.key_id is not None:
            q = q.where(R.key_id == self.key_id)
        if self.org_id is not None:
            q = q.where(R.org_id == self.org_id)
        return q


EVERYONE: Final = Scope()


def _n(v: Any) -> int:
    """An integer from a SUM (PostgreSQL answers numeric, SQLite int or None)."""
    return int(v) if v is not None else 0


def _lit(n: int) -> ColumnElement[Any]:
    return literal_column(str(int(n)))


def align(ms: int, size: int) -> int:
    """``ms`` rounded down to its bucket (weeks start on Monday, UTC)."""
    if size == WEEK:
        day = ms - ms % DAY
        return day - (day + 3 * DAY) % WEEK
    return ms - ms % size


def period_for(granularity: str) -> tuple[str, int]:
    try:
        return GRANULARITIES[granularity]
    except KeyError:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}") from None


def _bucket(size: int) -> ColumnElement[Any]:
    if size == WEEK:  # 1970-01-01 was a Thursday: shift so weeks start on Monday
        return R.bucket_ms - (R.bucket_ms + _lit(3 * DAY)) % _lit(WEEK)
    return R.bucket_ms


def cube(period: str, scope: Scope = EVERYONE, dims: Iterable[str] = ()) -> str:
    """The smallest period with ``period``'s buckets that keeps every dimension the scope
    filters and the query groups by (everyone's days when neither needs orgs or keys, an
    org's or key's days for rankings, the full rows otherwise)."""
    needed = scope.dims | set(dims)
    for p in CUBES[period]:
        if needed <= set(DERIVED[p][1] if p in DERIVED else DIMENSIONS):
            return p
    return period


def _ranged(
    q: Select[Any],
    period: str,
    start_ms: int,
    end_ms: int,
    scope: Scope,
    dims: Sequence[str] = (),
) -> Select[Any]:
    """Rows in the range and scope, from the smallest period that answers (see ``cube``)."""
    p = cube(period, scope, dims)
    q = q.where(R.period == p, R.bucket_ms >= start_ms, R.bucket_ms < end_ms)
    return scope.apply(q)


def _tokens() -> ColumnElement[Any]:
    return func.sum(R.input_tokens + R.output_tokens)


def usage(
    engine: Engine,
    start_ms: int,
    end_ms: int,
    *,
    granularity: str = "day",
    group_by: Sequence[str] = (),
    scope: Scope = EVERYONE,
) -> list[dict[str, Any]]:
    """Requests, errors, tokens and cost per bucket (and per ``group_by`` dimensions)."""
    period, size = period_for(granularity)
    bad = [g for g in group_by if g not in DIMENSIONS]
    if bad:
        raise ValueError(f"cannot group by {', '.join(bad)}; choose from {', '.join(DIMENSIONS)}")
    groups = list(dict.fromkeys(group_by))
    b = _bucket(size).label("bucket")
    dims = [R[g] for g in groups]
    extra = [] if "currency" in groups else [R.currency]
    sums = [func.sum(R.requests), func.sum(R.errors), *(func.sum(R[c]) for c in TOKEN_COLS)]
    q = select(b, *dims, *extra, *sums, func.sum(R.cost_nanos))
    q = _ranged(q, period, align(start_ms, size), end_ms, scope, groups).group_by(b, *dims, *extra)
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    for row in rows:
        cells: tuple[Any, ...] = tuple(row)
        bucket, vals = int(cells[0]), cells[1:]
        key_vals = tuple(vals[: len(groups)])
        currency = vals[groups.index("currency")] if "currency" in groups else vals[len(groups)]
        nums = [_n(v) for v in vals[len(groups) + len(extra) :]]
        acc = out.get((bucket, *key_vals))
        if acc is None:
            labels = {"bucket_ms": bucket, **dict(zip(groups, key_vals, strict=True))}
            acc = out[(bucket, *key_vals)] = _new_sums(labels)
        _add_sums(acc, nums[0], nums[1], nums[2:7], currency, nums[7])
    return sorted(out.values(), key=lambda r: (r["bucket_ms"], -r["total_tokens"]))


def _new_sums(labels: dict[str, Any]) -> dict[str, Any]:
    """An empty row of counts under ``labels``: requests, errors, tokens, cost by currency."""
    return {
        **labels,
        "requests": 0,
        "errors": 0,
        **dict.fromkeys(TOKEN_COLS, 0),
        "total_tokens": 0,
        "cost_nanos": {},
    }


def _add_sums(
    acc: dict[str, Any],
    requests: int,
    errors: int,
    tokens: Sequence[int],
    currency: str | None,
    cost: int,
) -> None:
    """Add one stored row's sums (``tokens`` in TOKEN_COLS order) onto ``acc``."""
    acc["requests"] += requests
    acc["errors"] += errors
    for c, v in zip(TOKEN_COLS, tokens, strict=True):
        acc[c] += v
    acc["total_tokens"] += tokens[0] + tokens[3]  # input + output
    if currency:
        acc["cost_nanos"][currency] = acc["cost_nanos"].get(currency, 0) + cost


def _sums(
    engine: Engine,
    start_ms: int,
    end_ms: int,
    dims: Sequence[str],
    scope: Scope,
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Requests, errors, tokens and cost per ``dims`` over the whole days of the range."""
    groups = [R[d] for d in dict.fromkeys((*dims, "currency"))]
    sums = [func.sum(R.requests), func.sum(R.errors), *(func.sum(R[c]) for c in TOKEN_COLS)]
    q = select(*groups, *sums, func.sum(R.cost_nanos))
    q = _ranged(q, "d", align(start_ms, DAY), end_ms, scope, dims).group_by(*groups)
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    n = len(groups)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    for row in rows:
        cells: tuple[Any, ...] = tuple(row)
        key, currency = cells[: len(dims)], cells[n - 1]
        requests, errors, *tokens, cost = (_n(v) for v in cells[n:])
        acc = out.get(key)
        if acc is None:
            acc = out[key] = _new_sums(dict(zip(dims, key, strict=True)))
        _add_sums(acc, requests, errors, tokens, currency, cost)
    return out


def totals(
    engine: Engine, start_ms: int, end_ms: int, *, scope: Scope = EVERYONE
) -> dict[str, Any]:
    """One summary over the range's days, with latency and TTFT percentiles."""
    rows = latency(engine, start_ms, end_ms, granularity="day", scope=scope, by_bucket=False)
    lat = rows[0] if rows else {}
    out = _sums(engine, start_ms, end_ms, (), scope).get(()) or _new_sums({})
    out["latency_ms"] = lat.get("latency_ms", {})
    out["ttft_ms"] = lat.get("ttft_ms", {})
    return out


def leaders(
    engine: Engine,
    start_ms: int,
    end_ms: int,
    dim: str,
    *,
    limit: int = 10,
    scope: Scope = EVERYONE,
) -> list[dict[str, Any]]:
    """The top values of one dimension (org, key, model...) by tokens over the range's
    days (read from the orgs' or keys' daily rows when ranking those)."""
    if dim not in DIMENSIONS:
        raise ValueError(f"cannot rank by {dim}; choose from {', '.join(DIMENSIONS)}")
    rows = _sums(engine, start_ms, end_ms, (dim,), scope).values()
    keep = (dim, "requests", "errors", "total_tokens", "cost_nanos")
    ranked = sorted(rows, key=lambda a: (-a["total_tokens"], a[dim]))
    return [{k: a[k] for k in keep} for a in ranked[:limit]]


def top_models(
    engine: Engine,
    start_ms: int,
    end_ms: int,
    *,
    period: str = "day",
    limit: int = 10,
    scope: Scope = EVERYONE,
) -> list[dict[str, Any]]:
    """Per day or week, the ``limit`` models with most tokens and the rest as "other"."""
    if period not in ("day", "week"):
        raise ValueError("period must be day or week")
    size = GRANULARITIES[period][1]
    b = _bucket(size).label("bucket")
    q = _ranged(select(b, R.model, _tokens()), "d", align(start_ms, size), end_ms, scope, ["model"])
    per: dict[int, list[tuple[str, int]]] = defaultdict(list)
    with engine.connect() as conn:
        rows = conn.execute(q.group_by(b, R.model)).all()
    for bucket, model, tokens in rows:
        per[int(bucket)].append((model, _n(tokens)))
    out: list[dict[str, Any]] = []
    for bucket in sorted(per):
        ranked = sorted(per[bucket], key=lambda mt: (-mt[1], mt[0]))
        total = sum(t for _, t in ranked) or 1
        top, rest = ranked[:limit], ranked[limit:]
        for i, (model, tokens) in enumerate(top, 1):
            out.append(
                {
                    "bucket_ms": bucket,
                    "rank": i,
                    "model": model,
                    "tokens": tokens,
                    "share": tokens / total,
                }
            )
        if rest:
            other = sum(t for _, t in rest)
            out.append(
                {
                    "bucket_ms": bucket,
                    "rank": None,
                    "model": "other",
                    "tokens": other,
                    "share": other / total,
                    "models": len(rest),
                }
            )
    return out


def market_share(
    engine: Engine, start_ms: int, end_ms: int, *, by: str = "vendor", scope: Scope = EVERYONE
) -> list[dict[str, Any]]:
    """Share of tokens (and requests, cost) by vendor or by vendor's home country."""
    if by not in ("vendor", "country"):
        raise ValueError("share is by vendor or by country")
    rows = leaders(engine, start_ms, end_ms, by, limit=10**6, scope=scope)
    total = sum(r["total_tokens"] for r in rows) or 1
    return [
        {
            "name": r[by] or "unknown",
            "tokens": r["total_tokens"],
            "requests": r["requests"],
            "share": r["total_tokens"] / total,
            "cost_nanos": r["cost_nanos"],
        }
        for r in rows
    ]


def latency(
    engine: Engine,
    start_ms: int,
    end_ms: int,
    *,
    granularity: str = "day",
    group_by: Sequence[str] = (),
    scope: Scope = EVERYONE,
    by_bucket: bool = True,
) -> list[dict[str, Any]]:
    """Latency and TTFT percentiles, merged from the buckets' histograms."""
    period, size = period_for(granularity)
    dims = [R[g] for g in group_by if g in DIMENSIONS]
    b = _bucket(size).label("bucket")
    keys = ([b] if by_bucket else []) + dims
    hist = [func.sum(R[c]) for c in (*LATENCY_COLS, *TTFT_COLS)]
    q: Select[Any] = select(*keys, func.sum(R.requests), func.sum(R.latency_ms_sum), *hist)
    q = _ranged(q, period, align(start_ms, size), end_ms, scope, group_by)
    if keys:
        q = q.group_by(*keys)
    nh = len(LATENCY_COLS)
    out = []
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    for row in rows:
        cells: tuple[Any, ...] = tuple(row)
        head, vals = cells[: len(keys)], [_n(v) for v in cells[len(keys) :]]
        requests, lat_sum = vals[0], vals[1]
        if not requests:
            continue
        lat, ttft = vals[2 : 2 + nh], vals[2 + nh :]
        r: dict[str, Any] = {}
        if by_bucket:
            r["bucket_ms"] = int(head[0])
        r.update({g: v for g, v in zip(group_by, head[1 if by_bucket else 0 :], strict=False)})
        r["requests"] = requests
        r["latency_ms"] = {n: quantile(lat, q_) for n, q_ in QUANTILES}
        r["latency_ms"]["mean"] = lat_sum / requests
        r["ttft_ms"] = {n: quantile(ttft, q_) for n, q_ in QUANTILES}
        r["latency_histogram"] = lat
        r["ttft_histogram"] = ttft
        out.append(r)
    return sorted(out, key=lambda r: r.get("bucket_ms", 0))


def span(engine: Engine, scope: Scope = EVERYONE) -> tuple[int, int] | None:
    """The first and last day with any usage (for date pickers), or None."""
    q: Select[Any] = select(func.min(R.bucket_ms), func.max(R.bucket_ms))
    q = scope.apply(q.where(R.period == cube("d", scope)))
    with engine.connect() as conn:
        lo, hi = conn.execute(q).one()
    return None if lo is None else (int(lo), int(hi))
