"""The batched durable writer: usage events are queued in memory and group-committed.

The request path only appends to a list. A background task flushes ``flush_interval_ms``
after the first queued event (or sooner when ``batch_max`` events wait) in one
transaction on a worker thread, so no request ever waits for the database; with nothing
queued it sleeps. Inserts are idempotent by
request id, so a replayed batch never counts twice. With an interval of 0 every submit
is written before the request finishes (the synchronous mode).

A batch the database refuses for what a row holds is split until the refused record
stands alone; that record goes to the dead letters (``store.dead_letters``) and the rest
land. A database out of reach is retried, with a growing pause, and nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from typing import Any

from sqlalchemy import Engine, Table
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.schema import ScalarElementColumnDefault

from tokenomy.store.dead_letters import Record, dead_letter_row, refused

log = logging.getLogger(__name__)


Item = tuple[Table, dict[str, Any]]


def insert_ignoring_duplicates(engine: Engine, items: Sequence[Item]) -> None:
    """Insert rows of several tables in ONE transaction, skipping existing primary keys
    (on a connection from the pool for this call; the writer keeps its own, see Sink)."""
    sink = Sink(engine)
    try:
        sink.write(items)
    finally:
        sink.close()


def rows_by_table(items: Sequence[Item]) -> dict[Table, list[dict[str, Any]]]:
    """Each table's rows, tables in the order they first appear (one COPY or INSERT each)."""
    by_table: dict[Table, list[dict[str, Any]]] = {}
    for table, row in items:
        by_table.setdefault(table, []).append(row)
    return by_table


class _Disconnected(Exception):
    """The database had dropped the connection (the write was rolled back)."""


class Sink:
    """One database connection kept by the writer's thread from flush to flush.

    One transaction per write is what makes a usage event and its ledger entries
    all-or-nothing. Rows go through the driver's cursor as plain statements, not through
    SQLAlchemy's execution (its per-statement work, and a pool checkout with a ping per
    flush, cost more than the inserts of a small batch): on PostgreSQL a COPY per table
    (straight into it; through a staging table when the batch holds rows already
    written), on SQLite multi-row inserts of :data:`SQLITE_CHUNK` rows.
    Tables are written in the order they first appear. A connection that failed is
    dropped; the next write takes a fresh one from the pool."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"
        #: The connection kept from the last write, and the staging tables it has made
        #: (PostgreSQL).
        self._raw: PoolProxiedConnection | None = None
        self._staged: set[str] = set()

    def write(self, items: Sequence[Item]) -> None:
        if not items:
            return
        by_table = rows_by_table(items)
        if self._raw is not None:
            try:
                self._write(self._raw, by_table)
                return
            except _Disconnected:
                # Kept since the last flush, it died meanwhile (a database restart): the
                # pool's ping on checkout would have caught that. Rolled back, the rows
                # go again once, on a fresh connection.
                pass
        try:
            self._write(self._engine.raw_connection(), by_table)
        except _Disconnected as e:
            assert e.__cause__ is not None
            raise e.__cause__ from None  # the driver's own error, for the caller's log

    def _write(
        self, raw: PoolProxiedConnection, by_table: dict[Table, list[dict[str, Any]]]
    ) -> None:
        staged = self._staged if raw is self._raw else set()
        try:
            if self._pg:
                try:
                    _copy_straight(raw, by_table)
                except Exception as e:
                    if getattr(e, "sqlstate", None) != UNIQUE_VIOLATION:
                        raise
                    # A replayed batch (its first try's commit went unanswered): start the
                    # transaction again, and let ON CONFLICT skip the rows already there.
                    raw.rollback()
                    _copy_in(raw, by_table, staged)
            else:
                cur = raw.cursor()
                for table, rows in by_table.items():
                    _insert_chunked(cur, table, rows)
                cur.close()
            raw.commit()
        except BaseException as e:
            dialect = self._engine.dialect
            lost = isinstance(e, dialect.loaded_dbapi.Error) and dialect.is_disconnect(
                e, raw.dbapi_connection, None
            )
            with contextlib.suppress(Exception):
                raw.rollback()
            raw.invalidate()  # whatever broke, the next write starts on a fresh connection
            self._raw = None
            if lost:
                raise _Disconnected from e
            raise
        self._raw, self._staged = raw, staged

    def close(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()  # back to the pool


#: Rows per multi-row INSERT on SQLite. One statement per chunk, not one step per row:
#: the writer thread gives up and takes back the GIL around every step, and each time it
#: must wait for the event loop's thread to let go.
SQLITE_CHUNK = 256


def _insert_chunked(cur: Any, table: Table, rows: list[dict[str, Any]]) -> None:
    """Full chunks, then the rest in statements of falling powers of two (a remainder of
    13 rows is 8 + 4 + 1): a handful of steps a flush, from a handful of cached statements
    (an executemany would take one step, and one GIL round trip, per row)."""
    names, defaults = table_columns(table)
    params = [tuple(map(r.get, names, defaults)) for r in rows]
    i, n, size = 0, len(params), SQLITE_CHUNK
    while i < n:
        while size > n - i:
            size //= 2
        sql = _values_sql(table, size)
        while i + size <= n:
            cur.execute(sql, tuple(chain.from_iterable(params[i : i + size])))
            i += size


@functools.cache
def table_columns(table: Table) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """The table's column names and each one's default for a row that leaves it out."""
    return tuple(c.name for c in table.columns), tuple(_scalar_default(c) for c in table.columns)


@functools.cache
def _values_sql(table: Table, rows: int) -> str:
    """``INSERT ... VALUES (...) x rows ON CONFLICT DO NOTHING`` for every column."""
    names, _ = table_columns(table)
    one = "(" + ", ".join("?" for _ in names) + ")"
    cols = ", ".join(f'"{n}"' for n in names)
    return (
        f'INSERT INTO "{table.name}" ({cols}) VALUES {", ".join([one] * rows)} '
        "ON CONFLICT DO NOTHING"
    )


def _scalar_default(column: Any) -> Any:
    d = column.default
    return d.arg if isinstance(d, ScalarElementColumnDefault) else None


#: PostgreSQL's SQLSTATE for a duplicate key.
UNIQUE_VIOLATION = "23505"


def copy_sql(table: str, names: tuple[str, ...]) -> str:
    """``COPY "table" (every column) FROM STDIN``; rows follow in the order of ``names``."""
    cols = ", ".join(f'"{n}"' for n in names)
    return f'COPY "{table}" ({cols}) FROM STDIN'


def _copy(
    cur: Any,
    table: str,
    rows: list[dict[str, Any]],
    names: tuple[str, ...],
    defaults: tuple[Any, ...],
) -> None:
    """One COPY of ``rows`` into ``table``, a row's missing columns at their defaults."""
    with cur.copy(copy_sql(table, names)) as copy:
        for r in rows:
            copy.write_row(tuple(map(r.get, names, defaults)))


