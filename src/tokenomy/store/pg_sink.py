"""The durable writer's PostgreSQL connection on the event loop itself (psycopg async).

A writer thread shared the GIL with the event loop: at every libpq call it let go and
took it back, some sixty hand-offs a flush, each one a thread that must wait for the
other (futex calls, forced switches every switch interval) and a stall of the requests
in flight. On the loop the COPY's rows are formatted by the driver's C code as before,
and the waits for the server are the loop's own, with no thread to hand anything to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import Engine, Table

from tokenomy.store.writer import (
    UNIQUE_VIOLATION,
    Item,
    copy_sql,
    rows_by_table,
    staging_sql,
    table_columns,
)


class AsyncPgSink:
    """One connection kept from flush to flush; one transaction per write (a usage event
    and its ledger rows all or nothing). Rows are COPYed straight into their tables; a
    batch holding rows already written (a commit whose answer was lost) goes again
    through staging tables with ON CONFLICT DO NOTHING. A connection that failed is
    closed; the next write opens a fresh one."""

    def __init__(self, engine: Engine) -> None:
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._staged: set[str] = set()

    async def write(self, items: Sequence[Item]) -> None:
        if not items:
            return
        by_table = rows_by_table(items)
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                await self._write(conn, by_table)
                return
            except psycopg.OperationalError:
                # Kept since the last flush, it died meanwhile (a database restart).
                # Rolled back, the rows go again once, on a fresh connection.
                pass
        conn = await psycopg.AsyncConnection.connect(self._conninfo)
        self._staged = set()
        await self._write(conn, by_table)

    async def _write(
        self, conn: psycopg.AsyncConnection[Any], by_table: dict[Table, list[dict[str, Any]]]
    ) -> None:
        try:
            try:
                async with conn.cursor() as cur:
                    for table, rows in by_table.items():
                        await _copy(cur, table.name, rows, *table_columns(table))
            except psycopg.Error as e:
                if e.sqlstate != UNIQUE_VIOLATION:
                    raise
                await conn.rollback()
                await self._copy_in(conn, by_table)
            await conn.commit()
        except BaseException:
            self._conn = None
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        self._conn = conn

    async def _copy_in(
        self, conn: psycopg.AsyncConnection[Any], by_table: dict[Table, list[dict[str, Any]]]
    ) -> None:
        sql = [staging_sql(t) for t in by_table]
        async with conn.cursor() as cur:
            missing = [create for staging, create, _ in sql if staging not in self._staged]
            if missing:
                await cur.execute("; ".join(missing))
            for (staging, _, _), (table, rows) in zip(sql, by_table.items(), strict=True):
                await _copy(cur, staging, rows, *table_columns(table))
            await cur.execute("; ".join(insert for _, _, insert in sql))
        self._staged.update(staging for staging, _, _ in sql)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


async def _copy(
    cur: psycopg.AsyncCursor[Any],
    table: str,
    rows: list[dict[str, Any]],
    names: tuple[str, ...],
    defaults: tuple[Any, ...],
) -> None:
    """As the writer thread's COPY (``tokenomy.store.writer``), awaited on the loop."""
    async with cur.copy(copy_sql(table, names)) as copy:
        for r in rows:
            await copy.write_row(tuple(map(r.get, names, defaults)))
