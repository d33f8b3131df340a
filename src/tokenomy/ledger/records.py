"""The ledger rows of a settled call, written in the same transaction as its usage event."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table

from tokenomy.billing.call_pricing import Charge
from tokenomy.core.call import Call
from tokenomy.ledger.accounts import Org
from tokenomy.ledger.store import Kind
from tokenomy.store.schema import ledger_postings, ledger_txns


def ledger_rows(call: Call, org: Org | None, ch: Charge) -> list[tuple[Table, dict[str, Any]]]:
    """A usage transaction: the org pays the whole cost (above its hold too), revenue
    receives it.

    Ids derive from the request id, so a replayed batch inserts nothing twice.
    """
    if org is None or ch.currency is None or not ch.cost_nanos:
        return []
    cur = ch.currency.value
    vendor = call.deployment.vendor.key if call.deployment else "unknown"
    legs = ((org.account, -ch.cost_nanos), (f"revenue:{vendor}:{cur}", ch.cost_nanos))
    rows: list[tuple[Table, dict[str, Any]]] = []
    _txn(rows, call, org, f"usage:{call.request_id}", Kind.USAGE, cur, legs)
    return rows


def _txn(
    rows: list[tuple[Table, dict[str, Any]]],
    call: Call,
    org: Org,
    txn_id: str,
    kind: str,
    cur: str,
    legs: tuple[tuple[str, int], ...],
) -> None:
    """One transaction row and its postings, appended to ``rows``."""
    rows.append(
        (
            ledger_txns,
            {
                "id": txn_id,
                "ts_ms": call.ts_ms,
                "kind": kind,
                "org_id": org.id,
                "request_id": call.request_id,
                "memo": None,
            },
        )
    )
    for account, amount in legs:
        rows.append(
            (
                ledger_postings,
                {"txn_id": txn_id, "account": account, "amount_nanos": amount, "currency": cur},
            )
        )
