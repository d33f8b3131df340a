"""Incremental roll-ups of usage events into minute, hour and day buckets.

How each event is counted exactly once: inserting a usage event inserts a marker (a
trigger, migrations 0005 and 0020), and only when the event itself was inserted: a
replayed event (same request id) is skipped and leaves no marker. On SQLite the marker is
the event's own row in ``analytics_pending``; on PostgreSQL a row of
``analytics_pending_sets`` marks every event one statement inserted in one minute. One
roll-up transaction takes a batch of markers, aggregates their events into per-minute
sums, adds those onto every period's stored buckets (an upsert on each bucket's cell),
deletes the markers and commits; a crash before commit leaves the markers for the next
run. So every bucket always equals the sum of its events that have no marker left. Runs
are serialised by a lock (an advisory lock on PostgreSQL; SQLite has a single writer).

Repairs recompute instead: a marker ``reconcile:<minute>`` (see :meth:`Rollups.reconcile`)
recomputes that minute from the raw events, drops the markers of its events (they are
now counted), and recomputes its hour and day from their children. Coarser copies
(everyone's hours and days, each key's and each org's days; see ``DERIVED``) are kept in
the same transaction. Minute buckets are pruned after a retention; late events for
pruned minutes still land in their hours and days.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from sqlalchemy import Connection, Engine, Select, Table, delete, func, insert, select, text
from sqlalchemy.exc import OperationalError

from tokenomy.analytics.buckets import (
    BATCH,
    CUBES,
    DAY,
    DELTA,
    DERIVED,
    HOUR,
    MINUTE,
    PER_ACCOUNT,
    PERIOD_MS,
    PERIODS,
    ROLLUP_COLS,
    add_delta_sql,
    bucket_floor,
    create_temp_tables,
    events_select,
    rollups_select,
)
from tokenomy.analytics.tables import (
    analytics_pending,
    analytics_pending_sets,
    analytics_state,
    usage_rollups,
)
from tokenomy.catalog.vendors import load_presets
from tokenomy.store.schema import usage_events

__all__ = [
    "CUBES",
    "DAY",
    "DERIVED",
    "HOUR",
    "MINUTE",
    "PERIOD_MS",
    "PER_ACCOUNT",
    "RECOMPUTE",
    "RollupWorker",
    "Rollups",
    "WritersBusy",
    "minutes_kept_from",
]

log = logging.getLogger(__name__)

#: How long minute buckets are kept by default (the roll-up worker prunes older ones).
#: Only ``granularity=minute`` views read minutes; the dashboard reads hours and days.
MINUTE_RETENTION_MS: Final = 2 * DAY
#: Key of the PostgreSQL advisory lock that serialises roll-up runs across replicas.
_PG_LOCK: Final = 0x746F6B656E6F6D79 & 0x7FFFFFFFFFFFFFFF
_MINUTES_FROM: Final = "minutes_from"
#: Marker ids that ask for a minute to be recomputed from the raw events (repairs, and
#: markers left by the recomputing roll-ups before migration 0005).
RECOMPUTE: Final = "reconcile:"


#: Markers a roll-up transaction takes by default. A batch upserts each minute cell it
#: touches once in every period, however many events it sums: with 1,000 keys active a
#: batch of 5,000 wrote as many rows as one of 20,000 (300 ms of PostgreSQL each). On
#: SQLite too, where the roll-ups run in the gateway's own process: with 1,000 keys, 16 µs
#: of roll-up CPU a request in batches of 5,000, 6.6 in batches of 20,000 (bench/
#: writer_bench.py with a run every 60,000 requests, as the worker spaces its runs at
#: 6,000 req/s). SQLite's one writer is held for the whole transaction: 65-130 ms for
#: 20,000 events of the last few minutes, up to some 650 ms for a backlog spread over
#: many minutes (185 ms at 5,000), on the machine that measured the CPU above. The usage
#: writer waits meanwhile and catches up in one larger flush; requests wait with it only
#: when it commits each one before answering (``writer.flush_interval_ms: 0``): then
#: batches are smaller (below).
BATCH_SIZE: Final = 20_000
#: SQLite's batch when the usage writer is synchronous, so each request waits through any
#: roll-up batch under way. A batch's hold shrinks with its size, but not in proportion
#: (each cell it touches is upserted in every period whatever it sums): with 1,000 keys,
#: on a slower machine than above, a backlog spread over 50 minutes held the writer
#: 800-860 ms a batch of 20,000, 215-300 ms at 5,000 and 120-175 ms at 2,000; events of
#: the last minute 184-246, 105-158 and 85-123 ms (``process_batch`` timed in a scratch
#: script on writer_bench.py's rows). In all, the batches of 5,000 took 1.1-2.3 times as
#: long as those of 20,000, of 2,000 1.5-4.6 times: 5,000 takes some 60 % off the worst
#: wait, 2,000 only a little more for about twice the work again.
SYNC_WRITER_BATCH_SIZE: Final = 5_000


#: PostgreSQL: the events of the set markers taken (0020) into the batch, the markers gone.
_TAKE_SETS: Final = text(
    f"""
