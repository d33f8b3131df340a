"""The admin-totals refresh reads what changed, not every org: a full read first and every
``full_every``-th time, in between only the orgs with a recent admin transaction (real
SQLite and PostgreSQL; rows and calls counted, not timed)."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.conftest import migrated_engine, query_plan
from tokenomy.billing.money import Currency
from tokenomy.ledger.admin_feed import AdminTotalsReader
from tokenomy.ledger.store import Kind, LedgerStore


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with migrated_engine(request.param, tmp_path) as e:
        yield e


class Counting:
    """A LedgerStore that counts the totals each read asks for."""

    def __init__(self, ledger: LedgerStore) -> None:
        self.ledger = ledger
        self.asked: list[int | None] = []

    def admin_totals(self, org_ids: Collection[str] | None = None) -> dict[str, int]:
        self.asked.append(None if org_ids is None else len(org_ids))
        return self.ledger.admin_totals(org_ids)

    def admin_orgs_since(self, ts_ms: int) -> set[str]:
        return self.ledger.admin_orgs_since(ts_ms)


def test_a_read_after_one_top_up_reads_that_org_only(engine: Engine) -> None:
    ledger = LedgerStore(engine)
    orgs = [ledger.create_org(f"o{i}", Currency.USD).id for i in range(300)]
    for o in orgs:
        ledger.post(Kind.TOPUP, o, 1_000)
    with engine.begin() as conn:  # made an hour ago: none of them is recent
        conn.execute(text("UPDATE ledger_txns SET ts_ms = ts_ms - 3600000"))
    later = [0.0]
    source = Counting(ledger)
    reader = AdminTotalsReader(
        source, full_every=5, margin_s=60, clock=lambda: time.time() + later[0]
    )

    totals, full = reader.read()
    assert full and totals == {o: 1_000 for o in orgs} and source.asked == [None]
    assert reader.read() == ({}, False)  # nothing since: no totals read at all
    assert source.asked == [None]

    ledger.post(Kind.TOPUP, orgs[7], 500)
    ledger.post(Kind.CREDIT, orgs[9], 20)
    totals, full = reader.read()
    assert not full and totals == {orgs[7]: 1_500, orgs[9]: 1_020}
    assert source.asked[-1] == 2
    # Within the margin it is read again (a total that committed late is not missed) ...
    assert reader.read()[0] == {orgs[7]: 1_500, orgs[9]: 1_020}
    # ... and not once the margin has passed; the full read comes back every 5th time.
    later[0] = 61.0
    assert reader.read() == ({}, False)
    totals, full = reader.read()
    assert full and len(totals) == 300 and source.asked[-1] is None


def test_recent_admin_orgs_are_found_through_their_time_index(engine: Engine) -> None:
    q = (
        "SELECT org_id FROM ledger_txns WHERE kind IN "
        "('topup', 'credit', 'refund', 'adjustment') AND ts_ms >= 5"
    )
    plan = query_plan(engine, q)
    assert "ix_ledger_txns_admin_ts" in plan, plan


def test_a_bulk_top_up_is_re_read_for_seconds_not_a_minute(engine: Engine) -> None:
    # Topping up every org at once (a monthly grant, or a seeded bench) had each refresh
    # re-read all of their totals for a minute: on SQLite with 10,000 orgs, 97 ms of CPU a
    # second for a gateway serving nothing. By default a top-up is re-read for a few
    # seconds after it is made; the full read still comes round every minute.
    ledger = LedgerStore(engine)
    orgs = [ledger.create_org(f"b{i}", Currency.USD).id for i in range(50)]
    for o in orgs:
        ledger.post(Kind.TOPUP, o, 1_000)
    later = [0.0]
    source = Counting(ledger)
    reader = AdminTotalsReader(source, clock=lambda: time.time() + later[0])
    assert reader.read()[1]  # the first read is whole
    assert len(reader.read()[0]) == 50  # just made: read again
    later[0] = 10.0
    assert reader.read() == ({}, False)
    assert source.asked == [None, 50]


def test_more_recent_orgs_than_a_bounded_read_takes_are_read_whole(engine: Engine) -> None:
    # An incremental read names its orgs in the query: SQLite takes at most 32,766 values
    # in one statement, PostgreSQL's driver 65,535. A bulk top-up of more orgs than a
    # bounded read takes is read whole instead, which also costs less than naming them.
    ledger = LedgerStore(engine)
    orgs = [ledger.create_org(f"m{i}", Currency.USD).id for i in range(30)]
    source = Counting(ledger)
    reader = AdminTotalsReader(source, full_every=100, full_above=20)
    reader.read()
    for o in orgs[:20]:
        ledger.post(Kind.TOPUP, o, 100)
    totals, full = reader.read()
    assert not full and len(totals) == 20 and source.asked == [None, 20]
    for o in orgs[20:]:
        ledger.post(Kind.TOPUP, o, 100)
    totals, full = reader.read()  # 30 recent orgs, over the bound
    assert full and totals == {o: 100 for o in orgs} and source.asked[-1] is None
