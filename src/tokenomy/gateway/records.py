"""The durable usage event of a call, as one row for the batched writer."""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import Table

from tokenomy.billing.call_pricing import Charge
from tokenomy.core.call import Call, CallKey
from tokenomy.core.usage import Usage
from tokenomy.ledger.end_user import end_user

#: Rows (``(table, row)`` pairs) a call's record carries besides its usage event and
#: ledger rows, committed in the same transaction (a batch line's result).
EXTRA_ROWS: Final = CallKey[list[tuple[Table, dict[str, Any]]]]("record.extra_rows")

_NO_USAGE: Final = Usage()
#: The money columns of a call no ledger stage priced.
_NO_MONEY: Final[dict[str, Any]] = {
    "cost_nanos": 0,
    "currency": None,
    "list_cost_nanos": 0,
    "list_currency": None,
    "price_version": None,
    "fx_rate": None,
    "held_nanos": 0,
    "price_tier": None,
}


def usage_row(call: Call, ch: Charge | None) -> dict[str, Any]:
    """The call's usage event, with the money columns of ``ch``, its charge (the ledger
    stage leaves one on every call it priced: ``ledger.stage.CallLedger``)."""
    u = call.usage or _NO_USAGE
    dep = call.deployment
    row = {
        "request_id": call.request_id,
        "ts_ms": call.ts_ms,
        "key_id": call.key.id,
        "org_id": call.key.org_id,
        "project_id": call.key.project_id,
        "endpoint": call.endpoint,
        "dialect": call.dialect,
        # Aliases and routing suffixes (":floor") count as the model itself.
        "model": call.public_model,
        "deployment": dep.id if dep else None,
        "vendor": dep.vendor.key if dep else None,
        "stream": call.stream,
        "status": call.status,
        "http_status": call.http_status,
        "error_code": call.error_code,
        "input_tokens": u.input_tokens,
        "cached_tokens": u.cached_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "cache_write_1h_tokens": u.cache_write_1h_tokens,
        "output_tokens": u.output_tokens,
        "reasoning_tokens": u.reasoning_tokens,
        "usage_source": str(u.source),
        "latency_ms": call.latency_ms,
        "ttft_ms": call.ttft_ms,
        "attempts": call.attempts,
        "task_id": call.task_id,
        "end_user": end_user(call),
    }
    # The charge's columns, set in place rather than built as a second dict and merged.
    if ch is None:
        row.update(_NO_MONEY)
        return row
    row["cost_nanos"] = ch.cost_nanos
    row["currency"] = ch.currency.value if ch.currency else None
    row["list_cost_nanos"] = ch.list_cost_nanos
    row["list_currency"] = ch.list_currency.value if ch.list_currency else None
    row["price_version"] = ch.price_version
    row["fx_rate"] = str(ch.fx_rate) if ch.fx_rate is not None else None
    row["held_nanos"] = ch.held_nanos
    row["price_tier"] = ch.tier
    return row
