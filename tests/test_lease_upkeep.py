"""Lease upkeep over a thousand tenants: work that grows with the leases, never with their
square, done in bounded slices so the event loop serves requests in between (counted with
fakes, not timed)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.test_ledger_leases import replica
from tests.test_ledger_live import PREPAID, FakeLoader
from tokenomy.billing.money import Currency
from tokenomy.ledger.accounts import Mode, Org, OrgMeter
from tokenomy.ledger.leased import MeterLease


def org_lease(live: Any, i: int) -> MeterLease:
    org = Org(f"org_{i}", f"O{i}", Currency.USD, Mode.PREPAID)
    ls: MeterLease = live._engine.add(MeterLease(f"lease:{i}", OrgMeter(org), None, key=f"o{i}"))
    return ls


async def test_ledger_upkeep_over_many_leases_never_compares_two_of_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    live = replica(FakeLoader(admin={PREPAID.id: 10**12}), "tktest:upkeep:")
    now = time.monotonic()
    n = 2000
    for i in range(n):
        ls = org_lease(live, i)
        ls.reserve = 1_000
        if i % 2:
            ls.used_at = now - 60  # idle: its reserve goes back
        else:
            ls.used_at, ls.renewed_at = now, now - 3600  # in use, renewal due
    synced: list[tuple[int, bool]] = []

    async def sync(leases: list[MeterLease], *, give_back: bool = False) -> None:
        synced.append((len(leases), give_back))
        for ls in leases:
            if give_back:
                ls.reserve = 0
            ls.renewed_at = now

    compared = 0

    def eq(a: object, b: object) -> bool:
        nonlocal compared
        compared += 1
        return a is b

    monkeypatch.setattr(live, "sync", sync)
    monkeypatch.setattr(MeterLease, "__eq__", eq)
    try:
        await live.upkeep(now)
    finally:
        await live._engine.close()
    # Each lease is looked at once: no lease is compared with another (was n/2 x n/2).
    assert compared == 0
    assert sum(k for k, back in synced if back) == n // 2
    assert sum(k for k, back in synced if not back) == n // 2
    # The idle leases, empty once given back, are forgotten; the others are kept.
    assert len(live._leases) == n // 2
