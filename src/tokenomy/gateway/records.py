"""The durable usage event of a call, as one row for the batched writer."""

from __future__ import annotations

from typing import Any

from tokenomy.gateway.call import Call
from tokenomy.gateway.usage import Usage


def usage_row(call: Call) -> dict[str, Any]:
    u = call.usage or Usage()
    dep = call.deployment
    return {
        "request_id": call.request_id,
        "ts_ms": call.ts_ms,
        "key_id": call.key.id,
        "org_id": call.key.org_id,
        "project_id": call.key.project_id,
        "endpoint": call.endpoint,
        "dialect": call.dialect,
        "model": call.model,
        "deployment": dep.id if dep else None,
        "vendor": dep.vendor.key if dep else None,
        "stream": call.stream,
        "status": call.status,
        "http_status": call.http_status,
        "error_code": call.error_code,
        "input_tokens": u.input_tokens,
        "cached_tokens": u.cached_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "output_tokens": u.output_tokens,
        "reasoning_tokens": u.reasoning_tokens,
        "usage_source": str(u.source),
        "latency_ms": call.latency_ms,
        "ttft_ms": call.ttft_ms,
        "attempts": call.attempts,
        **_money(call.extras.get("ledger.charge")),
    }


def _money(ch: Any) -> dict[str, Any]:
    """The charge's columns (the ledger stage leaves a Charge on every call it priced)."""
    if ch is None:
        ch_none: dict[str, Any] = dict.fromkeys(("currency", "list_currency", "price_version"))
        return {**ch_none, "cost_nanos": 0, "list_cost_nanos": 0, "fx_rate": None, "held_nanos": 0}
    return {
        "cost_nanos": ch.cost_nanos,
        "currency": ch.currency.value if ch.currency else None,
        "list_cost_nanos": ch.list_cost_nanos,
        "list_currency": ch.list_currency.value if ch.list_currency else None,
        "price_version": ch.price_version,
        "fx_rate": str(ch.fx_rate) if ch.fx_rate is not None else None,
        "held_nanos": ch.held_nanos,
    }
