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
    }