def _copy_straight(raw: PoolProxiedConnection, by_table: dict[Table, list[dict[str, Any]]]) -> None:
    """PostgreSQL, the usual case: COPY each table's rows straight into it. A row already
    there fails the whole COPY with a unique violation (then :func:`_copy_in` does it
    again with ON CONFLICT). Against staging every batch, the server does about 40% less
    work a flush: no INSERT ... SELECT to plan and run, no staging tables to empty at
    every commit."""
    cur = raw.driver_connection.cursor()  # type: ignore[union-attr]
    for table, rows in by_table.items():
        _copy(cur, table.name, rows, *table_columns(table))


def _copy_in(
    raw: PoolProxiedConnection, by_table: dict[Table, list[dict[str, Any]]], staged: set[str]
) -> None:
    """PostgreSQL, for a batch that holds rows already written: COPY each table's rows
    into a session-local staging table, then one
    ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` per table, all sent as one query.
    COPY formats rows in the driver's C code (binding them as parameters cost the writer
    about three times the CPU); the staging tables are made once per connection
    (``staged``: those this connection has). Round trips: one per table, plus one."""
    cur = raw.driver_connection.cursor()  # type: ignore[union-attr]
    sql = [staging_sql(t) for t in by_table]
    missing = [create for staging, create, _ in sql if staging not in staged]
    if missing:
        cur.execute("; ".join(missing))
    for (staging, _, _), (table, rows) in zip(sql, by_table.items(), strict=True):
        _copy(cur, staging, rows, *table_columns(table))
    cur.execute("; ".join(insert for _, _, insert in sql))
    staged.update(staging for staging, _, _ in sql)


