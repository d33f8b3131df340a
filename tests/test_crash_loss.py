"""What SIGKILL loses, measured on PostgreSQL, and the bound the README states.

A gateway commits its usage records in groups ``writer.flush_interval_ms`` apart, so a
process killed outright loses at most the records it completed in the last interval
(plus the commit in progress); SIGTERM drains them. With ``flush_interval_ms: 0`` (the
synchronous mode) no answer leaves before its record is committed, and a kill loses
nothing the client saw complete. ``test_ledger_processes`` measures the same on SQLite;
the figures go to ``test-artifacts/crash-loss-postgres.json``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import throwaway_postgres
from tests.procs import Procs, gateway_yaml, running
from tests.test_ledger_processes import (
    ARTIFACTS,
    RICH_NANOS,
    burst,
    check_billed_once,
    load_then_kill,
    seed,
)
from tokenomy.store.db import open_engine

#: Room beyond the flush interval for the commit itself and a loaded machine's
#: scheduling: a writer that is jammed or far behind loses seconds of records, not this.
COMMIT_SLACK_MS = 1000


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with running(tmp_path) as p:
        yield p


@pytest.fixture(scope="module")
def report() -> Iterator[dict[str, Any]]:
    out: dict[str, Any] = {}
    yield out
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "crash-loss-postgres.json").write_text(json.dumps(out, indent=2) + "\n")


@pytest.mark.parametrize("flush_ms", [50, 0], ids=["group-commit-50ms", "synchronous"])
def test_sigkill_on_postgres_loses_at_most_the_last_flush_interval(
    flush_ms: int, procs: Procs, report: dict[str, Any]
) -> None:
    with throwaway_postgres() as db_url:
        sim = procs.sim()
        acct = seed(db_url, {"crash": RICH_NANOS})["crash"]
        config = procs.write_config(gateway_yaml(sim.url, db_url, flush_interval_ms=flush_ms))
        gw = procs.gateway(config)
        load = asyncio.run(load_then_kill(gw, acct.key, kill_after=300))
        assert not gw.alive and len(load.seen) >= 300
        # A restart on the same database comes up and keeps billing.
        gw2 = procs.gateway(config, name="gateway-restart")
        after = asyncio.run(burst([gw2.url], acct.key, "sim-small", 5))
        assert all(o.status == 200 for o in after)
        assert gw2.terminate() == 0, gw2.log_tail()
        engine = open_engine(db_url)
        try:
            recorded = check_billed_once(engine, acct)  # once each, ledger and events match
        finally:
            engine.dispose()

    lost = [s for s in load.seen if s.request_id not in recorded]
    # How long before the kill the earliest lost answer reached the client (client clock).
    window_ms = max((load.killed_at - min(s.done for s in lost)) * 1000, 0.0) if lost else 0.0
    result = {
        "flush_interval_ms": flush_ms,
        "completed_to_client": len(load.seen),
        "lost": len(lost),
        "loss_window_ms": round(window_ms, 1),
        "requests_per_s": round(
            len(load.seen) / (load.killed_at - min(s.sent for s in load.seen)), 1
        ),
    }
    report["synchronous" if flush_ms == 0 else f"flush_{flush_ms}ms"] = result
    print(f"\n[crash, PostgreSQL, flush_interval_ms={flush_ms}] {json.dumps(result)}")
    if flush_ms == 0:
        assert lost == [], f"synchronous mode lost {len(lost)} completed requests"
    else:
        assert window_ms <= flush_ms + COMMIT_SLACK_MS, result
