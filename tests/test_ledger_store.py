"""The durable ledger: double entry, floors, idempotent entries, bad input refused."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenomy.ledger.store import Kind, LedgerError, LedgerStore
from tokenomy.store.db import migrate, open_engine


@pytest.fixture
def store(tmp_path: Path) -> LedgerStore:
    engine = open_engine(f"sqlite:///{tmp_path / 'l.db'}")
    migrate(engine)
    return LedgerStore(engine)


def test_replayed_entry_is_a_no_op_and_a_reused_id_is_refused(store: LedgerStore) -> None:
    a = store.create_org("A", "USD")
    b = store.create_org("B", "CNY")
    first = store.post(Kind.TOPUP, a.id, 5 * 10**9, txn_id="t1")
    again = store.post(Kind.TOPUP, a.id, 5 * 10**9, txn_id="t1")
    assert again.txn_id == first.txn_id and store.balance(a.id) == 5 * 10**9
    with pytest.raises(LedgerError):
        store.post(Kind.CREDIT, b.id, 7, txn_id="t1")
    with pytest.raises(LedgerError):
        store.post(Kind.TOPUP, a.id, 6, txn_id="t1")
    assert store.balance(b.id) == 0 and store.trial_balance() == {"USD": 0}


@pytest.mark.parametrize(
    ("call", "word"),
    [
        (lambda s, o: s.post(Kind.TOPUP, o, -1), "positive"),
        (lambda s, o: s.post(Kind.TOPUP, o, 1.5), "integer"),
        (lambda s, o: s.post(Kind.TOPUP, o, 10**19), "too large"),
        (lambda s, o: s.post("gift", o, 1), "kind"),
        (lambda s, o: s.create_org("X", "EUR"), "unknown currency"),
        (lambda s, o: s.set_budget("org", "org_nope", "day", amount_nanos=1), "no org"),
        (lambda s, o: s.set_budget("org", o, "day", amount_nanos=1, tz=5), "time zone"),
        (lambda s, o: s.set_budget("org", o, "day", amount_nanos=1, tz="Mars/Base"), "zone"),
        (lambda s, o: s.set_budget("org", o, "fortnight", amount_nanos=1), "fortnight"),
        (lambda s, o: s.post(Kind.ADJUSTMENT, o, -1), "below its floor"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(store: LedgerStore, call, word) -> None:  # type: ignore[no-untyped-def]
    org = store.create_org("A", "USD").id
    with pytest.raises(LedgerError) as e:
        call(store, org)
    assert word in str(e.value)
    assert store.balance(org) == 0 and store.all_budgets() == [] and len(store.all_orgs()) == 1


amounts = st.lists(
    st.tuples(st.sampled_from(Kind.ADMIN), st.integers(-(10**12), 10**12)), max_size=25
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entries=amounts)
def test_debits_equal_credits_and_prepaid_never_below_zero(
    store: LedgerStore, entries: list[tuple[str, int]]
) -> None:
    org = store.create_org("P", "USD")
    expected = 0
    for kind, amount in entries:
        try:
            store.post(kind, org.id, amount)
        except LedgerError:
            continue
        expected += amount
        assert store.balance(org.id) >= 0
    assert store.balance(org.id) == expected
    assert all(v == 0 for v in store.trial_balance().values())


def test_directory_meters_follow_periods_keys_and_refreshes(store: LedgerStore) -> None:
    from tokenomy.ledger.account_cache import AccountCache
    from tokenomy.store.keys import KeyStore

    org = store.create_org("A", "USD")
    _, key = KeyStore(store.engine).create("k", org_id=org.id)
    daily = store.set_budget("key", key.id, "day", amount_nanos=10**9, tz="UTC")
    lifetime = store.set_budget("org", org.id, "lifetime", token_limit=10**6)
    d = AccountCache(store)
    d.refresh()
    day_ms = 86_400_000
    noon = 1_790_000_000_000 // day_ms * day_ms + day_ms // 2

    first = d.meters(key, noon)
    assert [(m.budget.id, m.start_ms, m.end_ms) for m in first] == [
        (daily.id, noon - day_ms // 2, noon + day_ms // 2),
        (lifetime.id, 0, None),
    ]
    assert first[0].key == f"bud:{daily.id}:{noon - day_ms // 2}"
    assert d.meters(key, noon + 1000) is first  # same day: the same meters
    tomorrow = d.meters(key, noon + day_ms)
    assert tomorrow[0].start_ms == noon + day_ms // 2  # the next day's bucket
    assert d.meters(key, noon) == first  # an earlier instant is worked out again

    store.delete_budget(daily.id)
    assert d.meters(key, noon) == first  # not refreshed yet
    d.refresh()
    assert [m.budget.id for m in d.meters(key, noon)] == [lifetime.id]

    moved = replace(key, org_id=None)  # the key cache gives a new record when a key changes
    assert d.meters(moved, noon) == ()


def test_admin_totals_read_only_admin_transactions(store: LedgerStore) -> None:
    # Every second each gateway re-reads these totals: usage transactions (one per billed
    # request) must not be scanned, nor counted.
    from sqlalchemy import event

    from tokenomy.store.schema import ADMIN_KINDS_SQL, ledger_postings, ledger_txns
    from tokenomy.store.writer import insert_ignoring_duplicates

    assert "kind IN (" + ", ".join(f"'{k}'" for k in Kind.ADMIN) + ")" == ADMIN_KINDS_SQL
    a = store.create_org("A", "USD")
    b = store.create_org("B", "USD")
    store.post(Kind.TOPUP, a.id, 10 * 10**9)
    store.post(Kind.CREDIT, a.id, 2 * 10**9)
    store.post(Kind.ADJUSTMENT, a.id, -(10**9))
    store.post(Kind.TOPUP, b.id, 3 * 10**9)
    rows = []
    for i in range(500):
        tid = f"usage:req_{i}"
        rows.append(
            (
                ledger_txns,
                {"id": tid, "ts_ms": i, "kind": "usage", "org_id": a.id, "request_id": f"r{i}"},
            )
        )
        rows.append(
            (
                ledger_postings,
                {"txn_id": tid, "account": a.account, "amount_nanos": -7, "currency": "USD"},
            )
        )
        rows.append(
            (
                ledger_postings,
                {"txn_id": tid, "account": "revenue:x:USD", "amount_nanos": 7, "currency": "USD"},
            )
        )
    insert_ignoring_duplicates(store.engine, rows)
    seen: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        seen.append((statement, params))

    event.listen(store.engine, "before_cursor_execute", capture)
    assert store.admin_totals() == {a.id: 11 * 10**9, b.id: 3 * 10**9}
    event.remove(store.engine, "before_cursor_execute", capture)
    assert store.balance(a.id) == 11 * 10**9 - 500 * 7
    # The query the store really runs reads the partial index, not every transaction.
    (statement, params), *_ = seen
    with store.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()  # type: ignore[arg-type]
    assert "ix_ledger_txns_admin" in " ".join(str(r[-1]) for r in plan), plan


def test_admin_totals_on_postgresql_never_scan_the_usage_postings() -> None:
    """With usage postings piling up faster than statistics are refreshed (as under load),
    PostgreSQL must still start from the admin transactions' index: joined on
    ``account LIKE 'org:%'`` it scanned every posting, 240 ms a call at 330,000."""
    from sqlalchemy import event

    from tests.conftest import throwaway_postgres
    from tokenomy.store.schema import ledger_postings, ledger_txns
    from tokenomy.store.writer import insert_ignoring_duplicates

    with throwaway_postgres() as url:
        engine = open_engine(url)
        try:
            migrate(engine)
            store = LedgerStore(engine)
            with engine.begin() as conn:  # statistics from before anything was written
                conn.exec_driver_sql("ANALYZE")
            a = store.create_org("A", "USD")
            store.post(Kind.TOPUP, a.id, 10 * 10**9)
            rows: list[tuple[object, dict[str, object]]] = []
            for i in range(30_000):
                tid = f"usage:req_{i}"
                rows.append((ledger_txns, {"id": tid, "ts_ms": i, "kind": "usage",
                                           "org_id": a.id, "request_id": f"r{i}"}))  # fmt: skip
                rows.append((ledger_postings, {"txn_id": tid, "account": a.account,
                                               "amount_nanos": -7, "currency": "USD"}))  # fmt: skip
                rows.append((ledger_postings, {"txn_id": tid, "account": "revenue:x:USD",
                                               "amount_nanos": 7, "currency": "USD"}))  # fmt: skip
            insert_ignoring_duplicates(engine, rows)  # type: ignore[arg-type]
            seen: list[tuple[str, object]] = []

            def capture(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
                seen.append((statement, params))

            event.listen(engine, "before_cursor_execute", capture)
            assert store.admin_totals() == {a.id: 10 * 10**9}
            event.remove(engine, "before_cursor_execute", capture)
            (statement, params), *_ = seen
            with engine.connect() as conn:
                plan = " ".join(
                    r[0]
                    for r in conn.exec_driver_sql("EXPLAIN " + statement, params)  # type: ignore[arg-type]
                )
            assert "ix_ledger_txns_admin" in plan and "Seq Scan on ledger_postings" not in plan, (
                plan
            )
        finally:
            engine.dispose()


def test_a_directory_refresh_reads_what_changed_not_every_tenant(store: LedgerStore) -> None:
    from sqlalchemy import update

    from tokenomy.ledger.account_cache import AccountCache
    from tokenomy.ledger.accounts import Scope
    from tokenomy.ledger.store import Changes
    from tokenomy.store.schema import budgets, orgs

    many = [store.create_org(f"org {i}", "USD") for i in range(300)]
    kept = store.set_budget("org", many[0].id, "day", amount_nanos=10**9)
    dropped = store.set_budget("org", many[1].id, "month", token_limit=500)
    with store.engine.begin() as conn:  # all of it made an hour ago
        for t in (orgs, budgets):
            conn.execute(update(t).values(updated_ms=t.c.updated_ms - 3_600_000))
    read: list[int] = []  # rows each incremental refresh read
    changed_since = store.changed_since

    def spy(ms: int) -> Changes:
        out = changed_since(ms)
        read.append(len(out))
        return out

    store.changed_since = spy  # type: ignore[method-assign]
    d = AccountCache(store)
    assert d.refresh() == 300 + 2  # the first refresh loads everything
    before = (d.orgs, d.projects, d.budgets)
    assert d.budgets[(Scope.ORG, many[1].id)] == (dropped,)

    assert d.refresh() == 0 and read == [0]  # nothing changed: nothing read or rebuilt
    assert all(a is b for a, b in zip((d.orgs, d.projects, d.budgets), before, strict=True))

    new = store.create_org("late", "CNY")
    store.delete_budget(dropped.id)
    added = store.set_budget("org", many[2].id, "week", amount_nanos=5)
    assert d.refresh() == 3 and read[-1] == 3  # one org, a budget deleted, one added
    assert d.orgs[new.id] == new and len(d.orgs) == 301
    assert d.orgs[many[5].id] is before[0][many[5].id]  # unchanged orgs: the same objects
    assert (Scope.ORG, many[1].id) not in d.budgets
    assert d.budgets[(Scope.ORG, many[2].id)] == (added,)
    assert d.budgets[(Scope.ORG, many[0].id)] == (kept,)
    # Read again within the look-back (a late commit would be caught), applied no more.
    assert d.refresh() == 0 and read[-1] == 3
    full = AccountCache(store)  # the same tree as a full load
    full.refresh()
    assert (full.orgs, full.projects, full.budgets) == (d.orgs, d.projects, d.budgets)


def test_changed_since_reads_only_rows_past_the_instant(store: LedgerStore) -> None:
    old = [store.create_org(f"org {i}", "USD") for i in range(50)]
    cut = int(time.time() * 1000) + 2
    while int(time.time() * 1000) < cut:
        time.sleep(0.001)
    late = store.create_org("late", "USD")
    b = store.set_budget("org", old[0].id, "day", amount_nanos=1)
    ch = store.changed_since(cut)
    assert [o.id for o in ch.orgs] == [late.id]
    assert ch.budgets == [b] and not ch.projects and not ch.deleted_budgets
    assert len(ch) == 2 and ch.newest_ms >= cut


def test_a_key_cache_refresh_reads_keys_changed_lately_not_the_last_burst(
    store: LedgerStore,
) -> None:
    from sqlalchemy import update

    from tokenomy.store.keys import KeyCache, KeyStore
    from tokenomy.store.schema import api_keys

    keys = KeyStore(store.engine)
    made = [keys.create(f"k{i}") for i in range(200)]
    with store.engine.begin() as conn:  # a burst of keys an hour ago
        conn.execute(update(api_keys).values(updated_ms=api_keys.c.updated_ms - 3_600_000))
    cache = KeyCache(keys)
    assert cache.refresh() == 200
    assert cache.refresh() == 0  # not the burst again: nothing changed since
    secret, rec = keys.create("late")
    keys.revoke(made[0][1].id)
    assert cache.refresh() == 2
    assert cache.lookup(secret) == rec and cache.lookup(made[0][0]) is None
    assert cache.lookup(made[1][0]) == made[1][1]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_usage_transaction_enters_no_index_ordered_by_org(kind: str, tmp_path: Path) -> None:
    """One usage transaction is written per billed request, for whichever org made it.
    An index ordered by org takes each one in a different place (with 1,000 tenants, a
    page of its own each flush), so the transactions table keeps none that a usage row
    enters: the org's entries are found through its account's postings, and its admin
    transactions through partial indexes. The queries that read them still use an index."""
    from sqlalchemy import inspect

    from tests.conftest import migrated_engine, query_plan

    with migrated_engine(kind, tmp_path) as engine:
        indexes = inspect(engine).get_indexes("ledger_txns")
        with engine.connect() as conn:
            if kind == "sqlite":
                partial = {
                    r[1] for r in conn.exec_driver_sql("PRAGMA index_list(ledger_txns)") if r[4]
                }
            else:
                partial = set(
                    conn.exec_driver_sql(
                        "SELECT indexrelid::regclass::text FROM pg_index "
                        "WHERE indrelid = 'ledger_txns'::regclass AND indpred IS NOT NULL"
                    ).scalars()
                )
        entered = [i["name"] for i in indexes if i["name"] not in partial]
        assert entered == [], entered
        store = LedgerStore(engine)
        org = store.create_org("A", "USD")
        statement = (
            "SELECT t.id FROM ledger_txns t JOIN ledger_postings p ON p.txn_id = t.id "
            f"WHERE p.account = '{org.account}' ORDER BY t.ts_ms"
        )
        assert "ix_ledger_postings_account" in query_plan(engine, statement)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_project_budget_reads_its_org_index(kind: str, tmp_path: Path) -> None:
    """Usage events keep no index by project: a project budget's spend was read through
    the time index, every tenant's events of the period (on the request path, the first
    time a bucket is loaded). It now goes through its org's index, and still counts only
    the project's events."""
    from tests.conftest import migrated_engine, query_plan
    from tokenomy.ledger import snapshot
    from tokenomy.store.schema import usage_events
    from tokenomy.store.writer import insert_ignoring_duplicates

    with migrated_engine(kind, tmp_path) as engine:
        store = LedgerStore(engine)
        org, other = store.create_org("A", "USD"), store.create_org("B", "USD")
        prj, prj2 = store.create_project(org.id, "p"), store.create_project(org.id, "q")
        now = int(time.time() * 1000)
        rows = []
        for i, (org_id, project, cost) in enumerate(
            [(org.id, prj.id, 5), (org.id, prj.id, 7), (org.id, prj2.id, 11),
             (org.id, None, 13), (other.id, None, 17)]
        ):  # fmt: skip
            rows.append((usage_events, {
                "request_id": f"r{i}", "ts_ms": now, "key_id": "k", "org_id": org_id,
                "project_id": project, "endpoint": "chat", "dialect": "openai", "model": "m",
                "stream": False, "status": "ok", "http_status": 200, "usage_source": "upstream",
                "latency_ms": 1, "cost_nanos": cost, "input_tokens": cost,
            }))  # fmt: skip
        insert_ignoring_duplicates(engine, rows)
        meter = store.set_budget("project", prj.id, "month", amount_nanos=10**9).meter(now)
        with engine.connect() as conn:
            assert snapshot.budget_spent(conn, meter) == (12, 12)
            q = snapshot.spent_query(conn, meter)
        sql = str(q.compile(engine, compile_kwargs={"literal_binds": True}))
        assert "ix_usage_events_org_ts" in query_plan(engine, sql), sql
