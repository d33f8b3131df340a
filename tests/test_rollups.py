"""Roll-ups against brute-force aggregation of the raw events: replays, restarts, crashes."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, MetaData, Table, delete, event, select, text

from tests.conftest import gateway_yaml, make_config, migrated_engine
from tokenomy.analytics import buckets, rollup
from tokenomy.analytics.histogram import bucket_of, quantile
from tokenomy.analytics.rollup import DAY, HOUR, MINUTE, Rollups, RollupWorker
from tokenomy.analytics.tables import (
    DIMENSIONS,
    LATENCY_COLS,
    MEASURES,
    TTFT_COLS,
    analytics_pending,
    analytics_pending_sets,
    analytics_state,
    usage_rollups,
)
from tokenomy.api import usage_routes
from tokenomy.app import app_for
from tokenomy.cli.main import main as cli_main
from tokenomy.core.registry import Registry
from tokenomy.services import build_services
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.schema import usage_events
from tokenomy.store.writer import insert_ignoring_duplicates

COUNTRIES = {"deepseek": "CN", "openai": "US", "mistral": "FR"}
REGIONS = {"deepseek/deepseek-chat": "cn-east", "openai/gpt-5.4-mini": "us-west"}
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HIST = (*LATENCY_COLS, *TTFT_COLS)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    with migrated_engine(request.param, tmp_path_factory.mktemp("rollups")) as eng:
        yield eng


#: usage_events columns added by revisions after 0006.
_ADDED_SINCE_0006 = ("price_tier", "task_id", "end_user", "cache_write_1h_tokens")


def events_before_0008() -> Table:
    """The events table as revisions 0002-0006 had it: without the columns added since."""
    return Table(
        "usage_events",
        MetaData(),
        *(c._copy() for c in usage_events.columns if c.name not in _ADDED_SINCE_0006),
    )


def clear(engine: Engine) -> None:
    with engine.begin() as conn:
        for t in (
            usage_events,
            usage_rollups,
            analytics_pending,
            analytics_pending_sets,
            analytics_state,
        ):
            conn.execute(delete(t))


def make_event(rng: random.Random, i: int, span_ms: int = 3 * DAY) -> dict[str, Any]:
    vendor, model = rng.choice(
        [
            ("deepseek", "deepseek-chat"),
            ("openai", "gpt-5.4-mini"),
            ("mistral", "mistral-large"),
            (None, "ghost"),
        ]
    )
    status = rng.choice(["ok", "ok", "ok", "error", "cancelled", "upstream_cut"])
    inp = rng.randrange(0, 5000)
    cached = rng.randrange(0, inp + 1)
    out = rng.randrange(0, 3000)
    currency = rng.choice(["USD", "CNY", None])
    return {
        "request_id": f"req_{i:08d}",
        "ts_ms": T0 + rng.randrange(0, span_ms),
        "key_id": rng.choice(["key_a", "key_b", "key_c", None]),
        "org_id": rng.choice(["org_1", "org_2", None]),
        "project_id": rng.choice(["prj_x", None]),
        "endpoint": "chat",
        "dialect": "openai",
        "model": model,
        "deployment": f"{vendor}/{model}" if vendor else None,
        "vendor": vendor,
        "stream": rng.random() < 0.5,
        "status": status,
        "http_status": 200 if status == "ok" else 502,
        "error_code": None,
        "input_tokens": inp,
        "cached_tokens": cached,
        "cache_write_tokens": rng.randrange(0, inp - cached + 1),
        "output_tokens": out,
        "reasoning_tokens": rng.randrange(0, out + 1),
        "usage_source": "upstream",
        "latency_ms": int(rng.lognormvariate(6, 1.5)),
        "ttft_ms": None if rng.random() < 0.3 else int(rng.lognormvariate(5, 1.2)),
        "attempts": 1,
        "cost_nanos": rng.randrange(0, 10**9) if currency else 0,
        "currency": currency,
        "list_cost_nanos": 0,
        "list_currency": None,
        "price_version": None,
        "fx_rate": None,
        "held_nanos": 0,
    }


def write(engine: Engine, events: list[dict[str, Any]], markers: bool = True) -> None:
    """What the batched writer does (the database adds the markers); without ``markers``
    the events are left unmarked, as a restore from elsewhere might leave them."""
    insert_ignoring_duplicates(engine, [(usage_events, e) for e in events])
    if not markers:
        ids = [e["request_id"] for e in events]
        sets = analytics_pending_sets.c
        with engine.begin() as conn:
            conn.execute(delete(analytics_pending).where(analytics_pending.c.request_id.in_(ids)))
            if engine.dialect.name == "postgresql":  # this write's sets hold only these
                conn.execute(delete(analytics_pending_sets).where(sets.request_ids.overlap(ids)))


def markers(engine: Engine) -> set[str]:
    """What is pending: each marker's id, and the ids a set marker holds."""
    with engine.connect() as conn:
        one = {r[0] for r in conn.execute(select(analytics_pending.c.request_id))}
        if engine.dialect.name != "postgresql":
            return one
        q = select(analytics_pending_sets.c.request_ids)
        return one | {i for ids in conn.execute(q).scalars() for i in ids}


