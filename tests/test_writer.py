"""The batched writer: group commits, idempotent replays, draining, the synchronous mode."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from tests.conftest import throwaway_postgres
from tokenomy.store import writer as writer_mod
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.schema import usage_events
from tokenomy.store.writer import SQLITE_CHUNK, BatchWriter


def row(i: int) -> dict[str, Any]:
    return {
        "request_id": f"req_{i}",
        "ts_ms": 1_700_000_000_000 + i,
        "key_id": "key_x",
        "org_id": None,
        "project_id": None,
        "endpoint": "chat",
        "dialect": "openai",
        "model": "m",
        "deployment": "v/m",
        "vendor": "v",
        "stream": False,
        "status": "ok",
        "http_status": 200,
        "error_code": None,
        "input_tokens": i,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 2 * i,
        "reasoning_tokens": 0,
        "usage_source": "upstream",
        "latency_ms": 1,
        "ttft_ms": 1,
        "attempts": 1,
    }


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database of each kind: the writer has one insert path per dialect."""
    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'w.db'}"
        if request.param == "postgres":
            url = stack.enter_context(throwaway_postgres())
        e = open_engine(url)
        migrate(e)
        yield e
        e.dispose()


def count(engine: Engine) -> tuple[int, int]:
    with engine.connect() as c:
        n, s = c.execute(select(func.count(), func.sum(usage_events.c.input_tokens))).one()
    return int(n), int(s or 0)


async def test_group_commit_within_the_interval(engine: Engine) -> None:
    w = BatchWriter(engine, usage_events, flush_interval_ms=20)
    w.start()
    for i in range(1, 501):
        w.submit(row(i))
    assert count(engine)[0] == 0  # submit never writes on the caller's path
    await asyncio.sleep(0.3)
    assert count(engine) == (500, sum(range(1, 501)))
    await w.close()


async def test_replay_is_idempotent(engine: Engine) -> None:
    w = BatchWriter(engine, usage_events, flush_interval_ms=10_000)
    for i in range(1, 11):
        w.submit(row(i))
    await w.flush()
    if engine.dialect.name == "postgresql":
        assert w._sink._staged == set()  # new rows go straight in, no staging table
    for i in range(1, 11):  # the same events again, e.g. replayed after a crash
        w.submit(row(i))
    w.submit(row(11))
    await w.flush()
    assert count(engine) == (11, 66)
    if engine.dialect.name == "postgresql":
        # The straight COPY met the rows already there; the batch went again by staging.
        assert w._sink._staged == {"_writer_usage_events"}
        assert w.failures == 0


async def test_close_drains_everything(engine: Engine) -> None:
    w = BatchWriter(engine, usage_events, flush_interval_ms=60_000)
    w.start()
    for i in range(1, 101):
        w.submit(row(i))
    await w.close()
    assert count(engine) == (100, 5050) and w.pending == 0


