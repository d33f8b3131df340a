"""The rebuild's snapshot of the database is one snapshot: a commit landing between its
reads changes none of them (real SQLite in WAL mode, as a gateway runs it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, insert

from tokenomy.ledger.snapshot import org_totals, read_live_totals
from tokenomy.ledger.store import LedgerStore
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.schema import ledger_postings, ledger_txns, usage_events


def usage(request_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "ts_ms": int(time.time() * 1000),
        "endpoint": "chat",
        "dialect": "openai",
        "model": "m",
        "stream": False,
        "status": "ok",
        "http_status": 200,
        "usage_source": "vendor",
        "latency_ms": 1,
        "org_id": "org_a",
        "cost_nanos": 700,
    }


def test_a_commit_between_the_reads_of_a_sqlite_snapshot_is_not_seen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine, other = open_engine(url), open_engine(url)
    migrate(engine)
    landed: list[str] = []

    def commit_elsewhere(_conn: Any, _cur: Any, statement: str, *_: Any) -> None:
        # The writer commits a request right after the snapshot's first read.
        if not landed and statement.lstrip().upper().startswith("SELECT"):
            landed.append("req_late")
            with other.begin() as conn:
                conn.execute(insert(usage_events), [usage("req_late")])

    event.listen(engine, "after_cursor_execute", commit_elsewhere)
    totals = read_live_totals(engine, ["org_a"], [], ["req_late"])
    assert landed  # the commit did land between the reads
    # The totals were read before it: so must be the recorded requests.
    assert totals.orgs == {"org_a": (0, 0)}
    assert totals.recorded == frozenset()
    engine.dispose()
    other.dispose()


def test_every_orgs_totals_read_at_once_equal_each_orgs_own(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    migrate(engine)
    store = LedgerStore(engine)
    orgs = [store.create_org(f"org {i}") for i in range(4)]
    for i, org in enumerate(orgs[:3]):
        store.post("topup", org.id, 10_000 * (i + 1))
    store.post("credit", orgs[0].id, 500)
    store.post("adjustment", orgs[1].id, -300)
    with engine.begin() as conn:
        for i, org in enumerate(orgs[:2]):
            txn = f"usage:req_{i}"
            conn.execute(
                insert(ledger_txns),
                [{"id": txn, "ts_ms": 1, "kind": "usage", "org_id": org.id, "request_id": txn}],
            )
            legs = [(org.account, -700 * (i + 1)), ("revenue:sim:USD", 700 * (i + 1))]
            conn.execute(
                insert(ledger_postings),
                [
                    {"txn_id": txn, "account": a, "amount_nanos": n, "currency": "USD"}
                    for a, n in legs
                ],
            )
    ids = [o.id for o in orgs]
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    totals = read_live_totals(engine, ids, [], [])
    # One query for every org's totals, not one per org.
    assert sum("ledger_postings" in q for q in statements) == 1
    with engine.connect() as conn:
        one_by_one = {o: org_totals(conn, o) for o in ids}
    assert totals.orgs == one_by_one
    assert one_by_one[orgs[0].id] == (10_500, 700)
    assert one_by_one[orgs[1].id] == (19_700, 1_400)
    assert one_by_one[orgs[3].id] == (0, 0)
    engine.dispose()
