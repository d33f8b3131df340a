"""Anthropic's Message Batches: requests given inline, results read back as JSONL.

The same job store, worker, holds and billing as OpenAI's Batches (``batch_routes``);
each request is a ``/v1/messages`` call, for any model (translated when the vendor
speaks OpenAI's protocol). Errors come in Anthropic's shape (the route is under
``/v1/messages``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from tokenomy.api.batch_routes import BATCHES, Batches, caller, json_ok
from tokenomy.api.edge import parse_json
from tokenomy.batches.objects import EXTRA, MESSAGES, extra_fields
from tokenomy.core.errors import InvalidRequest, NotFound
from tokenomy.core.ids import UniqueIds
from tokenomy.store.batches import CANCELLED, ENDED, EXPIRED

#: Anthropic's limits on one Message Batch.
MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1024 * 1024

_IDS = UniqueIds("msgbatch_", width=8)

_RESULT_KIND = {CANCELLED: "canceled", EXPIRED: "expired"}


def _rfc3339(ts: int | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


async def _message_batch(request: web.Request, b: Batches, row: dict[str, Any]) -> dict[str, Any]:
    """A batch row as Anthropic's ``MessageBatch``."""
    completed, failed = await asyncio.to_thread(b.store.counts, row["id"])
    states = await asyncio.to_thread(b.store.line_states, row["id"])
    canceled, expired = states.get(CANCELLED, 0), states.get(EXPIRED, 0)
    ended = row["status"] in ENDED
    status = "ended" if ended else "canceling" if row["status"] == "cancelling" else "in_progress"
    ended_at = next(
        (row[k] for k in ("completed_at", "cancelled_at", "expired_at") if row.get(k)), None
    )
    url = f"{request.scheme}://{request.host}/v1/messages/batches/{row['id']}/results"
    return {
        "id": row["id"],
        "type": "message_batch",
        "processing_status": status,
        "request_counts": {
            "processing": max(row["total"] - completed - failed - canceled - expired, 0),
            "succeeded": completed,
            "errored": failed,
            "canceled": canceled,
            "expired": expired,
        },
        "ended_at": _rfc3339(ended_at) if ended else None,
        "created_at": _rfc3339(row["created_at"]),
        "expires_at": _rfc3339(row["expires_at"]),
        "archived_at": None,
        "cancel_initiated_at": _rfc3339(row.get("cancelling_at")),
        "results_url": url if ended else None,
        EXTRA: extra_fields(row),
    }


async def _read_body(request: web.Request) -> bytes:
    """The body, up to Anthropic's 256 MB (read past aiohttp's cap for other routes)."""
    if request.content_length is not None and request.content_length > MAX_BYTES:
        raise _too_large()
    buf = bytearray()
    while chunk := await request.content.read(1 << 20):
        buf += chunk
        if len(buf) > MAX_BYTES:
            raise _too_large()
    return bytes(buf)


def _too_large() -> InvalidRequest:
    err = InvalidRequest(f"A Message Batch may be at most {MAX_BYTES} bytes.")
    err.status, err.code = 413, "request_too_large"
    return err


async def create(request: web.Request) -> web.Response:
    _svc, key, owner = caller(request)
    b = request.app[BATCHES]
    body = parse_json(await _read_body(request))
    reqs = body.get("requests")
    if not isinstance(reqs, list) or not reqs:
        raise InvalidRequest("requests: a non-empty list of {custom_id, params} is required.")
    if len(reqs) > MAX_REQUESTS:
        raise InvalidRequest(f"requests: at most {MAX_REQUESTS} requests per batch.")
    row, errors = await b.intake.create_inline(key, owner, reqs, _IDS.next())
    if errors:
        first = "; ".join(
            f"requests.{e['line'] - 1}{'.' + e['param'] if e['param'] else ''}: {e['message']}"
            for e in errors[:5]
        )
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise InvalidRequest(first + more)
    b.worker.wake()
    return json_ok(await _message_batch(request, b, row))