async def test_close_during_a_flush_waits_for_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutting down while the loop's group commit is being written: close returns only
    once those rows are committed, and the rest after them."""
    started = threading.Event()
    real = writer_mod.Sink.write

    def slow(sink: writer_mod.Sink, items: Any) -> None:
        if not started.is_set():  # the first commit takes a while (a busy database)
            started.set()
            time.sleep(0.5)
        real(sink, items)

    monkeypatch.setattr(writer_mod.Sink, "write", slow)
    w = BatchWriter(engine, usage_events, flush_interval_ms=10)
    w.start()
    for i in range(1, 51):
        w.submit(row(i))
    while not started.is_set():
        await asyncio.sleep(0.005)
    for i in range(51, 61):  # arrive while the first batch is being written
        w.submit(row(i))
    await w.close()
    assert count(engine) == (60, sum(range(1, 61))) and w.pending == 0


async def test_synchronous_mode(engine: Engine) -> None:
    w = BatchWriter(engine, usage_events, flush_interval_ms=0)
    assert w.synchronous
    await w.submit_and_wait(row(1))
    assert count(engine) == (1, 1)


async def test_rows_of_several_tables_commit_together_or_are_quarantined_together(
    engine: Engine,
) -> None:
    """A record whose ledger row the database refuses is not half-written: its usage
    event goes to the dead letters with it, and the other record lands whole."""
    from tokenomy.store.schema import ledger_txns, writer_dead_letters

    w = BatchWriter(engine, usage_events, flush_interval_ms=10_000)
    txn = {"id": "usage:r1", "ts_ms": 1, "kind": "usage", "org_id": "o", "request_id": "r1"}
    w.submit_many([(usage_events, row(1)), (ledger_txns, txn | {"memo": None})])
    w.submit_many([(usage_events, row(2)), (ledger_txns, {**txn, "id": "x", "kind": None})])
    await w.flush()  # NOT NULL on kind refuses the second record, not the first
    with engine.connect() as conn:
        assert conn.execute(select(ledger_txns.c.id)).scalars().all() == ["usage:r1"]
        assert conn.execute(select(writer_dead_letters.c.request_id)).scalars().all() == ["req_2"]
    assert count(engine) == (1, 1) and w.pending == 0 and w.dead_letters == 1


async def test_duplicates_within_one_batch_count_once(engine: Engine) -> None:
    w = BatchWriter(engine, usage_events, flush_interval_ms=10_000)
    for i in (1, 2, 1, 3, 2):
        w.submit(row(i))
    await w.flush()
    assert count(engine) == (3, 6)
    # Over several multi-row statements, repeats landing in other statements than the first.
    n = SQLITE_CHUNK * 2 + 17
    for i in range(n):
        w.submit(row(4 + i % (n // 2)))
    await w.flush()
    assert count(engine) == (3 + n // 2, sum(range(1, 4 + n // 2)))


@pytest.mark.parametrize("n", [1, 2, 3, 13, SQLITE_CHUNK - 1, SQLITE_CHUNK, SQLITE_CHUNK + 1, 700])
async def test_every_row_of_a_batch_lands_once_whatever_its_size(engine: Engine, n: int) -> None:
    # Whole chunks, then falling powers of two: no row left out, none written twice.
    w = BatchWriter(engine, usage_events, flush_interval_ms=10_000)
    for i in range(1, n + 1):
        w.submit(row(i))
    await w.flush()
    assert count(engine) == (n, n * (n + 1) // 2)


async def test_missing_columns_take_their_defaults_and_nulls_stay_null(engine: Engine) -> None:
    w = BatchWriter(engine, usage_events, flush_interval_ms=10_000)
    w.submit(row(1))  # no cost columns: defaults apply
    w.submit(row(2) | {"org_id": "org_a", "cost_nanos": 2_000_000_000_123, "currency": "USD"})
    await w.flush()
    with engine.connect() as c:
        got = c.execute(
            select(
                usage_events.c.org_id, usage_events.c.cost_nanos, usage_events.c.currency
            ).order_by(usage_events.c.request_id)
        ).all()
    assert got[0] == (None, 0, None)  # cost_nanos defaults to 0
    assert got[1] == ("org_a", 2_000_000_000_123, "USD")


async def test_an_over_long_value_is_quarantined_not_truncated(engine: Engine) -> None:
    from tokenomy.store.dead_letters import list_dead_letters

    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite does not enforce varchar lengths")
    w = BatchWriter(engine, usage_events, flush_interval_ms=10_000)
    w.submit(row(1) | {"currency": "USDX"})
    await w.flush()
    assert count(engine)[0] == 0 and w.pending == 0
    (dead,) = list_dead_letters(engine)
    assert dead["record"][0]["row"]["currency"] == "USDX"  # kept whole, as queued
    assert "too long" in dead["reason"]


async def test_an_idle_writer_sleeps_until_a_row_comes(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'idle.db'}")
    migrate(engine)
    w = BatchWriter(engine, usage_events, flush_interval_ms=5)
    flushes = 0
    real = w.flush

    async def counted() -> None:
        nonlocal flushes
        flushes += 1
        await real()

    w.flush = counted  # type: ignore[method-assign]
    w.start()
    await asyncio.sleep(0.1)
    assert flushes == 0  # twenty intervals idle, and not one wake-up
    w.submit(row(1))
    w.submit(row(2))
    await asyncio.sleep(0.1)
    assert flushes == 1 and count(engine) == (2, 3)  # both in the one group commit
    await w.close()
    engine.dispose()


async def test_the_writer_keeps_its_connection_and_replaces_one_that_died(
    engine: Engine,
) -> None:
    """One connection from flush to flush (no checkout and ping each time); if the
    database dropped it meanwhile, the flush goes again on a fresh one, not failed."""
    w = BatchWriter(engine, usage_events, flush_interval_ms=10_000)
    w.submit(row(1))
    await w.flush()
    kept = w._sink._raw
    assert kept is not None
    w.submit(row(2))
    await w.flush()
    assert w._sink._raw is kept
    if engine.dialect.name == "postgresql":
        with engine.connect() as c:  # a restart, as the writer's connection sees it
            c.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        w.submit(row(3))
        await w.flush()
        assert w.failures == 0 and w._sink._raw is not kept
    await w.close()
    assert w._sink._raw is None  # handed back at close
    assert count(engine)[0] == (3 if engine.dialect.name == "postgresql" else 2)