def marker_rows(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t.name: len(conn.execute(select(t)).all())
            for t in (analytics_pending, analytics_pending_sets)
        }


Key = tuple[Any, ...]


ALL_PERIODS = "mhdHDKO"
#: Which dimensions each period keeps, written out here rather than taken from the code.
KEPT = {
    "H": {"model", "vendor", "country", "region", "status", "currency"},
    "D": {"model", "vendor", "country", "region", "status", "currency"},
    "K": {"org_id", "project_id", "key_id", "currency"},
    "O": {"org_id", "currency"},
}
SIZES = {"m": MINUTE, "h": HOUR, "d": DAY, "H": HOUR, "D": DAY, "K": DAY, "O": DAY}


def brute_force(
    events: list[dict[str, Any]], periods: str = ALL_PERIODS
) -> dict[Key, dict[str, int]]:
    """Aggregate unique events straight into every period (no roll-up code involved)."""
    unique = {e["request_id"]: e for e in events}
    out: dict[Key, dict[str, int]] = defaultdict(lambda: dict.fromkeys((*MEASURES, *HIST), 0))
    for e in unique.values():
        dims = (
            e["org_id"] or "",
            e["project_id"] or "",
            e["key_id"] or "",
            e["model"],
            e["vendor"] or "",
            COUNTRIES.get(e["vendor"] or "", ""),
            REGIONS.get(e["deployment"] or "", ""),
            e["status"],
            e["currency"] or "",
        )
        for p, size in SIZES.items():
            if p not in periods:
                continue
            kept = KEPT.get(p, set(DIMENSIONS))
            d = tuple(v if n in kept else "" for n, v in zip(DIMENSIONS, dims, strict=True))
            acc = out[(p, e["ts_ms"] - e["ts_ms"] % size, *d)]
            acc["requests"] += 1
            acc["errors"] += e["status"] != "ok"
            for c in (
                "input_tokens",
                "cached_tokens",
                "cache_write_tokens",
                "output_tokens",
                "reasoning_tokens",
                "cost_nanos",
            ):
                acc[c] += e[c]
            acc["latency_ms_sum"] += e["latency_ms"]
            acc[LATENCY_COLS[bucket_of(e["latency_ms"])]] += 1
            if e["ttft_ms"] is not None:
                acc["ttft_count"] += 1
                acc["ttft_ms_sum"] += e["ttft_ms"]
                acc[TTFT_COLS[bucket_of(e["ttft_ms"])]] += 1
    return dict(out)


def stored(engine: Engine, periods: str = ALL_PERIODS) -> dict[Key, dict[str, int]]:
    out: dict[Key, dict[str, int]] = {}
    with engine.connect() as conn:
        for r in conn.execute(select(usage_rollups)):
            m = r._mapping
            if m["period"] not in periods:
                continue
            key = (m["period"], int(m["bucket_ms"]), *(m[d] for d in DIMENSIONS))
            assert key not in out, f"duplicate rollup row {key}"
            out[key] = {c: int(m[c]) for c in (*MEASURES, *HIST)}
    return out


def migrate_to(engine: Engine, revision: str, *, down: bool = False) -> None:
    """Move the schema to an older revision (or up to one), as an old release left it."""
    cfg = AlembicConfig()
    cfg.set_main_option(
        "script_location", str(resources.files("tokenomy.store").joinpath("migrations"))
    )
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


def assert_exact_after_pruning(
    engine: Engine, events: list[dict[str, Any]], kept_from: int
) -> None:
    """Hours, days and coarser copies hold every event; minutes only those from
    ``kept_from`` on (and some are left)."""
    assert stored(engine, "hdHDKO") == brute_force(events, "hdHDKO")
    kept = {k: v for k, v in brute_force(events, "m").items() if k[1] >= kept_from}
    assert kept and stored(engine, "m") == kept


def new_rollups(
    engine: Engine, batch_size: int = 5000, clock: Callable[[], float] = time.monotonic
) -> Rollups:
    return Rollups(engine, countries=COUNTRIES, regions=REGIONS, batch_size=batch_size, clock=clock)


