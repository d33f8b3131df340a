"""The named views shared by ``GET /v1/usage`` and ``tokenomy usage``: parse, run, answer.

A view is picked by name and reads its parameters from a plain mapping of strings (query
parameters or command-line options), so both front ends accept exactly the same input.
Bad input raises :class:`ViewError` naming the parameter.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

from sqlalchemy import Engine

from tokenomy.analytics import agents, insights, queries
from tokenomy.analytics.queries import EVERYONE, Scope
from tokenomy.analytics.rollup import DAY, minutes_kept_from
from tokenomy.analytics.tables import DIMENSIONS
from tokenomy.billing.catalog import PriceBook
from tokenomy.billing.fx import FxTable

VIEWS: Final = (
    "usage",
    "summary",
    "top_models",
    "leaders",
    "share",
    "growth",
    "milestones",
    "savings",
    "latency",
    "tasks",
    "cache",
)
DEFAULT_DAYS: Final = 30
#: Short names accepted for dimensions ("org" for "org_id").
ALIASES: Final = {"org": "org_id", "project": "project_id", "key": "key_id"}


class ViewError(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Window:
    start_ms: int
    end_ms: int


#: Instants run from the epoch to the start of the year 9999, so a day or a range added
#: to one still converts to a date.
LAST_MS: Final = 253_370_764_800_000


def parse_instant(text: str, param: str, *, end: bool = False) -> int:
    """Epoch ms, an ISO date (an ``end`` date includes that whole day) or ISO datetime."""
    ms = _instant(text.strip(), param, end)
    if not 0 <= ms <= LAST_MS:
        raise ViewError(f"'{param}' must fall between 1970 and 9999.", param)
    return ms


def _instant(t: str, param: str, end: bool) -> int:
    if t.isascii() and t.isdigit():
        return int(t) if len(t) <= 16 else LAST_MS + 1
    try:
        if len(t) == 10:
            d = date.fromisoformat(t)
            ms = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
            return ms + DAY if end else ms
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)
    except (ValueError, OverflowError):  # overflow: an offset that leaves years 1 to 9999
        raise ViewError(
            f"'{param}' must be a date (2026-03-01), an ISO time or epoch milliseconds.", param
        ) from None


def parse_window(p: Mapping[str, str], now_ms: int | None = None) -> Window:
    """``start``/``end`` (end exclusive, or inclusive for a date), or ``days`` back from
    the end of today (UTC); the last 30 days by default."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    end = parse_instant(p["end"], "end", end=True) if p.get("end") else now - now % DAY + DAY
    if p.get("start"):
        start = parse_instant(p["start"], "start")
    else:
        days = _int(p, "days", DEFAULT_DAYS, 1, 3660)
        start = end - days * DAY
    if start >= end:
        raise ViewError("'start' must be before 'end'.", "start")
    if end - start > 3660 * DAY:
        raise ViewError("The range may span at most ten years.", "start")
    return Window(start, end)


def _int(p: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = p.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ViewError(f"'{name}' must be an integer.", name) from None
    if not lo <= v <= hi:
        raise ViewError(f"'{name}' must be between {lo} and {hi}.", name)
    return v


def _choice(p: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    v = p.get(name) or default
    if v not in allowed:
        raise ViewError(f"'{name}' must be one of: {', '.join(allowed)}.", name)
    return v


def _dims(p: Mapping[str, str], name: str) -> list[str]:
    raw = [ALIASES.get(g.strip(), g.strip()) for g in (p.get(name) or "").split(",") if g.strip()]
    bad = [g for g in raw if g not in DIMENSIONS]
    if bad:
        raise ViewError(
            f"Cannot group by {', '.join(bad)}; choose from {', '.join(DIMENSIONS)}.", name
        )
    return raw


def _reference(p: Mapping[str, str], book: PriceBook) -> tuple[str, str]:
    raw = p.get("reference")
    if not raw:
        return insights.REFERENCE
    vendor, _, model = raw.partition("/")
    if not model or (vendor, model) not in book:
        raise ViewError(f"Unknown reference model '{raw}'; use vendor/model.", "reference")
    return vendor, model


def _check_minutes(engine: Engine, start_ms: int) -> None:
    """Minute buckets are pruned after a while: say so rather than answer with a gap."""
    kept = minutes_kept_from(engine)
    if start_ms < kept:
        since = datetime.fromtimestamp(kept / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
        raise ViewError(
            f"Minute buckets are kept from {since} on; choose a later 'start' or a coarser "
            "'granularity'.",
            "start",
        )


def run_view(
    engine: Engine,
    p: Mapping[str, str],
    *,
    book: PriceBook,
    fx: FxTable,
    scope: Scope = EVERYONE,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """Run the view ``p["view"]`` (default ``usage``) and return the JSON-ready answer."""
    view = _choice(p, "view", "usage", VIEWS)
    w = parse_window(p, now_ms)
    gran = _choice(p, "granularity", "day", tuple(queries.GRANULARITIES))
    out: dict[str, Any] = {"object": "usage", "view": view, "start_ms": w.start_ms}
    out["end_ms"] = w.end_ms
    a, b = w.start_ms, w.end_ms
    data: Any
    if gran == "minute" and view in ("usage", "latency"):
        _check_minutes(engine, a)
    if view == "usage":
        out["granularity"] = gran
        data = queries.usage(
            engine, a, b, granularity=gran, group_by=_dims(p, "group_by"), scope=scope
        )
    elif view == "summary":
        data = queries.totals(engine, a, b, scope=scope)
    elif view == "top_models":
        period = _choice(p, "period", "day", ("day", "week"))
        limit = _int(p, "limit", 10, 1, 100)
        data = queries.top_models(engine, a, b, period=period, limit=limit, scope=scope)
    elif view == "leaders":
        by = (_dims(p, "by") or ["org_id"])[0]
        data = queries.leaders(engine, a, b, by, limit=_int(p, "limit", 10, 1, 1000), scope=scope)
    elif view == "share":
        by = _choice(p, "by", "vendor", ("vendor", "country"))
        data = queries.market_share(engine, a, b, by=by, scope=scope)
    elif view == "growth":
        data = insights.growth(engine, b, window_days=_int(p, "window", 28, 3, 365), scope=scope)
    elif view == "milestones":
        data = insights.milestones(engine, scope=scope, end_ms=b)
    elif view == "savings":
        ref = _reference(p, book)
        data = insights.savings(engine, a, b, book=book, fx=fx, reference=ref, scope=scope)
    elif view == "tasks":
        data = agents.tasks_view(engine, a, b, limit=_int(p, "limit", 10, 1, 1000), scope=scope)
    elif view == "cache":
        data = agents.cache_view(engine, a, b, book=book, scope=scope)
    else:
        out["granularity"] = gran
        data = queries.latency(
            engine, a, b, granularity=gran, group_by=_dims(p, "group_by"), scope=scope
        )
        for r in data:
            r.pop("latency_histogram", None)
            r.pop("ttft_histogram", None)
    out["data"] = data
    return out