async def _own(request: web.Request) -> tuple[Batches, dict[str, Any]]:
    _svc, _key, owner = caller(request)
    b = request.app[BATCHES]
    bid = request.match_info["batch_id"]
    row = await asyncio.to_thread(b.store.get, bid, owner)
    if row is None or row["endpoint"] != MESSAGES:
        raise NotFound(f"No Message Batch with id {bid}.", code=None)
    return b, row


async def retrieve(request: web.Request) -> web.Response:
    b, row = await _own(request)
    return json_ok(await _message_batch(request, b, row))


async def list_batches(request: web.Request) -> web.Response:
    _svc, _key, owner = caller(request)
    b = request.app[BATCHES]
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit: a whole number from 1 to 1000.")
    before, after = request.query.get("before_id"), request.query.get("after_id")
    rows = await asyncio.to_thread(
        b.store.page, owner, after=after, before=before, limit=limit + 1, endpoint=MESSAGES
    )
    more = len(rows) > limit
    rows = rows[-limit:] if before else rows[:limit]
    data = [await _message_batch(request, b, r) for r in rows]
    return json_ok(
        {
            "data": data,
            "has_more": more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


async def cancel(request: web.Request) -> web.Response:
    b, row = await _own(request)
    if row["status"] in ENDED:
        raise InvalidRequest(f"Message Batch {row['id']} has ended; it cannot be canceled.")
    if row["status"] != "cancelling":
        await asyncio.to_thread(
            b.store.transition,
            row["id"],
            ["in_progress"],
            {"status": "cancelling", "cancelling_at": int(datetime.now(UTC).timestamp())},
        )
        await b.worker.sweep()
    now_row = await asyncio.to_thread(b.store.get, row["id"])
    assert now_row is not None
    return json_ok(await _message_batch(request, b, now_row))


async def delete(request: web.Request) -> web.Response:
    b, row = await _own(request)
    if row["status"] not in ENDED:
        raise InvalidRequest(
            f"Message Batch {row['id']} is still processing: cancel it, or wait for it to "
            "end, before deleting it."
        )
    await asyncio.to_thread(b.store.delete, row["id"])
    return json_ok({"id": row["id"], "type": "message_batch_deleted"})


async def results(request: web.Request) -> web.StreamResponse:
    b, row = await _own(request)
    if row["status"] not in ENDED:
        raise InvalidRequest(f"Message Batch {row['id']} has not ended; no results yet.")
    resp = web.StreamResponse(headers={"Content-Type": "application/binary"})
    await resp.prepare(request)
    last = 0
    while page := await asyncio.to_thread(b.store.results_page, row["id"], last):
        await resp.write(b"".join(orjson.dumps(_result(r)) + b"\n" for r in page))
        last = page[-1]["line_no"]
    for ln in await asyncio.to_thread(b.store.ended_lines, row["id"]):
        kind = _RESULT_KIND[ln["state"]]
        await resp.write(orjson.dumps({"custom_id": ln["custom_id"], "result": {"type": kind}}))
        await resp.write(b"\n")
    await resp.write_eof()
    return resp


def _result(r: dict[str, Any]) -> dict[str, Any]:
    body = orjson.loads(r["body"]) if r.get("body") else {}
    if r["status_code"] == 200:
        return {"custom_id": r["custom_id"], "result": {"type": "succeeded", "message": body}}
    err = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(body, dict) and body.get("type") == "error"):
        # An outcome recorded in OpenAI's shape (a line that never reached the pipeline).
        message = err.get("message") if isinstance(err, dict) else "The request failed."
        body = {"type": "error", "error": {"type": "api_error", "message": message}}
    body["request_id"] = r["request_id"]
    return {"custom_id": r["custom_id"], "result": {"type": "errored", "error": body}}


def add_routes(app: web.Application) -> None:
    """After ``batch_routes.add_routes`` (they share its job store and worker)."""
    app.router.add_post("/v1/messages/batches", create)
    app.router.add_get("/v1/messages/batches", list_batches)
    app.router.add_get("/v1/messages/batches/{batch_id}", retrieve)
    app.router.add_delete("/v1/messages/batches/{batch_id}", delete)
    app.router.add_post("/v1/messages/batches/{batch_id}/cancel", cancel)
    app.router.add_get("/v1/messages/batches/{batch_id}/results", results)