@functools.cache
def staging_sql(table: Table) -> tuple[str, str, str]:
    """(the staging table's name, its CREATE, the INSERT from it). The staging table has the
    target's column types, so an over-long value fails as a plain insert would; it lives
    as long as the connection and empties at every commit."""
    names, _ = table_columns(table)
    staging = f"_writer_{table.name}"
    cols = ", ".join(f'"{n}"' for n in names)
    create = (
        f'CREATE TEMP TABLE IF NOT EXISTS "{staging}" '
        f'(LIKE "{table.name}" INCLUDING DEFAULTS) ON COMMIT DELETE ROWS'
    )
    insert = (
        f'INSERT INTO "{table.name}" ({cols}) SELECT {cols} FROM "{staging}" ON CONFLICT DO NOTHING'
    )
    return staging, create, insert


@dataclass(frozen=True, slots=True)
class WriterHealth:
    """What /healthz reports of a writer."""

    pending: int  # rows not yet committed, in memory
    oldest_age_s: float  # age of the oldest of them (0 with none)
    last_error: str | None  # why the last flush failed; None once one succeeded
    dead_letters: int  # records this process quarantined

    def behind(self, max_lag_s: float, max_pending: int) -> bool:
        return self.oldest_age_s > max_lag_s or self.pending > max_pending


