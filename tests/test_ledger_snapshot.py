"""The rebuild's snapshot of the database is one snapshot: a commit landing between its
reads changes none of them (real SQLite in WAL mode, as a gateway runs it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, insert

from tokenomy.ledger.snapshot import read_live_totals
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.schema import usage_events


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
