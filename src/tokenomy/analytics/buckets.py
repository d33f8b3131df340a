"""Roll-up periods, and the SQL that fills their buckets.

Three ways a bucket gets its numbers: aggregated from raw events (:func:`events_select`),
summed from a finer period's buckets (:func:`rollups_select`), or, on the hot path, a
batch of new events' aggregate added onto what is stored (:func:`add_delta_sql`, an
upsert on the bucket's unique cell).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    MetaData,
    Select,
    String,
    Table,
    and_,
    any_,
    case,
    func,
    literal,
    literal_column,
    select,
)
from sqlalchemy.schema import CreateTable

from tokenomy.analytics.histogram import BOUNDS
from tokenomy.analytics.tables import (
    DIMENSIONS,
    LATENCY_COLS,
    MEASURES,
    TTFT_COLS,
    usage_rollups,
)
from tokenomy.store.schema import usage_events

MINUTE: Final = 60_000
HOUR: Final = 3_600_000
DAY: Final = 86_400_000
PERIOD_MS: Final = {"m": MINUTE, "h": HOUR, "d": DAY, "H": HOUR, "D": DAY, "K": DAY, "O": DAY}
PER_ACCOUNT: Final = ("org_id", "project_id", "key_id")
_NO_ACCOUNT: Final = tuple(d for d in DIMENSIONS if d not in PER_ACCOUNT)
#: Periods summed from a finer one, keeping some dimensions (the others are stored as ""),
#: in the order they are built: "H" and "D" are everyone's hours and days (no org,
#: project or key: a few rows a bucket), "K" each key's days and "O" each org's days (no
#: model, vendor or status), so rankings of orgs and keys read a few rows an org or key.
DERIVED: Final = {
    "H": ("h", _NO_ACCOUNT),
    "D": ("d", _NO_ACCOUNT),
    "K": ("d", ("org_id", "project_id", "key_id", "currency")),
    "O": ("K", ("org_id", "currency")),
}
#: Periods holding the same buckets as each full period, smallest first.
CUBES: Final = {"m": ("m",), "h": ("H", "h"), "d": ("D", "O", "K", "d")}
#: Every period, finest first.
PERIODS: Final = ("m", "h", "d", *DERIVED)
SUMMED: Final = (*MEASURES, *LATENCY_COLS, *TTFT_COLS)
ROLLUP_COLS: Final = ("period", "bucket_ms", *DIMENSIONS, *SUMMED)

#: A batch's per-minute aggregate, before it is added to every period. Temporary: each
#: connection has its own, and on PostgreSQL it empties at commit.
DELTA: Final = Table(
    "_rollup_delta",
    MetaData(),
    Column("period", String(1)),
    Column("bucket_ms", BigInteger),
    *(Column(d, String(200)) for d in DIMENSIONS),
    *(Column(c, BigInteger) for c in SUMMED),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DELETE ROWS",
)


#: The markers one roll-up run takes, copied aside so that every statement of the run
#: reads the same set without a round trip through Python. Temporary, as DELTA.
BATCH: Final = Table(
    "_rollup_batch",
    MetaData(),
    Column("request_id", String(64), primary_key=True),
    Column("bucket_ms", BigInteger),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DELETE ROWS",
)


def kept(period: str) -> tuple[str, ...]:
    """The dimensions a period keeps (the others are stored as "")."""
    return DERIVED[period][1] if period in DERIVED else DIMENSIONS


def _int(n: int) -> ColumnElement[Any]:
    """An integer rendered inline, so equal expressions in SELECT and GROUP BY match."""
    return literal_column(str(int(n)))


def bucket_floor(col: ColumnElement[Any], size: int) -> ColumnElement[Any]:
    """The start of the ``size`` ms bucket holding ``col``."""
    return col - col % _int(size)


def _bucket_index(col: ColumnElement[Any]) -> ColumnElement[Any]:
    whens = [(col < _int(b), _int(i)) for i, b in enumerate(BOUNDS)]
    return case(*whens, else_=_int(len(BOUNDS)))


def events_select(
    period: str,
    countries: Mapping[str, str],
    regions: Mapping[str, str],
    buckets: Sequence[int] | None = None,
    *,
    batched: bool = False,
    postgresql: bool = False,
) -> Select[Any]:
    """Raw events aggregated into ``period``'s buckets (every dimension kept): all of
    them, those in ``buckets``, or with ``batched`` those whose markers are in
    :data:`BATCH` (found as PostgreSQL finds them best with ``postgresql``)."""
    size = PERIOD_MS[period]
    e = usage_events.c
    country: ColumnElement[Any] = literal("")
    if countries:
        country = case(dict(countries), value=e.vendor, else_=literal(""))
    region: ColumnElement[Any] = literal("")
    if regions:
        region = case(dict(regions), value=e.deployment, else_=literal(""))
    ttft_bucket = case((e.ttft_ms.is_(None), _int(-1)), else_=_bucket_index(e.ttft_ms))
    lb, tb = _bucket_index(e.latency_ms).label("lb"), ttft_bucket.label("tb")
    dims_in = [
        bucket_floor(e.ts_ms, size).label("bucket_ms"),
        func.coalesce(e.org_id, "").label("org_id"),
        func.coalesce(e.project_id, "").label("project_id"),
        func.coalesce(e.key_id, "").label("key_id"),
        e.model.label("model"),
        func.coalesce(e.vendor, "").label("vendor"),
        country.label("country"),
        region.label("region"),
        e.status.label("status"),
        func.coalesce(e.currency, "").label("currency"),
    ]
    # Two levels: events grouped with their histogram buckets first, then pivoted. An
    # aggregate is never flattened into the one above it, so each event's bucket index
    # is worked out once, not once per histogram column that reads it.
    inner = select(
        *dims_in,
        lb,
        tb,
        func.count().label("n"),
        func.sum(case((e.status != "ok", _int(1)), else_=_int(0))).label("errors"),
        *(func.sum(e[c]).label(c) for c in MEASURES[2:8]),
        func.sum(e.latency_ms).label("latency_ms"),
        func.sum(func.coalesce(e.ttft_ms, 0)).label("ttft_ms"),
    )
    if buckets is not None:
        inner = inner.where(
            e.ts_ms >= buckets[0],
            e.ts_ms < buckets[-1] + size,
            bucket_floor(e.ts_ms, size).in_(buckets),
        )
    if batched and postgresql:
        # The batch's ids as one array: each is looked up by the primary key, whatever
        # PostgreSQL believes of the tables' sizes. As a join, a table grown since its
        # last ANALYZE (any new database under load) was read whole for every run: 34 ms
        # of a 50 ms run for 2,000 events with 67,000 rows, and growing with them.
        ids: ColumnElement[Any] = literal_column(f"ARRAY(SELECT request_id FROM {BATCH.name})")
        inner = inner.where(e.request_id == any_(ids))
    elif batched:
        inner = inner.where(e.request_id.in_(select(BATCH.c.request_id)))
    s = inner.group_by(*(c.element for c in dims_in), lb.element, tb.element).subquery()

    def n_if(cond: ColumnElement[bool]) -> ColumnElement[Any]:
        return func.sum(case((cond, s.c.n), else_=_int(0)))

    dims = [s.c[d] for d in DIMENSIONS]
    measures = [
        func.sum(s.c.n),
        func.sum(s.c.errors),
        *(func.sum(s.c[c]) for c in MEASURES[2:8]),
        func.sum(s.c.latency_ms),
        n_if(s.c.tb >= _int(0)),
        func.sum(s.c.ttft_ms),
    ]
    hist = [n_if(s.c.lb == _int(i)) for i in range(len(LATENCY_COLS))]
    hist += [n_if(s.c.tb == _int(i)) for i in range(len(TTFT_COLS))]
    return select(literal(period), s.c.bucket_ms, *dims, *measures, *hist).group_by(
        s.c.bucket_ms, *dims
    )


def rollups_select(period: str, child: str, buckets: Sequence[int] | None) -> Select[Any]:
    """``child``'s buckets summed into ``period``'s (all of them, or those in ``buckets``)."""
    r = usage_rollups.c
    size = PERIOD_MS[period]
    b = bucket_floor(r.bucket_ms, size)
    sums = [func.sum(r[c]) for c in SUMMED]
    keep = kept(period)
    dims: list[ColumnElement[Any]] = [
        literal("").label(d) if d not in keep else r[d] for d in DIMENSIONS
    ]
    q = select(literal(period), b, *dims, *sums).where(r.period == child)
    if buckets is not None:
        q = q.where(
            and_(r.bucket_ms >= buckets[0], r.bucket_ms < buckets[-1] + size), b.in_(buckets)
        )
    return q.group_by(b, *(r[d] for d in keep))


def create_temp_tables() -> list[CreateTable]:
    """The DDL of :data:`BATCH` and :data:`DELTA` (idempotent: run by every batch)."""
    return [CreateTable(t, if_not_exists=True) for t in (BATCH, DELTA)]


@functools.cache
def add_delta_sql(period: str) -> str:
    """Add :data:`DELTA`'s minutes onto ``period``'s stored buckets: one upsert, the
    sums grouped by the period's bucket and kept dimensions. Minute buckets before
    ``:kept_from`` were pruned and are not brought back."""
    size = PERIOD_MS[period]
    keep = kept(period)
    bucket = f"bucket_ms - bucket_ms % {size}"
    dims = [d if d in keep else f"'' AS {d}" for d in DIMENSIONS]
    sums = [f"SUM({c})" for c in SUMMED]
    where = "bucket_ms >= :kept_from" if period == "m" else "1 = 1"
    cell = ", ".join(("period", "bucket_ms", *DIMENSIONS))
    adds = ", ".join(f"{c} = usage_rollups.{c} + excluded.{c}" for c in SUMMED)
    # SQLite needs the WHERE: without it "ON CONFLICT" would parse as part of a join.
    return (
        f"INSERT INTO usage_rollups ({', '.join(ROLLUP_COLS)}) "
        f"SELECT '{period}', {bucket}, {', '.join(dims)}, {', '.join(sums)} "
        f"FROM {DELTA.name} WHERE {where} GROUP BY {', '.join((bucket, *keep))} "
        f"ON CONFLICT ({cell}) DO UPDATE SET {adds}"
    )
