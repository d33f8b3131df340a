"""The durable ledger: accounts, budgets and double-entry transactions in the database.

Administrative operations (top-ups, credits, refunds, adjustments, accounts, budgets) are
rare and written at once; usage transactions are written by the batched writer together
with their usage events (see :mod:`tokenomy.ledger.records`). Every transaction's postings
sum to zero, and an org's balance is the sum of the postings on its account.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, insert, literal, select, text, update
from sqlalchemy.exc import IntegrityError

from tokenomy.billing.money import Currency
from tokenomy.ledger import snapshot
from tokenomy.ledger.accounts import (
    MAX_END_USER,
    Budget,
    BudgetMeter,
    Mode,
    Org,
    Project,
    Scope,
)
from tokenomy.ledger.periods import Period, zone
from tokenomy.store.db import LOAD_CHUNK
from tokenomy.store.schema import (
    ADMIN_KINDS,
    ADMIN_KINDS_SQL,
    api_keys,
    budgets,
    ledger_postings,
    ledger_txns,
    orgs,
    projects,
    usage_events,
)

#: The largest amount accepted in one entry: a billion units of a currency, in nanos.
MAX_ENTRY_NANOS = 10**18


class LedgerError(ValueError):
    """A ledger operation that was refused; nothing was changed."""


class NotFoundError(LookupError):
    pass


class IdempotencyConflict(LedgerError):
    """A transaction id already names a different entry (``entry``)."""

    def __init__(self, message: str, entry: Entry) -> None:
        super().__init__(message)
        self.entry = entry


class _Exists(Exception):
    """The transaction id is taken (internal control flow of ``post``)."""


class Kind:
    TOPUP = "topup"
    CREDIT = "credit"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"
    USAGE = "usage"
    #: A cost above its hold written off: made by earlier versions only (an overrun is
    #: now charged to the org in full), kept so their ledgers still read.
    OVERAGE = "overage"

    #: The admin kinds, as the schema defines them (its partial index states them).
    ADMIN = ADMIN_KINDS


#: Where the other side of each kind of entry goes (suffixed with ":<currency>").
COUNTER_ACCOUNT = {
    Kind.TOPUP: "funding",
    Kind.CREDIT: "promotions",
    Kind.REFUND: "refunds",
    Kind.ADJUSTMENT: "adjustments",
}


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One transaction as it appears on a statement, from the org's side."""

    txn_id: str
    ts_ms: int
    kind: str
    amount_nanos: int  # signed: positive adds to the balance
    currency: str
    request_id: str | None
    memo: str | None


class LedgerStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ---- organisations and projects ---------------------------------------------------

    def create_org(
        self,
        name: str,
        currency: Currency | str = Currency.USD,
        *,
        mode: Mode | str = Mode.PREPAID,
        credit_limit_nanos: int = 0,
        org_id: str | None = None,
    ) -> Org:
        name = _name(name, "organisation")
        cur = _currency(currency)
        try:
            m = Mode(mode)
        except ValueError:
            raise LedgerError(f"mode must be prepaid or postpaid, not {mode!r}") from None
        _amount(credit_limit_nanos, "credit limit", allow_zero=True)
        if m is Mode.PREPAID and credit_limit_nanos:
            raise LedgerError("a prepaid organisation has no credit line")
        org = Org(org_id or new_id("org"), name, cur, m, credit_limit_nanos)
        ts = now_ms()
        with self.engine.begin() as conn:
            if conn.execute(select(orgs.c.id).where(orgs.c.id == org.id)).first():
                raise LedgerError(f"organisation {org.id} already exists")
            conn.execute(
                insert(orgs).values(
                    id=org.id,
                    name=org.name,
                    currency=org.currency.value,
                    mode=org.mode.value,
                    credit_limit_nanos=org.credit_limit_nanos,
                    created_ms=ts,
                    updated_ms=ts,
                )
            )
        return org

    def org(self, org_id: str) -> Org:
        with self.engine.connect() as conn:
            row = conn.execute(select(orgs).where(orgs.c.id == org_id)).first()
        if row is None:
            raise NotFoundError(f"no organisation {org_id!r}")
        return _org(row._mapping)

    def find_org(self, id_or_name: str) -> Org:
        """An organisation by its id, else by its name (which must then be unique)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(orgs).where(orgs.c.id == id_or_name)).all()
            if not rows:
                rows = conn.execute(select(orgs).where(orgs.c.name == id_or_name)).all()
        if not rows:
            raise NotFoundError(f"no organisation with the id or name {id_or_name!r}")
        if len(rows) > 1:
            ids = ", ".join(sorted(r._mapping["id"] for r in rows))
            raise LedgerError(
                f"several organisations are named {id_or_name!r} ({ids}); give the id"
            )
        return _org(rows[0]._mapping)

    def all_orgs(self) -> list[Org]:
        with self.engine.connect() as conn:
            q = select(orgs).order_by(orgs.c.id)
            # In chunks, as KeyStore.changed_since reads keys.
            res = conn.execution_options(yield_per=LOAD_CHUNK).execute(q)
            return [_org(m) for m in res.mappings()]

    def create_project(self, org_id: str, name: str) -> Project:
        self.org(org_id)
        p = Project(new_id("proj"), org_id, _name(name, "project"))
        ts = now_ms()
        with self.engine.begin() as conn:
            conn.execute(
                insert(projects).values(
                    id=p.id, org_id=org_id, name=p.name, created_ms=ts, updated_ms=ts
                )
            )
        return p

    def project(self, project_id: str) -> Project:
        with self.engine.connect() as conn:
            row = conn.execute(select(projects).where(projects.c.id == project_id)).first()
        if row is None:
            raise NotFoundError(f"no project {project_id!r}")
        m = row._mapping
        return Project(m["id"], m["org_id"], m["name"])

    def all_projects(self, org_id: str | None = None) -> list[Project]:
        q = select(projects).order_by(projects.c.id)
        if org_id is not None:
            q = q.where(projects.c.org_id == org_id)
        with self.engine.connect() as conn:
            return [
                Project(r._mapping["id"], r._mapping["org_id"], r._mapping["name"])
                for r in conn.execute(q)
            ]

    # ---- budgets ----------------------------------------------------------------------

    def set_budget(
        self,
        scope: Scope | str,
        scope_id: str,
        period: Period | str,
        *,
        amount_nanos: int | None = None,
        token_limit: int | None = None,
        tz: str = "UTC",
    ) -> Budget:
        """Add a budget (money and/or tokens per period) to an org, project, key or end user."""
        try:
            sc, per = Scope(scope), Period(period)
        except ValueError as e:
            raise LedgerError(str(e)) from None
        if sc is Scope.TASK:
            raise LedgerError("a task's budget is set when the task is made (POST /v1/tasks)")
        if amount_nanos is None and token_limit is None:
            raise LedgerError("a budget needs an amount, a token limit, or both")
        if amount_nanos is not None:
            _amount(amount_nanos, "budget amount", allow_zero=True)
        if token_limit is not None and (
            isinstance(token_limit, bool) or not isinstance(token_limit, int) or token_limit < 0
        ):
            raise LedgerError("token limit must be a non-negative integer")
        try:
            if not isinstance(tz, str):
                raise ValueError(f"a time zone is a name like 'Asia/Shanghai', not {tz!r}")
            zone(tz)
        except ValueError as e:
            raise LedgerError(str(e)) from None
        self._check_scope(sc, scope_id)
        b = Budget(new_id("bud"), sc, scope_id, per, amount_nanos, token_limit, tz)
        ts = now_ms()
        with self.engine.begin() as conn:
            conn.execute(
                insert(budgets).values(
                    id=b.id,
                    scope=b.scope.value,
                    scope_id=b.scope_id,
                    period=b.period.value,
                    amount_nanos=b.amount_nanos,
                    token_limit=b.token_limit,
                    tz=b.tz,
                    created_ms=ts,
                    updated_ms=ts,
                    deleted_ms=None,
                )
            )
        return b

    def delete_budget(self, budget_id: str) -> bool:
        ts = now_ms()
        with self.engine.begin() as conn:
            res = conn.execute(
                update(budgets)
                .where(budgets.c.id == budget_id, budgets.c.deleted_ms.is_(None))
                .values(deleted_ms=ts, updated_ms=ts)
            )
        return res.rowcount > 0

    def changed_since(self, updated_ms: int) -> Changes:
        """Orgs, projects and budgets changed at or after ``updated_ms`` (deleted budgets
        too, by id): what a cache needs to catch up, read by the ``updated_ms`` indexes."""
        out = Changes()
        with self.engine.connect() as conn:
            for r in conn.execute(select(orgs).where(orgs.c.updated_ms >= updated_ms)):
                out.orgs.append(_org(r._mapping))
                out.newest_ms = max(out.newest_ms, int(r._mapping["updated_ms"]))
            q = select(projects).where(projects.c.updated_ms >= updated_ms)
            for r in conn.execute(q):
                m = r._mapping
                out.projects.append(Project(m["id"], m["org_id"], m["name"]))
                out.newest_ms = max(out.newest_ms, int(m["updated_ms"]))
            for r in conn.execute(select(budgets).where(budgets.c.updated_ms >= updated_ms)):
                m = r._mapping
                if m["deleted_ms"] is None:
                    out.budgets.append(_budget(m))
                else:
                    out.deleted_budgets.append(m["id"])
                out.newest_ms = max(out.newest_ms, int(m["updated_ms"]))
        return out

    def all_budgets(self) -> list[Budget]:
        q = select(budgets).where(budgets.c.deleted_ms.is_(None)).order_by(budgets.c.id)
        with self.engine.connect() as conn:
            return [_budget(r._mapping) for r in conn.execute(q)]

    def _check_scope(self, scope: Scope, scope_id: str) -> None:
        if scope is Scope.USER:
            org_id, _, user = scope_id.partition(":")
            if not user or len(user) > MAX_END_USER or not user.isprintable():
                raise LedgerError(
                    "an end user's budget is on '<org id>:<user>', the user 1 to "
                    f"{MAX_END_USER} printable characters"
                )
            scope, scope_id = Scope.ORG, org_id
        table = {Scope.ORG: orgs, Scope.PROJECT: projects, Scope.KEY: api_keys}[scope]
        with self.engine.connect() as conn:
            found = conn.execute(select(table.c.id).where(table.c.id == scope_id)).first()
        if found is None:
            raise LedgerError(f"no {scope.value} {scope_id!r} to put a budget on")

    # ---- money ------------------------------------------------------------------------

    def post(
        self,
        kind: str,
        org_id: str,
        amount_nanos: int,
        *,
        memo: str | None = None,
        txn_id: str | None = None,
    ) -> Entry:
        """Record a top-up, credit, refund or adjustment (idempotent by ``txn_id``).

        Top-ups, credits and refunds add to the balance and must be positive; adjustments
        may be negative but never take the balance below the org's floor.
        """
        if kind not in Kind.ADMIN:
            raise LedgerError(f"kind must be one of {', '.join(Kind.ADMIN)}, not {kind!r}")
        org = self.org(org_id)
        if kind == Kind.ADJUSTMENT:
            if isinstance(amount_nanos, bool) or not isinstance(amount_nanos, int):
                raise LedgerError("amount must be an integer number of nano-units")
            if amount_nanos == 0 or abs(amount_nanos) > MAX_ENTRY_NANOS:
                raise LedgerError("an adjustment must be non-zero and at most 1e9 units")
        else:
            _amount(amount_nanos, "amount")
        txn = txn_id or new_id("txn")
        ts = now_ms()
        cur = org.currency.value
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(ledger_txns.c.id).where(ledger_txns.c.id == txn)).first():
                    raise _Exists
                self._insert_entry(conn, org, kind, amount_nanos, txn, ts, memo)
        except (_Exists, IntegrityError):
            # A replay (or a concurrent twin): the same entry again is a no-op; a different
            # entry under the same id is refused rather than silently dropped.
            done = self._entry(txn)
            if (done.kind, done.amount_nanos) != (kind, amount_nanos) or self._txn_org(
                txn
            ) != org.id:
                raise IdempotencyConflict(
                    f"transaction id {txn!r} was already used for a different entry", done
                ) from None
            return done
        return Entry(txn, ts, kind, amount_nanos, cur, None, memo)

    def _txn_org(self, txn_id: str) -> str:
        with self.engine.connect() as conn:
            q = select(ledger_txns.c.org_id).where(ledger_txns.c.id == txn_id)
            return str(conn.execute(q).scalar_one())

    def _insert_entry(
        self,
        conn: Any,
        org: Org,
        kind: str,
        amount_nanos: int,
        txn: str,
        ts: int,
        memo: str | None,
    ) -> None:
        cur = org.currency.value
        if amount_nanos < 0:
            balance = self._balance(conn, org)
            if balance + amount_nanos < org.floor_nanos:
                raise LedgerError(
                    f"the adjustment would take {org.id} below its floor "
                    f"({balance + amount_nanos} < {org.floor_nanos} nanos)"
                )
        conn.execute(
            insert(ledger_txns).values(
                id=txn, ts_ms=ts, kind=kind, org_id=org.id, request_id=None, memo=memo
            )
        )
        conn.execute(
            insert(ledger_postings),
            [
                {
                    "txn_id": txn,
                    "account": org.account,
                    "amount_nanos": amount_nanos,
                    "currency": cur,
                },
                {
                    "txn_id": txn,
                    "account": f"{COUNTER_ACCOUNT[kind]}:{cur}",
                    "amount_nanos": -amount_nanos,
                    "currency": cur,
                },
            ],
        )

    def _entry(self, txn_id: str) -> Entry:
        q = (
            select(ledger_txns, ledger_postings.c.amount_nanos, ledger_postings.c.currency)
            .join(ledger_postings, ledger_postings.c.txn_id == ledger_txns.c.id)
            .where(ledger_txns.c.id == txn_id, ledger_postings.c.account.like("org:%"))
        )
        with self.engine.connect() as conn:
            m = conn.execute(q).one()._mapping
        return Entry(
            m["id"],
            m["ts_ms"],
            m["kind"],
            m["amount_nanos"],
            m["currency"],
            m["request_id"],
            m["memo"],
        )

    def _balance(self, conn: Any, org: Org) -> int:
        q = select(func.coalesce(func.sum(ledger_postings.c.amount_nanos), 0)).where(
            ledger_postings.c.account == org.account
        )
        return int(conn.execute(q).scalar_one())

    def balance(self, org_id: str) -> int:
        """The org's durable balance in nanos (what was written; open holds excluded)."""
        org = self.org(org_id)
        with self.engine.connect() as conn:
            return self._balance(conn, org)

    def org_totals(self, org_id: str) -> tuple[int, int]:
        """(admin, used): the sums of the org's non-usage and (negated) usage postings."""
        with self.engine.connect() as conn:
            return snapshot.org_totals(conn, org_id)

    def admin_orgs_since(self, ts_ms: int) -> set[str]:
        """The orgs with an admin transaction made at ``ts_ms`` or later (its time index;
        no DISTINCT, which SQLite would answer from the org index, reading them all)."""
        t = ledger_txns.c
        q = select(t.org_id).where(text(ADMIN_KINDS_SQL), t.ts_ms >= ts_ms)
        with self.engine.connect() as conn:
            return set(conn.execute(q).scalars())

    def admin_totals(self, org_ids: Collection[str] | None = None) -> dict[str, int]:
        """Every org's admin total (top-ups, credits, refunds, adjustments), or only those
        of ``org_ids`` (an org with none is left out)."""
        # Written so that it reads the partial index of admin transactions, never the
        # usage ones (one per billed request): the condition must be the index's own.
        # Each one's posting to its own org's account is looked up by its primary key in
        # a correlated subquery, which no plan can turn into a scan of every posting: a
        # join (on ``account LIKE 'org:%'``, or even on the whole key) let PostgreSQL's
        # planner, on statistics older than the usage, scan and hash them all: 240 ms a
        # call at 330,000 postings, once a second per gateway process, against 0.3 ms.
        t, p = ledger_txns.c, ledger_postings.c
        own = (
            select(p.amount_nanos)
            .where(p.txn_id == t.id, p.account == literal("org:") + t.org_id)
            .scalar_subquery()
        )
        q = select(t.org_id, func.sum(own)).where(text(ADMIN_KINDS_SQL)).group_by(t.org_id)
        if org_ids is not None:
            q = q.where(t.org_id.in_(list(org_ids)))
        with self.engine.connect() as conn:
            return {org_id: int(total) for org_id, total in conn.execute(q)}

    def budget_spent(self, meter: BudgetMeter) -> tuple[int, int]:
        """(nanos, tokens) of usage already recorded in the budget's current period."""
        with self.engine.connect() as conn:
            return snapshot.budget_spent(conn, meter)

    def live_totals(self, at_ms: int, request_ids: Collection[str]) -> snapshot.LiveTotals:
        """Every org's totals and every budget's bucket at ``at_ms``, and which of
        ``request_ids`` are recorded, in one snapshot (rebuilding lost live state)."""
        meters = [b.meter(at_ms) for b in self.all_budgets()]
        org_ids = [o.id for o in self.all_orgs()]
        return snapshot.read_live_totals(self.engine, org_ids, meters, request_ids)

    def live_snapshot(self, at_ms: int) -> snapshot.LiveSnapshot:
        """Every org's totals and every budget's bucket at ``at_ms`` in one open read
        transaction, asked which requests are recorded as often as needed (close it)."""
        meters = [b.meter(at_ms) for b in self.all_budgets()]
        org_ids = [o.id for o in self.all_orgs()]
        return snapshot.LiveSnapshot(self.engine, org_ids, meters)

    def statement(
        self, org_id: str, since_ms: int | None = None, until_ms: int | None = None
    ) -> list[Entry]:
        """The org's entries in time order, each with its signed effect on the balance."""
        org = self.org(org_id)
        q = (
            select(ledger_txns, ledger_postings.c.amount_nanos, ledger_postings.c.currency)
            .join(ledger_postings, ledger_postings.c.txn_id == ledger_txns.c.id)
            .where(ledger_postings.c.account == org.account)
            .order_by(ledger_txns.c.ts_ms, ledger_txns.c.id)
        )
        if since_ms is not None:
            q = q.where(ledger_txns.c.ts_ms >= since_ms)
        if until_ms is not None:
            q = q.where(ledger_txns.c.ts_ms < until_ms)
        with self.engine.connect() as conn:
            return [
                Entry(
                    m["id"],
                    m["ts_ms"],
                    m["kind"],
                    m["amount_nanos"],
                    m["currency"],
                    m["request_id"],
                    m["memo"],
                )
                for m in (r._mapping for r in conn.execute(q))
            ]

    def request(self, request_id: str) -> dict[str, Any] | None:
        """The usage record of one request (tokens, price version, cost, deployment)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(usage_events).where(usage_events.c.request_id == request_id)
            ).first()
        return dict(row._mapping) if row else None

    def trial_balance(self) -> dict[str, int]:
        """Sum of all postings per currency: zero for each when debits equal credits."""
        q = select(ledger_postings.c.currency, func.sum(ledger_postings.c.amount_nanos)).group_by(
            ledger_postings.c.currency
        )
        with self.engine.connect() as conn:
            return {cur: int(total) for cur, total in conn.execute(q)}


@dataclass
class Changes:
    """Rows of the account tree changed since some instant (see :meth:`changed_since`)."""

    orgs: list[Org] = field(default_factory=list)
    projects: list[Project] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)
    deleted_budgets: list[str] = field(default_factory=list)
    #: The newest ``updated_ms`` among them (0 when none).
    newest_ms: int = 0

    def __len__(self) -> int:
        return len(self.orgs) + len(self.projects) + len(self.budgets) + len(self.deleted_budgets)


def _org(m: Any) -> Org:
    return Org(
        m["id"], m["name"], Currency(m["currency"]), Mode(m["mode"]), int(m["credit_limit_nanos"])
    )


def _budget(m: Any) -> Budget:
    return Budget(
        m["id"],
        Scope(m["scope"]),
        m["scope_id"],
        Period(m["period"]),
        m["amount_nanos"],
        m["token_limit"],
        m["tz"],
    )


def _name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise LedgerError(f"a {what} needs a name of 1 to 200 characters")
    return name.strip()


def _currency(c: Currency | str) -> Currency:
    try:
        return Currency(c)
    except ValueError:
        known = ", ".join(x.value for x in Currency)
        raise LedgerError(f"unknown currency {c!r} (known: {known})") from None


def _amount(v: int, what: str, *, allow_zero: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise LedgerError(f"{what} must be an integer number of nano-units")
    if v < 0 or (v == 0 and not allow_zero):
        raise LedgerError(f"{what} must be {'non-negative' if allow_zero else 'positive'}")
    if v > MAX_ENTRY_NANOS:
        raise LedgerError(f"{what} is too large (at most 1e9 units)")


def ids(items: Iterable[Org | Project | Budget]) -> list[str]:
    return [i.id for i in items]