WITH taken AS (
  DELETE FROM analytics_pending_sets WHERE id = ANY(:ids) RETURNING request_ids, bucket_ms
)
INSERT INTO {BATCH.name} (request_id, bucket_ms)
SELECT unnest(request_ids), bucket_ms FROM taken
"""
)
#: PostgreSQL: writers wait until the commit (a rebuild's or a repair's), so no event is
#: committed between reading the events and deleting their markers.
_HOLD_WRITERS: Final = text("LOCK TABLE usage_events IN SHARE MODE")
#: PostgreSQL, for the rest of a roll-up transaction: group by hashing, not by sorting.
#: The planner takes the batch's id array for ten rows, so it sorted the batch's events
#: (20,000 wide rows, spilled to disk) to group them: 60 ms of a 95 ms run, 35 ms hashed.
_HASH_AGGREGATES: Final = text("SET LOCAL enable_sort = off")
#: How long a repair waits to lock out writers before it leaves its minutes to a later
#: run, in ms. Writers that arrive meanwhile queue behind the lock request, so a wait
#: without end (behind a long transaction writing events) stalled every replica's usage
#: writer with it; a writer's own transactions last milliseconds.
WRITERS_LOCK_TIMEOUT_MS = 500
#: After a repair gave way, how long repairs are left alone (seconds): the batches after
#: it in the same run, and runs soon after, would each hold writers for that wait again.
REPAIR_RETRY_S = 5.0
#: The same for a rebuild, which then fails (see :class:`WritersBusy`).
REBUILD_LOCK_TIMEOUT_MS = 10_000
#: PostgreSQL's SQLSTATE for a lock not granted within ``lock_timeout``.
_LOCK_NOT_AVAILABLE: Final = "55P03"


class WritersBusy(RuntimeError):
    """A rebuild could not lock out the usage writers in time: a long transaction is
    writing usage events. Nothing was changed; try again once it has ended."""


def _hold_writers(conn: Connection, timeout_ms: int) -> bool:
    """Lock out usage writers until the commit (PostgreSQL); False, with the transaction
    as it was, when the lock was not had within ``timeout_ms``."""
    point = conn.begin_nested()
    try:
        # SET takes no parameters; the figure is an int.
        conn.execute(text(f"SET LOCAL lock_timeout = {int(timeout_ms)}"))
        conn.execute(_HOLD_WRITERS)
        conn.execute(text("SET LOCAL lock_timeout TO DEFAULT"))
    except OperationalError as e:
        # psycopg 3 names the code sqlstate; psycopg2 (a configured driver) pgcode.
        code = getattr(e.orig, "sqlstate", None) or getattr(e.orig, "pgcode", None)
        if code != _LOCK_NOT_AVAILABLE:
            raise
        point.rollback()
        return False
    point.commit()
    return True


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
    ``minute_retention_ms`` are pruned by :meth:`prune_expired` (None keeps them).
    ``clock`` (monotonic seconds) times the pause after a repair gave way."""

    def __init__(
        self,
        engine: Engine,
        *,
        countries: Mapping[str, str | None] | None = None,
        regions: Mapping[str, str | None] | None = None,
        batch_size: int | None = None,
        minute_retention_ms: int | None = MINUTE_RETENTION_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self._clock = clock
        self.minute_retention_ms = minute_retention_ms
        self._pruned_to = 0  # horizon of the last prune by this object (saves a query a run)
        self._repairs_from = 0.0  # monotonic time before which no repair is taken
        self.countries = {k: v for k, v in (countries or {}).items() if v}
        self.regions = {k: v for k, v in (regions or {}).items() if v}
        self._lock = threading.Lock()
        self._pg = engine.dialect.name == "postgresql"
        self.batch_size = BATCH_SIZE if batch_size is None else batch_size
        self._delta_insert: Any = None  # see _add_events
        #: Minute cells the runs have added onto since the worker last looked (each is an
        #: upsert in every period): what a run's writes grow with.
        self.cells = 0

    @classmethod
    def for_registry(
        cls,
        engine: Engine,
        registry: Any,
        *,
        minute_retention_ms: int | None = MINUTE_RETENTION_MS,
        writer_synchronous: bool = False,
    ) -> Rollups:
        """Countries and regions from a gateway's registry (``core.registry.Registry``).

        Known vendors' home countries come from the catalogue too: events of a vendor not
        serving now (no key today, or a demo's simulated stand-in) keep their country.
        ``writer_synchronous``: requests wait for their usage commit (see
        :data:`SYNC_WRITER_BATCH_SIZE`)."""
        countries = {k: p.country for k, p in load_presets().items()}
        countries.update({v.key: v.country for v in registry.vendors() if v.country})
        regions = {d.id: d.region for r in registry.routes for d in r.deployments}
        sqlite_sync = writer_synchronous and engine.dialect.name == "sqlite"
        return cls(
            engine,
            countries=countries,
            regions=regions,
            minute_retention_ms=minute_retention_ms,
            batch_size=SYNC_WRITER_BATCH_SIZE if sqlite_sync else None,
        )

    # ---- running ----------------------------------------------------------------------

    def refresh(self, max_batches: int | None = None, *, wait: bool = True) -> int:
        """Roll up everything pending; returns how many markers were consumed. With
        ``wait=False`` a run finds another one under way (a replica's) and leaves the
        markers to it instead of queueing behind it."""
        done = batches = 0
        while max_batches is None or batches < max_batches:
            n = self.process_batch(wait=wait)
            done += n
            batches += 1
            if n < self.batch_size:
                break
        return done

    def process_batch(self, *, wait: bool = True) -> int:
        """Roll up one batch of markers in one transaction; returns how many it took (0
        when ``wait`` is false and another run holds the lock)."""
        with self._lock, self.engine.begin() as conn:
            if not self._serialise(conn, wait=wait):
                return 0
            for ddl in create_temp_tables():
                conn.execute(ddl)
            if not self._pg:  # PostgreSQL empties them at commit; SQLite keeps their rows
                conn.execute(delete(BATCH))
                conn.execute(delete(DELTA))
            p = analytics_pending.c
            taken = select(p.request_id, p.bucket_ms).limit(self.batch_size)
            if self._clock() < self._repairs_from:  # a repair gave way a moment ago
                taken = taken.where(~p.request_id.startswith(RECOMPUTE))
            conn.execute(insert(BATCH).from_select(["request_id", "bucket_ms"], taken))
            n = int(conn.execute(select(func.count()).select_from(BATCH)).scalar() or 0)
            if n:
                in_batch = p.request_id.in_(select(BATCH.c.request_id))
                conn.execute(delete(analytics_pending).where(in_batch))
            if self._pg and n < self.batch_size:
                n += self._take_sets(conn, self.batch_size - n)
            if not n:
                return 0
            b = BATCH.c
            q = select(b.bucket_ms).where(b.request_id.like(RECOMPUTE + "%"))
            repairs = {int(m) for m in conn.execute(q).scalars()}
            if repairs and self._pg and not _hold_writers(conn, WRITERS_LOCK_TIMEOUT_MS):
                # Left for a later run; meanwhile their minutes' events are added as any
                # others' (the recomputation will replace those minutes whole).
                log.warning(
                    "a repair of %d minute(s) could not lock out usage writers within %d ms "
                    "(a long transaction is writing usage events); it will run again",
                    len(repairs),
                    WRITERS_LOCK_TIMEOUT_MS,
                )
                self._requeue(conn, repairs)
                self._repairs_from = self._clock() + REPAIR_RETRY_S
                repairs = set()
            if repairs:
                # An event in a minute that is recomputed is counted by the recomputation.
                conn.execute(delete(BATCH).where(b.bucket_ms.in_(sorted(repairs))))
            self._add_events(conn)
            if repairs:
                self._recompute(conn, repairs)
            return n

    def _take_sets(self, conn: Connection, room: int) -> int:
        """Put the events of the oldest set markers in the batch while it has room (one
        set at least, whole sets only); returns how many events that added. Reads at most
        ``room`` markers, however long the queue."""
        s = analytics_pending_sets.c
        q = select(s.id, s.events).order_by(s.id).limit(room)
        ids: list[int] = []
        events = 0
        for set_id, n in conn.execute(q):
            if events >= room:
                break
            ids.append(int(set_id))
            events += int(n)
        if not ids:
            return 0
        return int(conn.execute(_TAKE_SETS, {"ids": ids}).rowcount)

    def _add_events(self, conn: Connection) -> None:
        """Add the batch's events' sums onto every period's buckets."""
        if self._delta_insert is None:
            # Built once: making the expression (a CASE per histogram bound, the country
            # and region maps) took 10 ms of a 30 ms run, holding the GIL each time.
            sel = events_select(
                "m", self.countries, self.regions, batched=True, postgresql=self._pg
            )
            self._delta_insert = insert(DELTA).from_select(list(ROLLUP_COLS), sel)
        if self._pg:
            conn.execute(_HASH_AGGREGATES)
        cells = conn.execute(self._delta_insert).rowcount
        if cells < 0:  # a driver that does not say
            cells = int(conn.execute(select(func.count()).select_from(DELTA)).scalar() or 0)
        if not cells:
            return
        self.cells += cells
        kept_from = _minutes_from(conn)
        for period in PERIODS:
            conn.execute(text(add_delta_sql(period)), {"kept_from": kept_from})

    def _serialise(self, conn: Connection, *, wait: bool = True) -> bool:
        """Take the roll-ups' lock before reading any marker: two runs must never add
        the same markers' events. False when ``wait`` is false and another run has it."""
        if self._pg:
            if not wait:
                q = text("SELECT pg_try_advisory_xact_lock(:k)")
                return bool(conn.execute(q, {"k": _PG_LOCK}).scalar())
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        else:
            # The driver opens the transaction at the first write and reads before it
            # outside one: a write that matches nothing takes SQLite's write lock now.
            conn.execute(text("DELETE FROM analytics_pending WHERE 0 = 1"))
        return True

    @staticmethod
    def _requeue(conn: Connection, minutes: Iterable[int]) -> None:
        """Put the markers of these minutes' repairs back in the queue."""
        rows = [{"request_id": f"{RECOMPUTE}{m}", "bucket_ms": m} for m in sorted(minutes)]
        conn.execute(insert(analytics_pending), rows)

    def _recompute(self, conn: Connection, minutes: Iterable[int]) -> None:
        """Recompute these minutes (and their hours, days and coarser copies) from the
        raw events; the markers of their events go, as those events are now counted. On
        PostgreSQL the caller has locked out writers until the commit (an event committed
        between reading a minute's events and deleting its markers would lose its marker
        uncounted)."""
        kept_from = _minutes_from(conn)
        minutes = sorted(set(minutes))
        kept = [m for m in minutes if m >= kept_from]
        self._from_events(conn, "m", kept)
        hours = sorted({m - m % HOUR for m in minutes})
        pruned = [h for h in hours if h < kept_from]
        self._from_events(conn, "h", pruned)
        for t in (analytics_pending, analytics_pending_sets):
            b = t.c.bucket_ms
            for i in range(0, len(kept), 500):
                conn.execute(delete(t).where(b.in_(kept[i : i + 500])))
            for h in pruned:
                conn.execute(delete(t).where(b >= h, b < h + HOUR))
        self._from_rollups(conn, "h", "m", [h for h in hours if h >= kept_from])
        days = sorted({h - h % DAY for h in hours})
        self._from_rollups(conn, "d", "h", days)
        for period, (child, _) in DERIVED.items():
            self._from_rollups(conn, period, child, hours if period == "H" else days)

    def rebuild(self) -> None:
        """Recompute every bucket from the raw events (after a bulk load, or to repair)."""
        with self._lock, self.engine.begin() as conn:
            self._serialise(conn)
            # Writers wait until the commit: an event committed between dropping the
            # markers and reading the events would be counted, then added again.
            if self._pg and not _hold_writers(conn, REBUILD_LOCK_TIMEOUT_MS):
                raise WritersBusy(
                    "could not lock out usage writers within "
                    f"{REBUILD_LOCK_TIMEOUT_MS} ms: a long transaction is writing usage "
                    "events; nothing was changed, try again once it has ended"
                )
            conn.execute(delete(analytics_pending))
            conn.execute(delete(analytics_pending_sets))
            conn.execute(delete(analytics_state).where(analytics_state.c.name == _MINUTES_FROM))
            self._pruned_to = 0  # every minute is back: the next prune_expired drops them
            conn.execute(delete(usage_rollups))
            conn.execute(self._insert(events_select("m", self.countries, self.regions)))
            conn.execute(self._insert(rollups_select("h", "m", None)))
            conn.execute(self._insert(rollups_select("d", "h", None)))
            for period, (child, _) in DERIVED.items():
                conn.execute(self._insert(rollups_select(period, child, None)))
            if self._pg:  # every row is new: plan the next reads on fresh statistics
                conn.execute(text("ANALYZE usage_rollups"))

    def reconcile(self, since_ms: int, until_ms: int | None = None) -> int:
        """Queue every minute in the range whose rolled-up request count differs from the
        raw events' (events are never deleted, so equal counts mean equal sets). Covers
        events written without a marker. Returns how many minutes were queued."""
        since_ms = max(since_ms - since_ms % MINUTE, 0)
        ts = usage_events.c.ts_ms
        b = bucket_floor(ts, MINUTE).label("b")
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
                rows = [{"request_id": f"{RECOMPUTE}{m}", "bucket_ms": m} for m in stale]
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
        return insert(usage_rollups).from_select(list(ROLLUP_COLS), sel)

    def _from_events(self, conn: Connection, period: str, buckets: Sequence[int]) -> None:
        for cluster in _clusters(buckets, PERIOD_MS[period]):
            self._delete(conn, period, cluster)
            conn.execute(self._insert(events_select(period, self.countries, self.regions, cluster)))

    def _from_rollups(
        self, conn: Connection, period: str, child: str, buckets: Sequence[int]
    ) -> None:
        for cluster in _clusters(buckets, PERIOD_MS[period]):
            self._delete(conn, period, cluster)
            conn.execute(self._insert(rollups_select(period, child, cluster)))

    def _delete(self, conn: Connection, period: str, buckets: Sequence[int]) -> None:
        r = usage_rollups.c
        conn.execute(delete(usage_rollups).where(r.period == period, r.bucket_ms.in_(buckets)))


#: Minute cells a run may add onto before the next run is spaced out (see ``next_wait``).
CELLS_PER_RUN: Final = 200
#: The longest wait between runs, however many cells they write.
MAX_INTERVAL_S: Final = 10.0
#: After a full batch (more markers wait), the worker pauses this many times as long as
#: the batch took before the next one: a backlog (after a burst of traffic, or a stop)
#: takes at most half of a core of the database from the requests, a batch at a time,
#: never seconds on end.
CATCH_UP_PAUSE: Final = 1.0


class RollupWorker:
    """Runs :meth:`Rollups.refresh` and :meth:`Rollups.prune_expired` every ``interval_s``
    in the background, less often while many tenants are active (see :meth:`next_wait`)."""

    def __init__(
        self,
        rollups: Rollups,
        interval_s: float = 2.0,
        max_interval_s: float = MAX_INTERVAL_S,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rollups = rollups
        self.interval_s = interval_s
        self.max_interval_s = max(interval_s, max_interval_s)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def next_wait(self, cells: int) -> float:
        """The wait before the next run, after one that added onto ``cells`` minute cells.

        A run writes each active cell (a minute of a key, model, status...) once in every
        period (minute, hour, day, each key's and each org's day), however few events it
        sums: with 1,000 keys active that was 5,000 upserts every run, whatever the
        traffic. Past :data:`CELLS_PER_RUN` the runs are spaced out in proportion (up to
        ``max_interval_s``), so the writes follow the events summed, not the runs; one
        tenant's figures stay ``interval_s`` fresh."""
        stretched = self.interval_s * cells / CELLS_PER_RUN
        return min(self.max_interval_s, max(self.interval_s, stretched))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="analytics-rollups")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def roll_up(self) -> int:
        """Roll up everything pending (as :meth:`Rollups.refresh`), a batch a thread call,
        pausing after each full batch (see :data:`CATCH_UP_PAUSE`); returns how many
        markers were consumed."""
        rollups = self.rollups
        done = 0
        while True:
            start = self._clock()
            n = await asyncio.to_thread(rollups.process_batch, wait=False)
            done += n
            if n < rollups.batch_size:
                return done
            await asyncio.sleep((self._clock() - start) * CATCH_UP_PAUSE)

    async def _run(self) -> None:
        wait = self.interval_s
        while True:
            await asyncio.sleep(wait)
            self.rollups.cells = 0
            try:
                # Replicas (every worker of ``serve --workers N``) all run this loop: one
                # rolls up, the others find it busy and skip, not wait their turn and
                # then find nothing left.
                await self.roll_up()
                await asyncio.to_thread(self.rollups.prune_expired)
            except Exception:
                log.exception("rolling up usage failed; will retry")
            wait = self.next_wait(self.rollups.cells)
