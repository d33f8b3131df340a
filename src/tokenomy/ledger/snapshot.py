"""What live balances are rebuilt from when Redis has lost them: every org's totals, every
budget's current bucket and which of some requests the database has, in one snapshot.

One snapshot, so that a request is either in the totals read or reported as missing,
never both or neither: the rebuild adds exactly the usage the database did not have yet.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Select, and_, func, select

from tokenomy.ledger.accounts import BudgetMeter, Scope
from tokenomy.store.schema import ADMIN_KINDS, ledger_postings, ledger_txns, projects, usage_events

#: Request ids asked about in one statement.
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class LiveTotals:
    #: org id -> (admin, used) nanos.
    orgs: dict[str, tuple[int, int]]
    #: budget meter key -> (nanos, tokens, when the bucket may be dropped, ms or None).
    budgets: dict[str, tuple[int, int, int | None]]
    #: The request ids asked about whose usage the database has.
    recorded: frozenset[str]


def org_totals_query(org_id: str) -> Select[Any]:
    """The sums of an org's postings by transaction kind."""
    return (
        select(ledger_txns.c.kind, func.sum(ledger_postings.c.amount_nanos))
        .join(ledger_txns, ledger_txns.c.id == ledger_postings.c.txn_id)
        .where(ledger_postings.c.account == f"org:{org_id}")
        .group_by(ledger_txns.c.kind)
    )


def org_totals(conn: Connection, org_id: str) -> tuple[int, int]:
    """(admin, used): the sums of the org's non-usage and (negated) usage postings."""
    admin = used = 0
    for kind, total in conn.execute(org_totals_query(org_id)):
        if kind in ADMIN_KINDS:
            admin += int(total)
        else:
            used -= int(total)
    return admin, used


def all_org_totals(conn: Connection, org_ids: Collection[str]) -> dict[str, tuple[int, int]]:
    """``org_totals`` of every org in ``org_ids``, one grouped query per _CHUNK orgs."""
    totals = dict.fromkeys(org_ids, (0, 0))
    accounts = [f"org:{o}" for o in totals]
    for i in range(0, len(accounts), _CHUNK):
        q = (
            select(
                ledger_postings.c.account,
                ledger_txns.c.kind,
                func.sum(ledger_postings.c.amount_nanos),
            )
            .join(ledger_txns, ledger_txns.c.id == ledger_postings.c.txn_id)
            .where(ledger_postings.c.account.in_(accounts[i : i + _CHUNK]))
            .group_by(ledger_postings.c.account, ledger_txns.c.kind)
        )
        for account, kind, total in conn.execute(q):
            org_id = account[len("org:") :]
            admin, used = totals[org_id]
            if kind in ADMIN_KINDS:
                totals[org_id] = (admin + int(total), used)
            else:
                totals[org_id] = (admin, used - int(total))
    return totals


def budget_spent(conn: Connection, meter: BudgetMeter) -> tuple[int, int]:
    """(nanos, tokens) of usage recorded in the budget's bucket."""
    nanos, tokens = conn.execute(spent_query(conn, meter)).one()
    return int(nanos), int(tokens)


def spent_query(conn: Connection, meter: BudgetMeter) -> Select[Any]:
    """The sums of :func:`budget_spent`, each scope's through an index: a project's
    events through its org's (there is none by project; by time alone it read every
    tenant's events of the period)."""
    b = meter.budget
    e = usage_events.c
    if b.scope is Scope.USER:
        org_id, _, user = b.scope_id.partition(":")
        cond = [e.org_id == org_id, e.end_user == user, e.ts_ms >= meter.start_ms]
    else:
        col = {
            Scope.ORG: e.org_id,
            Scope.PROJECT: e.project_id,
            Scope.KEY: e.key_id,
            Scope.TASK: e.task_id,
        }[b.scope]
        cond = [col == b.scope_id, e.ts_ms >= meter.start_ms]
        if b.scope is Scope.PROJECT:
            q = select(projects.c.org_id).where(projects.c.id == b.scope_id)
            cond.append(e.org_id == conn.execute(q).scalar_one_or_none())
    if meter.end_ms is not None:
        cond.append(usage_events.c.ts_ms < meter.end_ms)
    return select(
        func.coalesce(func.sum(usage_events.c.cost_nanos), 0),
        func.coalesce(func.sum(usage_events.c.input_tokens + usage_events.c.output_tokens), 0),
    ).where(and_(*cond))


#: A budget bucket outlives its period by a week in Redis, for statements and late settles.
BUCKET_GRACE_MS = 7 * 86_400_000


class LiveSnapshot:
    """One read transaction of the database: the totals of some orgs and budget buckets
    read once, and which requests are recorded asked as often as needed, all as of the
    same moment (a rebuild asks again for the entries that arrived meanwhile)."""

    def __init__(
        self, engine: Engine, org_ids: Collection[str], meters: Collection[BudgetMeter]
    ) -> None:
        self._conn = engine.connect()
        try:
            conn = self._conn
            if conn.dialect.name == "postgresql":
                # Several statements, one snapshot (READ COMMITTED takes one per statement).
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            self._conn = conn
            conn.begin()
            if conn.dialect.name == "sqlite":
                # pysqlite begins no transaction for reads: each SELECT would see the
                # latest commit. An explicit BEGIN holds one WAL snapshot from the first
                # read until close().
                conn.exec_driver_sql("BEGIN")
            self.orgs = all_org_totals(conn, org_ids)
            self.budgets: dict[str, tuple[int, int, int | None]] = {}
            for m in meters:
                nanos, tokens = budget_spent(conn, m)
                until = None if m.end_ms is None else m.end_ms + BUCKET_GRACE_MS
                self.budgets[m.key] = (nanos, tokens, until)
        except BaseException:
            self.close()
            raise

    def recorded(self, request_ids: Collection[str]) -> frozenset[str]:
        """Which of ``request_ids`` the database has."""
        ids = list(request_ids)
        found: set[str] = set()
        for i in range(0, len(ids), _CHUNK):
            q = select(usage_events.c.request_id).where(
                usage_events.c.request_id.in_(ids[i : i + _CHUNK])
            )
            found.update(r for (r,) in self._conn.execute(q))
        return frozenset(found)

    def close(self) -> None:
        """End the read transaction (nothing was written: rolled back)."""
        self._conn.close()


def read_live_totals(
    engine: Engine,
    org_ids: Collection[str],
    meters: Collection[BudgetMeter],
    request_ids: Collection[str],
) -> LiveTotals:
    """The totals of ``org_ids`` and ``meters``, and which of ``request_ids`` are
    recorded, all as of one moment of the database."""
    snap = LiveSnapshot(engine, org_ids, meters)
    try:
        return LiveTotals(snap.orgs, snap.budgets, snap.recorded(request_ids))
    finally:
        snap.close()