def test_rollups_match_brute_force_with_replays_and_restarts(engine: Engine) -> None:
    clear(engine)
    rng = random.Random(7)
    events = [make_event(rng, i) for i in range(1500)]
    written: list[dict[str, Any]] = []
    pos = 0
    while pos < len(events):
        n = rng.randrange(1, 200)
        batch = events[pos : pos + n]
        pos += n
        if written and rng.random() < 0.4:  # a replayed batch: the same request ids again
            batch = batch + rng.sample(written, min(len(written), 50))
        rng.shuffle(batch)  # out of time order
        write(engine, batch)
        written += batch
        if rng.random() < 0.5:
            # A "restart": a new Rollups object, and a small batch so runs stop midway.
            new_rollups(engine, batch_size=rng.choice([7, 64, 5000])).refresh(max_batches=2)
    new_rollups(engine).refresh()
    expect = brute_force(events)
    got = stored(engine)
    assert got == expect
    assert sum(v["requests"] for k, v in got.items() if k[0] == "d") == 1500


def test_replaying_everything_changes_nothing(engine: Engine) -> None:
    clear(engine)
    rng = random.Random(11)
    events = [make_event(rng, i) for i in range(400)]
    write(engine, events)
    r = new_rollups(engine)
    r.refresh()
    before = stored(engine)
    write(engine, events)  # the writer retrying a batch that had in fact committed
    assert markers(engine) == set()  # nothing new was inserted, so nothing to add
    assert r.refresh() == 0
    assert stored(engine) == before == brute_force(events)


def test_a_write_marks_its_events_once_per_minute_on_postgresql(engine: Engine) -> None:
    """PostgreSQL: one marker per minute a write's events fall in, holding their ids (a
    marker row per event cost the usage writer's connection a sixth of its CPU, and the
    roll-ups as much again to delete). SQLite marks each event (a trigger per row)."""
    clear(engine)
    rng = random.Random(41)
    events = [make_event(rng, i, span_ms=3 * MINUTE) for i in range(900)]
    minutes = {e["ts_ms"] - e["ts_ms"] % MINUTE for e in events[:300]}
    write(engine, events[:300])
    if engine.dialect.name == "postgresql":
        # None in analytics_pending, where roll-ups before 0020 (a replica not yet
        # upgraded) would take a set for one event and drop the rest.
        expected = {"analytics_pending": 0, "analytics_pending_sets": len(minutes)}
    else:
        expected = {"analytics_pending": 300, "analytics_pending_sets": 0}
    assert marker_rows(engine) == expected
    assert markers(engine) == {e["request_id"] for e in events[:300]}
    write(engine, events[:450])  # a replay of those, and 150 new: only the new are marked
    assert markers(engine) == {e["request_id"] for e in events[:450]}
    write(engine, events[450:])
    # Runs smaller than a marker still take whole markers, and add each event once.
    r = new_rollups(engine, batch_size=7)
    assert r.refresh(max_batches=1) >= 7
    r.refresh()
    assert markers(engine) == set()
    assert stored(engine) == brute_force(events)


def test_downgrading_from_set_markers_keeps_every_pending_event(engine: Engine) -> None:
    clear(engine)
    rng = random.Random(43)
    events = [make_event(rng, i, span_ms=5 * MINUTE) for i in range(200)]
    write(engine, events)
    migrate_to(engine, "0019", down=True)
    with engine.connect() as conn:
        ids = {r[0] for r in conn.execute(text("SELECT request_id FROM analytics_pending"))}
    assert ids == {e["request_id"] for e in events}  # a marker per event again
    migrate(engine)
    new_rollups(engine).refresh()
    assert markers(engine) == set() and stored(engine) == brute_force(events)


