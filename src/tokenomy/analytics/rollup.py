"""Incremental roll-ups of usage events into minute, hour and day buckets.

How double counting is ruled out: buckets are never incremented, they are recomputed.
Every usage event is written together with a marker in ``analytics_pending`` (same
transaction, see :func:`pending_item`). One roll-up transaction takes a batch of markers,
deletes them, recomputes each touched minute from the raw events (which are unique by
request id), then each touched hour from its minutes and each touched day from its hours,
and commits. A replayed event adds nothing to the raw events, so its minute recomputes to
the same rows; a crash before commit leaves the markers for the next run. An event
committed during a run keeps its own marker (markers are per request) and is picked up by
the next run. Runs are serialised by a lock (an advisory lock on PostgreSQL; SQLite has a
single writer).

Coarser copies (everyone's hours and days, each key's and each org's days; see
``DERIVED``) are summed from those rows in the same transaction. Minute buckets are
pruned after a retention: hours before the pruned horizon are then recomputed from the
raw events, so late events still land exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    Table,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    text,
)

from tokenomy.analytics.histogram import BOUNDS
from tokenomy.analytics.tables import (
    DIMENSIONS,
    LATENCY_COLS,
    MEASURES,
    TTFT_COLS,
    analytics_pending,
    analytics_state,
    usage_rollups,
)
from tokenomy.catalog.vendors import load_presets
from tokenomy.store.schema import usage_events

log = logging.getLogger(__name__)

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
#: How long minute buckets are kept by default (the roll-up worker prunes older ones).
#: Only ``granularity=minute`` views read minutes; the dashboard reads hours and days.
MINUTE_RETENTION_MS: Final = 2 * DAY
#: Key of the PostgreSQL advisory lock that serialises roll-up runs across replicas.
_PG_LOCK: Final = 0x746F6B656E6F6D79 & 0x7FFFFFFFFFFFFFFF
_MINUTES_FROM: Final = "minutes_from"
_ROLLUP_COLS: Final = ("period", "bucket_ms", *DIMENSIONS, *MEASURES, *LATENCY_COLS, *TTFT_COLS)


def pending_item(row: Mapping[str, Any]) -> tuple[Table, dict[str, Any]]:
    """The marker to write with a usage event row, in the same transaction."""
    ts = int(row["ts_ms"])
    return analytics_pending, {"request_id": row["request_id"], "bucket_ms": ts - ts % MINUTE}


def _int(n: int) -> ColumnElement[Any]:
    """An integer rendered inline, so equal expressions in SELECT and GROUP BY match."""
    return literal_column(str(int(n)))


def _floor(col: ColumnElement[Any], size: int) -> ColumnElement[Any]:
    return col - col % _int(size)


def _bucket_index(col: ColumnElement[Any]) -> ColumnElement[Any]:
    whens = [(col < _int(b), _int(i)) for i, b in enumerate(BOUNDS)]
    return case(*whens, else_=_int(len(BOUNDS)))


def _minutes_from(conn: Connection) -> int:
    """Where minute buckets start (0 until pruned): before it, hours come from events."""
    q = select(analytics_state.c.value).where(analytics_state.c.name == _MINUTES_FROM)
    v = conn.execute(q).scalar()
    return int(v) if v is not None else 0


def minutes_kept_from(engine: Engine) -> int:
    """The first minute still held in minute buckets (0 when none were pruned)."""
    with engine.connect() as conn:
        return _minutes_from(conn)


def _clusters(buckets: Sequence[int], size: int) -> list[list[int]]:
    """Sorted buckets split where they are far apart, so each range scan stays short."""
    out: list[list[int]] = []
    for b in sorted(set(buckets)):
        if out and b - out[-1][-1] <= 64 * size:
            out[-1].append(b)
        else:
            out.append([b])
    return out


class Rollups:
    """Recomputes roll-up buckets; ``countries`` maps vendor to home country, ``regions``
    deployment id to region (both taken at roll-up time). Minute buckets older than
    ``minute_retention_ms`` are pruned by :meth:`prune_expired` (None keeps them)."""

    def __init__(
        self,
        engine: Engine,
        *,
        countries: Mapping[str, str | None] | None = None,
        regions: Mapping[str, str | None] | None = None,
        batch_size: int = 5000,
        minute_retention_ms: int | None = MINUTE_RETENTION_MS,
    ) -> None:
        self.engine = engine
        self.minute_retention_ms = minute_retention_ms
        self._pruned_to = 0  # horizon of the last prune by this object (saves a query a run)
        self.countries = {k: v for k, v in (countries or {}).items() if v}
        self.regions = {k: v for k, v in (regions or {}).items() if v}
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._pg = engine.dialect.name == "postgresql"

    @classmethod
    def for_registry(
        cls, engine: Engine, registry: Any, *, minute_retention_ms: int | None = MINUTE_RETENTION_MS
    ) -> Rollups:
        """Countries and regions from a gateway's registry (``gateway.registry.Registry``).

        Known vendors' home countries come from the catalogue too: events of a vendor not
        serving now (no key today, or a demo's simulated stand-in) keep their country."""
        countries = {k: p.country for k, p in load_presets().items()}
        countries.update({v.key: v.country for v in registry.vendors() if v.country})
        regions = {d.id: d.region for r in registry.routes for d in r.deployments}
        return cls(
            engine, countries=countries, regions=regions, minute_retention_ms=minute_retention_ms
        )

    # ---- running ----------------------------------------------------------------------

    def refresh(self, max_batches: int | None = None) -> int:
        """Roll up everything pending; returns how many markers were consumed."""
        done = batches = 0
        while max_batches is None or batches < max_batches:
            n = self.process_batch()
            done += n
            batches += 1
            if n < self.batch_size:
                break
        return done

    def process_batch(self) -> int:
        with self._lock, self.engine.begin() as conn:
            self._serialise(conn)
            q = select(analytics_pending.c.request_id, analytics_pending.c.bucket_ms)
            rows = conn.execute(q.order_by("bucket_ms").limit(self.batch_size)).all()
            if not rows:
                return 0
            ids = [r[0] for r in rows]
            for i in range(0, len(ids), 1000):
                chunk = ids[i : i + 1000]
                conn.execute(
                    delete(analytics_pending).where(analytics_pending.c.request_id.in_(chunk))
                )
            self._recompute(conn, [int(r[1]) for r in rows])
            return len(rows)

    def _serialise(self, conn: Connection) -> None:
        if self._pg:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})

    def _recompute(self, conn: Connection, minutes: Iterable[int]) -> None:
        kept_from = _minutes_from(conn)
        minutes = sorted(set(minutes))
        self._from_events(conn, "m", [m for m in minutes if m >= kept_from])
        hours = sorted({m - m % HOUR for m in minutes})
        self._from_events(conn, "h", [h for h in hours if h < kept_from])
        self._from_rollups(conn, "h", "m", [h for h in hours if h >= kept_from])
        days = sorted({h - h % DAY for h in hours})
        self._from_rollups(conn, "d", "h", days)
        for period, (child, _) in DERIVED.items():
            self._from_rollups(conn, period, child, hours if period == "H" else days)

    def rebuild(self) -> None:
        """Recompute every bucket from the raw events (after a bulk load, or to repair)."""
        with self._lock, self.engine.begin() as conn:
            self._serialise(conn)
            conn.execute(delete(analytics_pending))
            conn.execute(delete(analytics_state).where(analytics_state.c.name == _MINUTES_FROM))
            self._pruned_to = 0  # every minute is back: the next prune_expired drops them
            conn.execute(delete(usage_rollups))
            conn.execute(self._insert(self._events_select("m", MINUTE, None)))
            conn.execute(self._insert(self._rollups_select("h", "m", None)))
            conn.execute(self._insert(self._rollups_select("d", "h", None)))
            for period, (child, _) in DERIVED.items():
                conn.execute(self._insert(self._rollups_select(period, child, None)))
            if self._pg:  # every row is new: plan the next reads on fresh statistics
                conn.execute(text("ANALYZE usage_rollups"))

    def reconcile(self, since_ms: int, until_ms: int | None = None) -> int:
        """Queue every minute in the range whose rolled-up request count differs from the
        raw events' (events are never deleted, so equal counts mean equal sets). Covers
        events written without a marker. Returns how many minutes were queued."""
        since_ms = max(since_ms - since_ms % MINUTE, 0)
        ts = usage_events.c.ts_ms
        b = _floor(ts, MINUTE).label("b")
        ev = select(b, func.count()).where(ts >= since_ms)
        ru = select(usage_rollups.c.bucket_ms, func.sum(usage_rollups.c.requests)).where(
            usage_rollups.c.period == "m", usage_rollups.c.bucket_ms >= since_ms
        )
        if until_ms is not None:
            ev = ev.where(ts < until_ms)
            ru = ru.where(usage_rollups.c.bucket_ms < until_ms)
        with self.engine.begin() as conn:
            kept_from = _minutes_from(conn)
            raw = {int(k): int(v) for k, v in conn.execute(ev.group_by(b))}
            rolled = {
                int(k): int(v) for k, v in conn.execute(ru.group_by(usage_rollups.c.bucket_ms))
            }
            stale = sorted(m for m in raw.keys() | rolled.keys() if raw.get(m) != rolled.get(m))
            stale = [m for m in stale if m >= kept_from]
            if stale:
                rows = [{"request_id": f"reconcile:{m}", "bucket_ms": m} for m in stale]
                ins = self._insert_ignore(analytics_pending)
                conn.execute(ins, rows)
        return len(stale)

    def prune_minutes(self, before_ms: int) -> int:
        """Drop minute buckets before ``before_ms`` (aligned down to a day); hours and days
        stay, and late events for pruned minutes are rolled up from the raw events.

        Works a day per transaction, so a first prune of a long history never holds the
        database (SQLite's single writer) for long. Returns how many rows went."""
        before_ms -= before_ms % DAY
        gone = 0
        while True:
            with self._lock, self.engine.begin() as conn:
                self._serialise(conn)
                kept_from = _minutes_from(conn)
                if before_ms <= kept_from:
                    return gone
                r = usage_rollups.c
                oldest = conn.execute(
                    select(func.min(r.bucket_ms)).where(r.period == "m", r.bucket_ms < before_ms)
                ).scalar()
                upto = before_ms  # through the oldest minute's day: always a step forward
                if oldest is not None:
                    upto = min(before_ms, max(oldest - oldest % DAY, kept_from) + DAY)
                res = conn.execute(delete(usage_rollups).where(r.period == "m", r.bucket_ms < upto))
                gone += int(res.rowcount or 0)
                conn.execute(delete(analytics_state).where(analytics_state.c.name == _MINUTES_FROM))
                conn.execute(insert(analytics_state).values(name=_MINUTES_FROM, value=upto))

    def prune_expired(self, now_ms: int | None = None) -> int:
        """Prune minute buckets older than the retention (a no-op until a day's minutes
        expire; the roll-up worker calls it on every run). Returns how many rows went."""
        if self.minute_retention_ms is None:
            return 0
        now = int(time.time() * 1000) if now_ms is None else now_ms
        horizon = now - self.minute_retention_ms
        horizon -= horizon % DAY
        if horizon <= self._pruned_to:
            return 0
        gone = self.prune_minutes(horizon)
        self._pruned_to = horizon
        return gone

    # ---- SQL --------------------------------------------------------------------------

    def _insert_ignore(self, table: Table) -> Any:
        if self._pg:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table).on_conflict_do_nothing()
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()

    def _insert(self, sel: Select[Any]) -> Any:
        return insert(usage_rollups).from_select(list(_ROLLUP_COLS), sel)

    def _from_events(self, conn: Connection, period: str, buckets: Sequence[int]) -> None:
        size = PERIOD_MS[period]
        for cluster in _clusters(buckets, size):
            self._delete(conn, period, cluster)
            conn.execute(self._insert(self._events_select(period, size, cluster)))

    def _from_rollups(
        self, conn: Connection, period: str, child: str, buckets: Sequence[int]
    ) -> None:
        for cluster in _clusters(buckets, PERIOD_MS[period]):
            self._delete(conn, period, cluster)
            conn.execute(self._insert(self._rollups_select(period, child, cluster)))

    def _delete(self, conn: Connection, period: str, buckets: Sequence[int]) -> None:
        r = usage_rollups.c
        conn.execute(delete(usage_rollups).where(r.period == period, r.bucket_ms.in_(buckets)))

    def _events_select(self, period: str, size: int, buckets: Sequence[int] | None) -> Select[Any]:
        e = usage_events.c
        country: ColumnElement[Any] = literal("")
        if self.countries:
            country = case(self.countries, value=e.vendor, else_=literal(""))
        region: ColumnElement[Any] = literal("")
        if self.regions:
            region = case(self.regions, value=e.deployment, else_=literal(""))
        ttft_bucket = case((e.ttft_ms.is_(None), _int(-1)), else_=_bucket_index(e.ttft_ms))
        inner = select(
            _floor(e.ts_ms, size).label("bucket_ms"),
            func.coalesce(e.org_id, "").label("org_id"),
            func.coalesce(e.project_id, "").label("project_id"),
            func.coalesce(e.key_id, "").label("key_id"),
            e.model,
            func.coalesce(e.vendor, "").label("vendor"),
            country.label("country"),
            region.label("region"),
            e.status,
            func.coalesce(e.currency, "").label("currency"),
            e.input_tokens,
            e.cached_tokens,
            e.cache_write_tokens,
            e.output_tokens,
            e.reasoning_tokens,
            e.cost_nanos,
            e.latency_ms,
            func.coalesce(e.ttft_ms, 0).label("ttft_ms"),
            _bucket_index(e.latency_ms).label("lb"),
            ttft_bucket.label("tb"),
        )
        if buckets is not None:
            inner = inner.where(
                e.ts_ms >= buckets[0],
                e.ts_ms < buckets[-1] + size,
                _floor(e.ts_ms, size).in_(buckets),
            )
        s = inner.subquery()

        def count_if(cond: ColumnElement[bool]) -> ColumnElement[Any]:
            return func.sum(case((cond, _int(1)), else_=_int(0)))

        dims = [s.c[d] for d in DIMENSIONS]
        measures = [
            func.count(),
            count_if(s.c.status != "ok"),
            *(func.sum(s.c[c]) for c in MEASURES[2:8]),
            func.sum(s.c.latency_ms),
            count_if(s.c.tb >= _int(0)),
            func.sum(s.c.ttft_ms),
        ]
        hist = [count_if(s.c.lb == _int(i)) for i in range(len(LATENCY_COLS))]
        hist += [count_if(s.c.tb == _int(i)) for i in range(len(TTFT_COLS))]
        return select(literal(period), s.c.bucket_ms, *dims, *measures, *hist).group_by(
            s.c.bucket_ms, *dims
        )

    def _rollups_select(
        self, period: str, child: str, buckets: Sequence[int] | None
    ) -> Select[Any]:
        r = usage_rollups.c
        size = PERIOD_MS[period]
        b = _floor(r.bucket_ms, size)
        sums = [func.sum(r[c]) for c in (*MEASURES, *LATENCY_COLS, *TTFT_COLS)]
        keep = DERIVED[period][1] if period in DERIVED else DIMENSIONS
        dims: list[ColumnElement[Any]] = [
            literal("").label(d) if d not in keep else r[d] for d in DIMENSIONS
        ]
        q = select(literal(period), b, *dims, *sums).where(r.period == child)
        if buckets is not None:
            q = q.where(
                and_(r.bucket_ms >= buckets[0], r.bucket_ms < buckets[-1] + size), b.in_(buckets)
            )
        return q.group_by(b, *(r[d] for d in keep))


class RollupWorker:
    """Runs :meth:`Rollups.refresh` and :meth:`Rollups.prune_expired` every ``interval_s``
    in the background."""

    def __init__(self, rollups: Rollups, interval_s: float = 2.0) -> None:
        self.rollups = rollups
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="analytics-rollups")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.rollups.refresh)
                await asyncio.to_thread(self.rollups.prune_expired)
            except Exception:
                log.exception("rolling up usage failed; will retry")
