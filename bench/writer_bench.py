"""Usage-writer benchmark: the database CPU a billed request costs, by number of tenants.

Not a test. Writes what the gateway's usage writer writes for a billed request (a usage
event, its ledger transaction and two postings) through the writer's own ``Sink``, in
flushes of ``--flush`` requests, each request from a tenant drawn from ``--orgs``, with
request ids in arrival order as the gateway makes them; a roll-up run every
``--rollup-every`` requests, as the roll-up worker does under load. Reports CPU µs per
request:

- SQLite: the writing thread's CPU (the database runs in it) and the roll-ups'.
- PostgreSQL: the writer connection's backend, and every backend on the database (the
  roll-ups' included), read from /proc beside ``pg_stat_activity``; the client side; and
  the bytes of write-ahead log a request makes (the work itself, unlike CPU steady on a
  busy machine; other databases' writes meanwhile count too).

    python bench/writer_bench.py [--db sqlite|postgres|both] [--orgs 1,1000]
        [--requests 200000] [--flush 325] [--rollup-every 1950]

PostgreSQL runs in a throwaway database on 127.0.0.1:5432 (user postgres), SQLite in a
temporary file. A first tenth of the requests is written before measuring, so indexes
are past their first pages.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, text

from tokenomy.analytics.rollup import Rollups
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.schema import ledger_postings, ledger_txns, usage_events
from tokenomy.store.writer import Sink

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
_TICK = os.sysconf("SC_CLK_TCK")


@contextmanager
def database(kind: str) -> Iterator[Engine]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as d:
            engine = open_engine(f"sqlite:///{Path(d) / 'writer.db'}")
            migrate(engine)
            yield engine
            engine.dispose()
        return
    name = f"writer_bench_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        engine = open_engine(f"postgresql://postgres@127.0.0.1:5432/{name}")
        migrate(engine)
        yield engine
        engine.dispose()
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Requests:
    """The writer's rows for billed requests, tenants drawn at random."""

    def __init__(self, orgs: int, seed: int = 1) -> None:
        self.orgs, self.rng, self.n = orgs, random.Random(seed), 0
        self.run = secrets.token_hex(4)
        self.ts = int(time.time() * 1000)

    def flush(self, size: int) -> list[tuple[Table, dict[str, Any]]]:
        items: list[tuple[Table, dict[str, Any]]] = []
        for _ in range(size):
            self.n += 1
            self.ts += 1
            o = self.rng.randrange(self.orgs)
            rid = f"req_{self.run}{self.n:012d}"
            org, txn = f"org_{o:05d}", f"usage:{rid}"
            items.append((usage_events, _event(rid, self.ts, f"key_{o:05d}", org)))
            items.append(
                (
                    ledger_txns,
                    {"id": txn, "ts_ms": self.ts, "kind": "usage", "org_id": org,
                     "request_id": rid, "memo": None},
                )
            )  # fmt: skip
            for account, amount in ((f"org:{org}", -12_345), ("revenue:sim:USD", 12_345)):
                items.append(
                    (
                        ledger_postings,
                        {"txn_id": txn, "account": account, "amount_nanos": amount,
                         "currency": "USD"},
                    )
                )  # fmt: skip
        return items


def _event(rid: str, ts: int, key: str, org: str) -> dict[str, Any]:
    return {
        "request_id": rid, "ts_ms": ts, "key_id": key, "org_id": org, "project_id": None,
        "endpoint": "chat", "dialect": "openai", "model": "gpt-5.4-mini",
        "deployment": "openai/gpt-5.4-mini", "vendor": "openai", "stream": False,
        "status": "ok", "http_status": 200, "input_tokens": 20, "output_tokens": 12,
        "usage_source": "upstream", "latency_ms": 40, "ttft_ms": None, "cost_nanos": 12_345,
        "currency": "USD", "list_cost_nanos": 12_345, "list_currency": "USD",
        "price_version": "bench", "held_nanos": 20_000,
    }  # fmt: skip


def _backend_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone meanwhile
    return (int(fields[11]) + int(fields[12])) / _TICK


def _backends(engine: Engine) -> list[int]:
    with engine.connect() as c:
        q = text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return [int(r[0]) for r in c.execute(q)]


def _wal_lsn(engine: Engine) -> str | None:
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as c:
        return str(c.execute(text("SELECT pg_current_wal_lsn()")).scalar_one())


def run(kind: str, orgs: int, requests: int, flush: int, rollup_every: int) -> dict[str, float]:
    with database(kind) as engine:
        sink, rollups, gen = Sink(engine), Rollups(engine), Requests(orgs)
        for _ in range(max(1, requests // 10 // flush)):
            sink.write(gen.flush(flush))
        rollups.refresh()
        writer_pid = 0
        if kind == "postgresql":
            assert sink._raw is not None  # kept from the warm-up's last write
            cur = sink._raw.cursor()
            cur.execute("SELECT pg_backend_pid()")
            writer_pid = int(cur.fetchone()[0])
            cur.close()
        all_cpu: Callable[[], float] = lambda: sum(map(_backend_cpu_s, _backends(engine)))  # noqa: E731
        w0, a0 = _backend_cpu_s(writer_pid), all_cpu() if kind == "postgresql" else 0.0
        lsn0 = _wal_lsn(engine)
        write_s = rollup_s = 0.0
        n0, since = gen.n, 0
        while gen.n - n0 < requests:
            t = time.thread_time()
            sink.write(gen.flush(flush))
            write_s += time.thread_time() - t
            since += flush
            if since >= rollup_every:
                t = time.thread_time()
                rollups.refresh()
                rollup_s += time.thread_time() - t
                since = 0
        t = time.thread_time()
        rollups.refresh()
        rollup_s += time.thread_time() - t
        n = gen.n - n0
        out = {"writer_thread": write_s / n * 1e6, "rollup_thread": rollup_s / n * 1e6}
        if kind == "postgresql":
            out["writer_backend"] = (_backend_cpu_s(writer_pid) - w0) / n * 1e6
            out["all_backends"] = (all_cpu() - a0) / n * 1e6
            # Bytes of write-ahead log: the write work itself, steady however busy the
            # machine is (the CPU figures are not).
            with engine.connect() as c:
                q = text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), :lsn)")
                out["wal_bytes"] = float(c.execute(q, {"lsn": lsn0}).scalar_one()) / n
        sink.close()
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    ap.add_argument("--orgs", default="1,1000", help="comma-separated tenant counts")
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--flush", type=int, default=325, help="requests a writer flush holds")
    ap.add_argument("--rollup-every", type=int, default=1950, help="requests between runs")
    args = ap.parse_args()
    kinds = (
        ["sqlite", "postgresql"]
        if args.db == "both"
        else [args.db.replace("postgres", "postgresql")]
    )
    print("CPU µs a request (thread: this process; backend: PostgreSQL's)")
    for kind in kinds:
        for orgs in (int(x) for x in args.orgs.split(",")):
            r = run(kind, orgs, args.requests, args.flush, args.rollup_every)
            figures = ", ".join(f"{k} {v:.1f}" for k, v in r.items())
            print(f"  {kind:10} orgs {orgs:>6}: {figures}", flush=True)


if __name__ == "__main__":
    main()