def test_a_run_looks_its_events_up_by_id_on_postgresql(engine: Engine) -> None:
    """A run reads only its batch's events, by the primary key, even while PostgreSQL
    still believes the table small (a new database under load, not yet analysed): as a
    join it read every event for each run, a cost growing with the table."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite finds IN (SELECT ...) through the primary key itself")
    clear(engine)
    rng = random.Random(47)
    write(engine, [make_event(rng, i) for i in range(6000)])
    with engine.connect() as conn:
        conn.execute(delete(analytics_pending_sets))
        conn.commit()
    write(engine, [make_event(rng, i) for i in range(6000, 8000)])
    sel = buckets.events_select("m", COUNTRIES, REGIONS, batched=True, postgresql=True)
    with engine.begin() as conn:
        for ddl in buckets.create_temp_tables():
            conn.execute(ddl)
        conn.execute(
            text(
                f"INSERT INTO {buckets.BATCH.name} (request_id, bucket_ms) "
                "SELECT unnest(request_ids), bucket_ms FROM analytics_pending_sets"
            )
        )
        compiled = sel.compile(dialect=engine.dialect)
        plan = " ".join(
            r[0] for r in conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params)
        )
    assert "usage_events_pkey" in plan and "Seq Scan on usage_events" not in plan, plan


def test_a_crash_mid_run_loses_nothing(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    clear(engine)
    rng = random.Random(3)
    events = [make_event(rng, i) for i in range(300)]
    write(engine, events)
    r = new_rollups(engine)

    add = Rollups._add_events

    def boom(self: Rollups, conn: Any) -> None:
        add(self, conn)  # the sums are added, the markers deleted, then:
        raise RuntimeError("killed before the commit")

    monkeypatch.setattr(Rollups, "_add_events", boom)
    with pytest.raises(RuntimeError):
        r.refresh()
    monkeypatch.undo()
    with engine.connect() as conn:  # rolled back: markers still there, no partial rows
        assert len(markers(engine)) == 300
        assert conn.execute(select(usage_rollups)).first() is None
    new_rollups(engine).refresh()
    assert stored(engine) == brute_force(events)


def test_concurrent_writer_and_rollups(engine: Engine) -> None:
    """Events committed while roll-ups run are never lost nor counted twice."""
    clear(engine)
    rng = random.Random(5)
    events = [make_event(rng, i, span_ms=20 * MINUTE) for i in range(2000)]
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(0, len(events), 25):
                write(engine, events[i : i + 25] + events[max(0, i - 10) : i])
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    def roller() -> None:
        r = new_rollups(engine, batch_size=40)
        try:
            while not done.is_set():
                r.refresh(max_batches=3)
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=writer),
        threading.Thread(target=roller),
        threading.Thread(target=roller),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    new_rollups(engine).refresh()
    assert stored(engine) == brute_force(events)


def test_a_run_that_finds_another_under_way_skips_it(engine: Engine) -> None:
    """The worker's runs (``wait=False``) leave the markers to a replica already rolling
    up, and take them on a later run; an explicit run waits its turn."""
    if engine.dialect.name != "postgresql":
        pytest.skip("replicas share a database only on PostgreSQL (an advisory lock)")
    clear(engine)
    rng = random.Random(29)
    events = [make_event(rng, i) for i in range(120)]
    write(engine, events)
    r = new_rollups(engine)
    with engine.connect() as other:  # a replica's run, holding the lock
        other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": rollup._PG_LOCK})
        took: list[int] = []
        skipping = threading.Thread(target=lambda: took.append(r.refresh(wait=False)))
        skipping.start()
        skipping.join(5)
        assert took == [0]  # returned at once, not queued behind the replica's run
        assert len(markers(engine)) == 120 and stored(engine) == {}
        waiting = threading.Thread(target=r.refresh)  # an explicit run queues
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive()
        other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": rollup._PG_LOCK})
        other.commit()
        waiting.join(10)
    assert not waiting.is_alive()
    assert r.refresh(wait=False) == 0  # the explicit run took them all
    assert markers(engine) == set() and stored(engine) == brute_force(events)


def test_reconcile_picks_up_events_written_without_markers(engine: Engine) -> None:
    clear(engine)
    rng = random.Random(9)
    events = [make_event(rng, i) for i in range(300)]
    write(engine, events[:200])
    r = new_rollups(engine)
    r.refresh()
    write(engine, events[200:], markers=False)
    assert r.refresh() == 0
    assert stored(engine) != brute_force(events)
    assert r.reconcile(T0) > 0
    r.refresh()
    assert stored(engine) == brute_force(events)
    assert r.reconcile(T0) == 0


def test_pruned_minutes_keep_hours_and_days_exact(engine: Engine) -> None:
    clear(engine)
    rng = random.Random(13)
    events = [make_event(rng, i) for i in range(400)]
    write(engine, events[:300])
    r = new_rollups(engine)
    r.refresh()
    assert r.prune_minutes(T0 + 2 * DAY) > 0
    write(engine, events[300:])  # late events, many of them in pruned minutes
    r.refresh()
    assert_exact_after_pruning(engine, events, T0 + 2 * DAY)


def test_rebuild_equals_incremental(engine: Engine) -> None:
    clear(engine)
    rng = random.Random(17)
    events = [make_event(rng, i) for i in range(500)]
    write(engine, events, markers=False)
    r = new_rollups(engine)
    r.rebuild()
    assert stored(engine) == brute_force(events)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10**6),
    n=st.integers(1, 120),
    cuts=st.lists(st.integers(0, 120), max_size=6),
    replays=st.lists(st.tuples(st.integers(0, 119), st.integers(1, 30)), max_size=4),
)
def test_property_any_interleaving_matches_brute_force(
    engine: Engine, seed: int, n: int, cuts: list[int], replays: list[tuple[int, int]]
) -> None:
    clear(engine)
    rng = random.Random(seed)
    events = [make_event(rng, i, span_ms=2 * HOUR) for i in range(n)]
    bounds = sorted({0, n, *(min(c, n) for c in cuts)})
    for a, b in itertools.pairwise(bounds):
        write(engine, events[a:b])
        new_rollups(engine, batch_size=rng.choice([1, 5, 100])).refresh()
    for start, length in replays:
        write(engine, events[start % n : start % n + length])
    new_rollups(engine).refresh()
    assert stored(engine) == brute_force(events)


def test_migration_queues_events_recorded_before_it(tmp_path: Any) -> None:
    eng = open_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate_to(eng, "0002")
    rng = random.Random(1)
    events = [make_event(rng, i) for i in range(50)]
    insert_ignoring_duplicates(eng, [(events_before_0008(), e) for e in events])
    migrate(eng)
    new_rollups(eng).refresh()
    assert stored(eng) == brute_force(events)
    eng.dispose()


def test_migration_sums_existing_days_into_key_and_org_days(engine: Engine) -> None:
    """Databases rolled up before the keys' and orgs' daily rows existed get them from
    their daily rows, on both databases."""
    clear(engine)
    rng = random.Random(29)
    events = [make_event(rng, i) for i in range(300)]
    write(engine, events)
    new_rollups(engine).refresh()
    migrate_to(engine, "0003", down=True)  # back to how 0003 left it
    assert not set(stored(engine)) & set(brute_force(events, "KO"))
    migrate(engine)
    assert stored(engine) == brute_force(events)


def test_migration_to_additive_rollups_recomputes_old_markers(engine: Engine) -> None:
    """Markers left by the recomputing roll-ups may belong to events already counted (an
    earlier run recomputed their minute for a neighbour's marker): 0005 turns them into
    minute recomputations, so nothing is counted twice."""
    clear(engine)
    rng = random.Random(31)
    events = [make_event(rng, i) for i in range(400)]
    migrate_to(engine, "0004", down=True)
    at_0004 = events_before_0008()
    insert_ignoring_duplicates(engine, [(at_0004, e) for e in events[:300]])
    analytics_pending_sets.create(engine)  # (today's rebuild empties it; 0020 makes it)
    new_rollups(engine).rebuild()  # all 300 counted, as the old roll-ups would have
    analytics_pending_sets.drop(engine)
    old = [{"request_id": e["request_id"], "bucket_ms": e["ts_ms"] - e["ts_ms"] % MINUTE}
           for e in events[150:400]]  # fmt: skip
    insert_ignoring_duplicates(engine, [(at_0004, e) for e in events[300:]])
    insert_ignoring_duplicates(engine, [(analytics_pending, m) for m in old])
    migrate(engine)
    assert markers(engine) and all(m.startswith(rollup.RECOMPUTE) for m in markers(engine))
    new_rollups(engine).refresh()
    assert stored(engine) == brute_force(events)
    write(engine, events[:50])  # the trigger is in place: a replay adds nothing
    assert markers(engine) == set()


def test_repairs_and_new_events_in_one_batch(engine: Engine) -> None:
    """A batch holding both a minute to recompute and new events of that minute and of
    others counts every event once."""
    clear(engine)
    rng = random.Random(37)
    events = [make_event(rng, i, span_ms=30 * MINUTE) for i in range(600)]
    write(engine, events[:200])
    r = new_rollups(engine)
    r.refresh()
    write(engine, events[200:400], markers=False)  # unmarked: only a repair finds them
    assert r.reconcile(T0) > 0
    write(engine, events[400:])  # new events, marked, some in the minutes under repair
    assert any(not m.startswith(rollup.RECOMPUTE) for m in markers(engine))
    r.refresh()
    assert markers(engine) == set()
    assert stored(engine) == brute_force(events)


def rolled_up(
    engine: Engine, seed: int, n: int, written: int, span_ms: int = MINUTE
) -> tuple[list[dict[str, Any]], Rollups]:
    """A clean database holding the first ``written`` of ``n`` seeded events, rolled up:
    all ``n`` events and the roll-ups that ran."""
    clear(engine)
    rng = random.Random(seed)
    events = [make_event(rng, i, span_ms=span_ms) for i in range(n)]
    write(engine, events[:written])
    r = new_rollups(engine)
    r.refresh()
    return events, r


def test_an_event_written_during_a_repair_is_counted(engine: Engine) -> None:
    """An event of a minute under repair, committed while the repair runs, is counted
    once: PostgreSQL's writers wait for the repair's commit (SQLite has one writer)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's roll-up holds its only writer's lock for the whole run")
    events, r = rolled_up(engine, 53, 50, 40)
    insert_ignoring_duplicates(
        engine, [(analytics_pending, {"request_id": f"{rollup.RECOMPUTE}{T0}", "bucket_ms": T0})]
    )
    late = threading.Thread(target=write, args=(engine, events[40:]))
    from_events = r._from_events

    def and_meanwhile(conn: Any, period: str, buckets: Any) -> None:
        from_events(conn, period, buckets)
        if period == "m" and not late.is_alive():
            late.start()  # another replica's writer commits events of that minute
            late.join(1.0)

    r._from_events = and_meanwhile  # type: ignore[method-assign]
    r.refresh()
    late.join(10)
    assert not late.is_alive()
    r._from_events = from_events  # type: ignore[method-assign]
    r.refresh()
    assert stored(engine) == brute_force(events)


def test_a_repair_gives_way_to_a_long_write(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repair that cannot lock out writers soon (a long transaction writing events)
    leaves its minute for a later run instead of waiting: writers queue behind a lock
    request, so a wait without end stalled every replica's usage writer with it. The
    batch's other events are still rolled up, and nothing is lost or counted twice."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's roll-up holds its only writer's lock for the whole run")
    monkeypatch.setattr(rollup, "WRITERS_LOCK_TIMEOUT_MS", 200)
    events, r = rolled_up(engine, 59, 50, 30)
    marker = f"{rollup.RECOMPUTE}{T0}"
    insert_ignoring_duplicates(
        engine, [(analytics_pending, {"request_id": marker, "bucket_ms": T0})]
    )
    write(engine, events[30:40])
    with engine.connect() as long_write:
        long_write.begin()
        long_write.execute(usage_events.insert(), [events[40]])  # not committed yet
        run = threading.Thread(target=r.refresh)
        run.start()
        run.join(10)
        stalled = run.is_alive()
        if not stalled:
            writer = threading.Thread(target=write, args=(engine, events[41:]))
            writer.start()
            writer.join(10)
            assert not writer.is_alive(), "a writer waited behind the repair"
        long_write.commit()
    run.join(10)
    assert not stalled, "the repair waited for the long transaction"
    with engine.connect() as conn:
        pending = conn.execute(select(analytics_pending.c.request_id)).scalars().all()
    assert marker in pending  # the repair is still to do
    r.refresh()
    assert stored(engine) == brute_force(events)


def test_a_repair_that_gave_way_waits_for_a_later_run(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a repair has given way, the batches after it in the same run (and the runs
    soon after) do not take it again: each try holds writers for the lock's timeout."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's roll-up holds its only writer's lock for the whole run")
    monkeypatch.setattr(rollup, "WRITERS_LOCK_TIMEOUT_MS", 200)
    # Far longer than a run takes on a loaded machine (at 1 s, a slow CI run's later
    # batches found the pause over and tried again); "later" moves the roll-ups' clock on.
    monkeypatch.setattr(rollup, "REPAIR_RETRY_S", 30.0)
    later = [0.0]
    events, _ = rolled_up(engine, 71, 60, 0)
    write(engine, events)  # a backlog of several batches, behind a repair
    insert_ignoring_duplicates(
        engine, [(analytics_pending, {"request_id": f"{rollup.RECOMPUTE}{T0}", "bucket_ms": T0})]
    )
    r = new_rollups(engine, batch_size=10, clock=lambda: time.monotonic() + later[0])
    tries: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("LOCK TABLE usage_events"):
            tries.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with engine.connect() as long_write:
            long_write.begin()
            long_write.execute(usage_events.insert(), [make_event(random.Random(1), 999)])
            run = threading.Thread(target=r.refresh)
            run.start()
            run.join(20)
            alive = run.is_alive()
            long_write.rollback()
        run.join(10)
        assert not alive
        assert len(tries) == 1, f"{len(tries)} tries in one run"
        r.refresh()  # soon after: the repair still waits
        assert len(tries) == 1
        later[0] = rollup.REPAIR_RETRY_S + 1
        r.refresh()  # later: it runs, and its marker is gone
        assert len(tries) == 2
        with engine.connect() as conn:
            left = conn.execute(select(analytics_pending.c.request_id)).scalars().all()
        assert left == []
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert stored(engine) == brute_force(events)


def test_holding_writers_leaves_no_lock_timeout_behind(engine: Engine) -> None:
    """The lock's timeout is the lock's alone: the rest of the transaction runs without."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only")
    with engine.begin() as conn:
        assert rollup._hold_writers(conn, 200)
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "0"


def test_a_rebuild_refuses_rather_than_stall_writers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild that cannot lock out writers in time fails with a clear error and
    changes nothing, rather than hold every writer behind its wait."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer: the rebuild waits for it as for any other")
    monkeypatch.setattr(rollup, "REBUILD_LOCK_TIMEOUT_MS", 200)
    events, r = rolled_up(engine, 61, 40, 30, span_ms=3 * DAY)
    before = stored(engine)
    with engine.connect() as long_write:
        long_write.begin()
        long_write.execute(usage_events.insert(), [events[30]])
        failed: list[BaseException] = []

        def rebuild() -> None:
            try:
                r.rebuild()
            except BaseException as e:
                failed.append(e)

        run = threading.Thread(target=rebuild)  # a thread: the old code waited forever
        run.start()
        run.join(10)
        stalled = run.is_alive()
        long_write.commit()
    run.join(10)
    assert not stalled, "the rebuild waited for the long transaction"
    assert len(failed) == 1 and isinstance(failed[0], rollup.WritersBusy), failed
    assert "long transaction" in str(failed[0])
    assert stored(engine) == before
    write(engine, events[31:])
    r.rebuild()
    assert stored(engine) == brute_force(events)


def test_the_batch_is_grouped_by_hashing(engine: Engine) -> None:
    """PostgreSQL groups a batch's events by hashing them: misled by the batch's id array
    (it plans for ten rows), it sorted them, on disk past a few thousand."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's plans are its own")
    clear(engine)
    rng = random.Random(67)
    events = [make_event(rng, i, span_ms=MINUTE) for i in range(200)]
    write(engine, events)
    plans: list[str] = []

    def explain(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.startswith("INSERT INTO _rollup_delta"):
            cursor.execute("EXPLAIN " + statement, params)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))

    event.listen(engine, "before_cursor_execute", explain)
    try:
        new_rollups(engine).refresh()
    finally:
        event.remove(engine, "before_cursor_execute", explain)
    assert plans, "no batch was summed"
    assert all("HashAggregate" in p and "Sort" not in p for p in plans), plans
    assert stored(engine) == brute_force(events)


def test_histogram_quantiles() -> None:
    counts = [0] * len(LATENCY_COLS)
    for v in range(1, 1001):
        counts[bucket_of(v)] += 1
    p50 = quantile(counts, 0.5)
    p99 = quantile(counts, 0.99)
    assert p50 is not None and 450 <= p50 <= 550
    assert p99 is not None and 900 <= p99 <= 1000
    assert quantile([0] * len(counts), 0.5) is None
    # Merging hours' histograms gives the day's: the bounds never move.
    assert rollup.PERIOD_MS["d"] == 24 * rollup.PERIOD_MS["h"]


def _minutes_from(engine: Engine) -> int:
    with engine.connect() as conn:
        v = conn.execute(select(analytics_state.c.value)).scalar()
    return int(v) if v is not None else 0


def test_expired_minutes_are_pruned_and_late_events_still_count(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear(engine)
    rng = random.Random(19)
    events = [make_event(rng, i, span_ms=5 * DAY) for i in range(600)]
    write(engine, events[:450])
    r = Rollups(engine, countries=COUNTRIES, regions=REGIONS, minute_retention_ms=2 * DAY)
    r.refresh()
    transactions = 0
    serialise = Rollups._serialise

    def counting(self: Rollups, conn: Any, **kw: Any) -> bool:
        nonlocal transactions
        transactions += 1
        return serialise(self, conn, **kw)

    monkeypatch.setattr(Rollups, "_serialise", counting)
    now = T0 + 4 * DAY + 7 * HOUR  # keeps minutes from the start of day 2
    assert r.prune_expired(now) > 0
    assert transactions >= 3  # days 0 and 1 pruned a day per transaction, then the check
    assert _minutes_from(engine) == T0 + 2 * DAY
    assert rollup.minutes_kept_from(engine) == T0 + 2 * DAY
    assert_exact_after_pruning(engine, events[:450], T0 + 2 * DAY)
    transactions = 0
    assert r.prune_expired(now + HOUR) == 0 and transactions == 0  # same day: no query
    assert new_rollups(engine).prune_expired(now) == 0  # another replica finds it done
    # Late events (many in pruned minutes) and a replay: hours and days stay exact.
    write(engine, events[450:] + events[:100])
    r.refresh()
    assert_exact_after_pruning(engine, events, T0 + 2 * DAY)
    # A day later the next day's minutes go too; nothing else changes.
    assert r.prune_expired(now + DAY) > 0
    assert _minutes_from(engine) == T0 + 3 * DAY
    assert_exact_after_pruning(engine, events, T0 + 3 * DAY)


def test_the_worker_prunes_minutes_on_its_schedule(engine: Engine) -> None:
    clear(engine)
    rng = random.Random(23)
    now = int(time.time() * 1000)
    events = [make_event(rng, i, span_ms=5 * DAY) for i in range(300)]
    for e in events:  # the last five days up to now
        e["ts_ms"] += now - 5 * DAY - T0
    write(engine, events)
    r = Rollups(engine, countries=COUNTRIES, regions=REGIONS, minute_retention_ms=2 * DAY)

    async def run_worker() -> None:
        worker = RollupWorker(r, interval_s=0.01)
        worker.start()
        try:
            for _ in range(1000):
                await asyncio.sleep(0.01)
                with engine.connect() as conn:
                    pending = conn.execute(select(analytics_pending)).first()
                if pending is None and _minutes_from(engine) > 0:
                    break
        finally:
            await worker.stop()

    asyncio.run(run_worker())
    horizon = _minutes_from(engine)
    assert horizon in {(t - 2 * DAY) // DAY * DAY for t in (now, int(time.time() * 1000))}
    assert_exact_after_pruning(engine, events, horizon)
    assert min(e["ts_ms"] for e in events) < horizon  # something was in fact pruned


def test_runs_are_spaced_out_while_many_cells_are_active(engine: Engine) -> None:
    from tokenomy.analytics.rollup import CELLS_PER_RUN, MAX_INTERVAL_S

    clear(engine)
    rng = random.Random(5)
    events = [make_event(rng, i) for i in range(400)]
    write(engine, events)
    r = new_rollups(engine)
    r.refresh()
    minutes = len(stored(engine, "m"))
    assert minutes > 0 and r.cells == minutes  # a run counts the minute cells it wrote
    assert_exact_after_pruning(engine, events, 0)

    w = RollupWorker(r, interval_s=2.0)
    assert w.next_wait(0) == w.next_wait(CELLS_PER_RUN) == 2.0  # one tenant: 2 s fresh
    assert w.next_wait(3 * CELLS_PER_RUN) == 6.0  # writes follow events, not runs
    assert w.next_wait(10**6) == MAX_INTERVAL_S


def _pages(engine: Engine) -> dict[tuple[Any, ...], int]:
    """The page each stored cell's current version is on (PostgreSQL's ctid)."""
    cell = ", ".join(("period", "bucket_ms", *DIMENSIONS))
    q = f"SELECT {cell}, (ctid::text::point)[0]::int FROM usage_rollups"
    with engine.connect() as conn:
        return {tuple(row[:-1]): row[-1] for row in conn.execute(text(q))}


def test_rollup_cells_are_updated_in_place_on_postgresql(engine: Engine) -> None:
    # Every run adds onto the same hour, day, key-day and org-day cells. Pages filled to
    # the brim (PostgreSQL's default) send each new version of a cell to another page,
    # with a new entry in each of the table's three indexes; with room left (fillfactor,
    # migration 0018) most stay beside the old one, an update that touches no index
    # (HOT): a third less of the roll-up's database time with 1,000 keys active.
    if engine.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL storage setting")
    clear(engine)
    rng = random.Random(11)
    r = new_rollups(engine)
    events = [make_event(rng, i, span_ms=MINUTE) for i in range(400)]
    write(engine, events)
    r.refresh()
    before = _pages(engine)
    again = [{**e, "request_id": e["request_id"] + "-again"} for e in events]
    write(engine, again)
    r.refresh()
    after = _pages(engine)
    stayed = sum(after[c] == p for c, p in before.items())
    assert len(before) > 500 and stayed >= len(before) // 4, (stayed, len(before))


def test_with_a_synchronous_writer_sqlite_roll_ups_take_smaller_batches(engine: Engine) -> None:
    # SQLite's one writer is held for a whole roll-up batch; a synchronous usage writer
    # makes requests wait through it, so batches are then smaller. PostgreSQL's roll-ups
    # do not hold writers (repairs aside), whatever the writer's mode.
    registry = Registry({}, {})
    sync = Rollups.for_registry(engine, registry, writer_synchronous=True)
    grouped = Rollups.for_registry(engine, registry, writer_synchronous=False)
    assert grouped.batch_size == rollup.BATCH_SIZE
    if engine.dialect.name == "sqlite":
        assert sync.batch_size == rollup.SYNC_WRITER_BATCH_SIZE < rollup.BATCH_SIZE
    else:
        assert sync.batch_size == rollup.BATCH_SIZE


@pytest.mark.parametrize("flush_ms", [0, 50])
def test_the_gateways_roll_ups_follow_its_writer_mode(tmp_path: Path, flush_ms: int) -> None:
    cfg = make_config("http://127.0.0.1:9", tmp_path)
    cfg = cfg.model_copy(
        update={"writer": cfg.writer.model_copy(update={"flush_interval_ms": flush_ms})}
    )
    svc = build_services(cfg, env={})
    app = app_for(svc)
    want = rollup.SYNC_WRITER_BATCH_SIZE if flush_ms == 0 else rollup.BATCH_SIZE
    assert app[usage_routes.ROLLUPS].batch_size == want
    svc.engine.dispose()


@pytest.mark.parametrize("flush_ms", [0, 50])
def test_the_usage_command_rolls_up_as_the_gateway_would(
    tmp_path: Path, flush_ms: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `tokenomy usage` rolls up first, on the gateway's database: SQLite's one writer is
    # the gateway's too, so it follows the gateway's writer mode.
    text_ = gateway_yaml("http://127.0.0.1:9", f"sqlite:///{tmp_path / 'g.db'}")
    text_ = text_.replace("flush_interval_ms: 20", f"flush_interval_ms: {flush_ms}")
    (tmp_path / "g.yaml").write_text(text_)
    sizes: list[int] = []
    real = Rollups.refresh

    def spy(self: Rollups, *a: Any, **kw: Any) -> int:
        sizes.append(self.batch_size)
        return real(self, *a, **kw)

    monkeypatch.setattr(Rollups, "refresh", spy)
    assert cli_main(["usage", "--config", str(tmp_path / "g.yaml")]) == 0
    assert sizes == [rollup.SYNC_WRITER_BATCH_SIZE if flush_ms == 0 else rollup.BATCH_SIZE]