class BatchWriter:
    """Group-commits rows (of ``table`` unless another is given); ``submit`` never blocks.

    Rows are queued as records (one submit each): the rows of a record commit together
    or not at all, also when a refused batch is split."""

    def __init__(
        self,
        engine: Engine,
        table: Table,
        *,
        flush_interval_ms: int = 50,
        batch_max: int = 2000,
        on_flushed: Callable[[Sequence[Item]], None] | None = None,
    ) -> None:
        self._engine = engine
        self._sink = Sink(engine)
        self._table = table
        self._interval = flush_interval_ms / 1000
        self._batch_max = batch_max
        self._pending: list[Record] = []
        self._rows = 0  # rows in _pending
        self._flushing_rows = 0  # rows of the flush being written
        #: When the oldest record in _pending, and in the flush being written, was queued
        #: (time.monotonic()); None with none.
        self._queued_since: float | None = None
        self._flushing_since: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._on_flushed = on_flushed
        # One thread of its own: every flush runs where the last one left its caches
        # (the shared default pool hands each flush to whichever thread is free). On
        # PostgreSQL too: the same COPYs awaited on the event loop (psycopg async) cost
        # the same CPU but put each flush's work between the requests in flight; at
        # 1000 req/s on 2 cores, p99 was 2.0-2.4 ms on the loop against 1.0-1.3 ms here.
        self._thread: ThreadPoolExecutor | None = None
        self._closing = False
        self._idle = False  # the loop sleeps until a row comes (see _run)
        self.written = 0
        self.failures = 0
        self.dead_letters = 0
        self.last_error: str | None = None

    @property
    def flush_interval_s(self) -> float:
        """How often a group commit runs (0: every record commits before its answer)."""
        return self._interval

    @property
    def synchronous(self) -> bool:
        return self._interval == 0

    def start(self) -> None:
        if self._task is None and not self.synchronous:
            self._task = asyncio.create_task(self._run(), name=f"writer:{self._table.name}")

    def submit(self, row: dict[str, Any], table: Table | None = None) -> None:
        self.submit_many(((table if table is not None else self._table, row),))

    def submit_many(self, items: Sequence[Item]) -> None:
        """Queue rows that must be committed together (one record: all or nothing).
        ``items`` is kept as it is, not copied: the caller hands it over."""
        if self._queued_since is None:
            self._queued_since = time.monotonic()
        self._pending.append(items)
        self._rows += len(items)
        if self._idle or self._rows >= self._batch_max:
            self._wake.set()

    async def submit_and_wait(self, row: dict[str, Any]) -> None:
        """Submit, and in synchronous mode return only once the row is committed."""
        self.submit(row)
        if self.synchronous:
            await self.flush()

    async def flush(self) -> None:
        """Write everything pending now; on failure keep it queued for the next try.

        Records the database refuses are quarantined, not retried (see :meth:`_commit`):
        a flush fails only when the database could not be written at all."""
        async with self._lock:
            if not self._pending:
                return
            batch, rows, self._pending, self._rows = self._pending, self._rows, [], 0
            self._flushing_since, self._queued_since = self._queued_since, None
            self._flushing_rows = rows
            try:
                if self._thread is None:
                    self._thread = ThreadPoolExecutor(1, thread_name_prefix="usage-writer")
                landed, dead = await asyncio.get_running_loop().run_in_executor(
                    self._thread, self._commit, batch
                )
            except BaseException as e:
                # Kept for the next try, cancelled or not: whether a commit cut short
                # landed is unknown, and writing it again is harmless (rows are keyed
                # by request id; a replay skips those already there).
                self._pending[:0] = batch
                self._rows += rows
                self._queued_since = self._flushing_since
                self._flushing_since, self._flushing_rows = None, 0
                if isinstance(e, Exception):
                    self.failures += 1
                    self.last_error = f"{type(e).__name__}: {e}"[:500]
                    log.exception("writing %d %s rows failed; will retry", rows, self._table.name)
                raise
            self._flushing_since, self._flushing_rows = None, 0
            self.last_error = None
            self.written += len(landed)
            self.dead_letters += dead
            if self._on_flushed is not None:
                self._on_flushed(landed)

    def _commit(self, batch: list[Record]) -> tuple[list[Item], int]:
        """Write ``batch`` in one transaction (on the writer's thread); if the database
        refuses its rows, in halves, down to single records, each refused record going
        to the dead letters. Returns the rows that landed and the records quarantined.
        A failure to reach the database propagates: the caller keeps the whole batch."""
        items = list(chain.from_iterable(batch))
        try:
            self._sink.write(items)
            return items, 0
        except Exception as e:
            if not refused(e, self._engine.dialect.loaded_dbapi):
                raise
            error = e
        if len(batch) == 1:
            self._quarantine(batch[0], error)
            return [], 1
        mid = len(batch) // 2
        first, dead_first = self._commit(batch[:mid])
        second, dead_second = self._commit(batch[mid:])
        return first + second, dead_first + dead_second

    def _quarantine(self, record: Record, error: Exception) -> None:
        letter = dead_letter_row(record, error)
        log.error(
            "the database refused the record of request %s (%s); it is kept in %s",
            letter[1]["request_id"],
            letter[1]["reason"],
            letter[0].name,
        )
        try:
            self._sink.write([letter])
        except Exception as e:
            if not refused(e, self._engine.dialect.loaded_dbapi):
                raise  # the database went away meanwhile: the whole batch is retried
            # Not even the letter could be stored: the log keeps the record.
            log.error("the dead letter was refused too (%s); the record: %s", e, letter[1])

    def health(self) -> WriterHealth:
        since = [t for t in (self._queued_since, self._flushing_since) if t is not None]
        return WriterHealth(
            pending=self.pending,
            oldest_age_s=round(time.monotonic() - min(since), 3) if since else 0,
            last_error=self.last_error,
            dead_letters=self.dead_letters,
        )

    async def _run(self) -> None:
        failed = 0  # flushes failed in a row: the pause before the next try grows
        while not self._closing:
            if not self._pending:
                # Nothing queued: sleep until the first row comes, not every interval.
                self._idle = True
                await self._wake.wait()
                self._idle = False
                self._wake.clear()
                if self._closing:
                    break
            # Then gather what else arrives for one interval (or until batch_max): one commit.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            try:
                await self.flush()
                failed = 0
            except Exception:
                failed += 1
                await asyncio.sleep(min(1.0, self._interval * 5 * 2**failed))

    async def close(self) -> None:
        """Stop the loop and drain everything still queued (called on SIGTERM/shutdown).

        The loop is asked to stop, not cancelled: a flush cancelled while its thread
        writes would have taken its rows out of the queue with no word of whether they
        were committed."""
        if self._task is not None:
            self._closing = True
            self._wake.set()
            await self._task
            self._task = None
        try:
            for _ in range(3):
                try:
                    await self.flush()
                    return
                except Exception:
                    await asyncio.sleep(0.2)
            log.error("%d %s rows could not be written at shutdown", self._rows, self._table.name)
        finally:
            if self._thread is not None:
                with contextlib.suppress(Exception):
                    await asyncio.get_running_loop().run_in_executor(self._thread, self._sink.close)
                self._thread.shutdown(wait=False)
                self._thread = None

    @property
    def pending(self) -> int:
        """Rows not yet committed: queued, or in the flush being written."""
        return self._rows + self._flushing_rows
