"""A batch the database refuses: the good records land, the bad one is quarantined.

One record the database rejects (an over-long model name, a NUL byte, a NULL where none
may be) used to fail its whole group commit again and again, so every later record of
the process stayed in memory. Now the batch is split until the refused record stands
alone; it goes to ``writer_dead_letters`` with the database's reason, and the writer
goes on. A database that cannot be reached is another matter: nothing is quarantined,
the rows wait and are retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, func, select

from tests.conftest import throwaway_postgres
from tests.test_writer import row
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.schema import ledger_postings, ledger_txns, usage_events, writer_dead_letters
from tokenomy.store.writer import BatchWriter, Item


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'q.db'}"
        if request.param == "postgres":
            url = stack.enter_context(throwaway_postgres())
        e = open_engine(url)
        migrate(e)
        yield e
        e.dispose()


def posting(txn: str, account: str, nanos: int) -> dict[str, Any]:
    return {"txn_id": txn, "account": account, "amount_nanos": nanos, "currency": "USD"}


def record(i: int, **usage: Any) -> list[Item]:
    """A usage event and its balanced ledger transaction: one unit, all or nothing."""
    rid = f"req_{i}"
    txn = f"usage:{rid}"
    return [
        (usage_events, row(i) | {"cost_nanos": 10 * i, "currency": "USD"} | usage),
        (ledger_txns, {"id": txn, "ts_ms": i, "kind": "usage", "org_id": "o", "request_id": rid}),
        (ledger_postings, posting(txn, "org:o", -10 * i)),
        (ledger_postings, posting(txn, "revenue", 10 * i)),
    ]


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as c:
        return {
            t.name: c.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (usage_events, ledger_txns, ledger_postings, writer_dead_letters)
        }


def dead_letters(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(select(writer_dead_letters))]


def poisons(dialect: str) -> list[dict[str, Any]]:
    """Values the database refuses: PostgreSQL enforces lengths and refuses NUL in text;
    SQLite enforces neither, but refuses a NULL in a NOT NULL column."""
    out: list[dict[str, Any]] = [{"model": None}]
    if dialect == "postgresql":
        out += [{"model": "m" * 201}, {"model": "gpt\x00-4"}]
    return out


async def test_a_poison_record_is_quarantined_and_the_good_ones_land(engine: Engine) -> None:
    for poison in poisons(engine.dialect.name):
        with engine.begin() as c:
            for t in (ledger_postings, ledger_txns, usage_events, writer_dead_letters):
                c.execute(t.delete())
        w = BatchWriter(engine, usage_events, flush_interval_ms=10_000)
        for i in range(1, 41):
            w.submit_many(record(i, **(poison if i == 17 else {})))
        await w.flush()  # no exception: nothing is left to retry
        assert w.pending == 0, poison
        assert counts(engine) == {
            "usage_events": 39,
            "ledger_txns": 39,  # the poison's ledger rows went with it, not half-written
            "ledger_postings": 78,
            "writer_dead_letters": 1,
        }, poison
        with engine.connect() as c:
            ids = {r[0] for r in c.execute(select(usage_events.c.request_id))}
        assert "req_17" not in ids and len(ids) == 39
        (dead,) = dead_letters(engine)
        assert dead["request_id"] == "req_17"
        assert dead["reason"]  # the database's own words
        raw = json.loads(dead["record"])
        assert [r["table"] for r in raw] == [
            "usage_events",
            "ledger_txns",
            "ledger_postings",
            "ledger_postings",
        ]
        assert raw[0]["row"]["model"] == poison["model"]  # the record, exactly as queued
        assert raw[0]["row"]["cost_nanos"] == 170
        assert w.dead_letters == 1 and w.written == 39 * 4
        await w.close()


async def test_the_writer_keeps_flushing_after_a_poison_record(engine: Engine) -> None:
    w = BatchWriter(engine, usage_events, flush_interval_ms=10)
    w.start()
    w.submit_many(record(1, model=None))
    w.submit_many(record(2))
    await asyncio.sleep(0.3)
    for i in range(3, 103):  # later records, in later group commits
        w.submit_many(record(i))
        if i % 10 == 0:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    assert w.pending == 0
    assert counts(engine) == {
        "usage_events": 101,
        "ledger_txns": 101,
        "ledger_postings": 202,
        "writer_dead_letters": 1,
    }
    assert w.health().dead_letters == 1 and w.health().last_error is None
    await w.close()


async def test_a_replayed_poison_record_is_quarantined_once(engine: Engine) -> None:
    w = BatchWriter(engine, usage_events, flush_interval_ms=10_000)
    w.submit_many(record(1, model=None))
    await w.flush()
    w.submit_many(record(1, model=None))  # the same record again (a replayed batch)
    w.submit_many(record(2))
    await w.flush()
    assert counts(engine)["writer_dead_letters"] == 1 and counts(engine)["usage_events"] == 1


@contextlib.contextmanager
def unreachable(engine: Engine) -> Iterator[None]:
    """The database refuses every connection (PostgreSQL) or stays locked (SQLite)
    until the block ends."""
    if engine.dialect.name == "postgresql":
        url = engine.url
        admin = url.set(database="postgres").render_as_string(hide_password=False)
        admin = admin.replace("postgresql+psycopg", "postgresql")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS false')
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (url.database,),
            )
            try:
                yield
            finally:
                conn.execute(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS true')
        return
    lock = sqlite3.connect(str(engine.url.database), timeout=10, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        lock.execute("ROLLBACK")
        lock.close()


def impatient(engine: Engine) -> Engine:
    """The same database; on SQLite, a busy timeout of 0.1 s instead of 30."""
    if engine.dialect.name == "postgresql":
        return engine
    return create_engine(engine.url, connect_args={"timeout": 0.1})


async def test_an_unreachable_database_is_retried_not_quarantined(engine: Engine) -> None:
    e = impatient(engine)
    w = BatchWriter(e, usage_events, flush_interval_ms=10)
    w.start()
    with unreachable(engine):
        for i in range(1, 11):
            w.submit_many(record(i))
        await asyncio.sleep(0.6)
        h = w.health()
        assert h.pending == 40 and h.last_error is not None and h.dead_letters == 0
        assert h.oldest_age_s >= 0.5
    await asyncio.sleep(1.5)  # the retry backs off up to a second
    h = w.health()
    assert h.pending == 0 and h.last_error is None and h.oldest_age_s == 0
    assert counts(engine) == {
        "usage_events": 10,
        "ledger_txns": 10,
        "ledger_postings": 20,
        "writer_dead_letters": 0,
    }
    await w.close()


async def test_a_failed_flush_keeps_rows_for_the_next_try(engine: Engine) -> None:
    w = BatchWriter(impatient(engine), usage_events, flush_interval_ms=10_000)
    w.submit_many(record(1))
    with unreachable(engine), pytest.raises(Exception):  # noqa: B017 - the driver's error
        await w.flush()
    assert w.pending == 4 and w.failures == 1 and w.dead_letters == 0
    await w.flush()  # the database is back; nothing was lost meanwhile
    assert counts(engine)["usage_events"] == 1 and w.pending == 0
