"""Vendors' native batch APIs: OpenAI's Files (``purpose=batch``) and Batches, and
Anthropic's Message Batches.

A created batch runs in the background: each line is sent to the simulator's own
endpoint for its ``url`` (so it is answered, faulted and counted as an interactive call
would be), its answer kept as an output line (2xx) or an error line (others) in
OpenAI's result format, or as a ``succeeded`` / ``errored`` / ``canceled`` result in
Anthropic's. Files and batches live in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import BodyPartReader, web

from tokenomy.sim.errors import Dialect, error_response
from tokenomy.sim.gate import Rejected, bad_request, read_body

_D = Dialect.OPENAI
_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions")


@dataclass
class _Batches:
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # id -> (purpose, data)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    ids: itertools.count[int] = field(default_factory=itertools.count)


BATCH_API: web.AppKey[_Batches] = web.AppKey("sim_batch_api", _Batches)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _not_found(what: str) -> Rejected:
    return Rejected(error_response(_D, 404, f"No such {what}."))


def _file_obj(fid: str, purpose: str, data: bytes, name: str) -> dict[str, Any]:
    return {
        "id": fid,
        "object": "file",
        "bytes": len(data),
        "created_at": int(time.time()),
        "filename": name,
        "purpose": purpose,
        "status": "processed",
    }


async def upload(request: web.Request) -> web.Response:
    st = request.app[BATCH_API]
    reader = await request.multipart()
    purpose, data, name = "", b"", "upload.jsonl"
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "purpose":
            purpose = (await part.text()).strip()
        elif part.name == "file":
            name = part.filename or name
            data = bytes(await part.read())
    if purpose != "batch" or not data:
        raise bad_request(_D, "upload a non-empty file with purpose 'batch'", "file")
    fid = f"file-sim{next(st.ids):06d}"
    st.files[fid] = (purpose, data)
    return _json(_file_obj(fid, purpose, data, name))


async def content(request: web.Request) -> web.Response:
    st = request.app[BATCH_API]
    got = st.files.get(request.match_info["file_id"])
    if got is None:
        raise _not_found("file")
    return web.Response(body=got[1], content_type="application/octet-stream")


async def create(request: web.Request) -> web.Response:
    st = request.app[BATCH_API]
    body = await read_body(request, _D)
    fid = body.get("input_file_id")
    if fid not in st.files:
        raise bad_request(_D, "input_file_id names no uploaded file", "input_file_id")
    endpoint = body.get("endpoint")
    if endpoint not in _ENDPOINTS:
        raise bad_request(_D, f"endpoint must be one of {', '.join(_ENDPOINTS)}", "endpoint")
    now = int(time.time())
    bid = f"batch_sim{next(st.ids):06d}"
    lines = [x for x in st.files[fid][1].split(b"\n") if x.strip()]
    if any(b"nobatch" in x for x in lines):
        # Some vendors batch only some models (Kimi: two); this one batches none of these.
        raise bad_request(_D, "this model is not available in batch", "input_file_id")
    b: dict[str, Any] = {
        "id": bid,
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": fid,
        "completion_window": body.get("completion_window", "24h"),
        "status": "in_progress",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": now,
        "expires_at": now + 86400,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
        "metadata": body.get("metadata"),
    }
    st.batches[bid] = b
    origin = f"http://{request.host}"
    auth = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "x-api-key")}
    task = asyncio.create_task(_run(st, b, lines, origin, auth))
    st.tasks.add(task)
    task.add_done_callback(st.tasks.discard)
    return _json(b)


async def retrieve(request: web.Request) -> web.Response:
    b = request.app[BATCH_API].batches.get(request.match_info["batch_id"])
    if b is None:
        raise _not_found("batch")
    return _json(b)


async def cancel(request: web.Request) -> web.Response:
    b = request.app[BATCH_API].batches.get(request.match_info["batch_id"])
    if b is None:
        raise _not_found("batch")
    if b["status"] in ("validating", "in_progress"):
        b["status"], b["cancelling_at"] = "cancelling", int(time.time())
    return _json(b)


async def _run(
    st: _Batches, b: dict[str, Any], lines: list[bytes], origin: str, auth: dict[str, str]
) -> None:
    """Answer each line through the simulator's own endpoint, then write the files."""
    out: list[bytes] = []
    err: list[bytes] = []
    counts = b["request_counts"]
    async with aiohttp.ClientSession() as s:
        for n, raw in enumerate(lines):
            if b["status"] == "cancelling":
                break
            line = orjson.loads(raw)
            rid = f"batch_req_sim{n:06d}_{b['id']}"
            async with s.post(origin + line["url"], json=line["body"], headers=auth) as r:
                status, body = r.status, orjson.loads(await r.read())
            result = {
                "id": rid,
                "custom_id": line["custom_id"],
                "response": {"status_code": status, "request_id": rid, "body": body},
                "error": None,
            }
            (out if status < 300 else err).append(orjson.dumps(result))
            counts["completed" if status < 300 else "failed"] += 1
    b["finalizing_at"] = int(time.time())
    for kind, rows in (("output", out), ("error", err)):
        if rows:
            fid = f"file-sim{next(st.ids):06d}"
            st.files[fid] = ("batch_output", b"\n".join(rows) + b"\n")
            b[f"{kind}_file_id"] = fid
    end = "cancelled" if b["status"] == "cancelling" else "completed"
    b["status"], b[f"{end}_at"] = end, int(time.time())


# -- Anthropic's Message Batches ---------------------------------------------------------

_A = Dialect.ANTHROPIC


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _message_batch(request: web.Request, b: dict[str, Any]) -> dict[str, Any]:
    ended = b["processing_status"] == "ended"
    url = f"http://{request.host}/v1/messages/batches/{b['id']}/results"
    return {
        "id": b["id"],
        "type": "message_batch",
        "processing_status": b["processing_status"],
        "request_counts": dict(b["request_counts"]),
        "ended_at": _rfc3339(b.get("ended_at")),
        "created_at": _rfc3339(b["created_at"]),
        "expires_at": _rfc3339(b["created_at"] + 86400),
        "archived_at": None,
        "cancel_initiated_at": _rfc3339(b.get("cancel_initiated_at")),
        "results_url": url if ended else None,
    }


async def create_messages(request: web.Request) -> web.Response:
    st = request.app[BATCH_API]
    body = await read_body(request, _A)
    reqs = body.get("requests")
    if not isinstance(reqs, list) or not reqs:
        raise bad_request(_A, "requests must be a non-empty array", "requests")
    for r in reqs:
        if not (isinstance(r, dict) and isinstance(r.get("custom_id"), str)):
            raise bad_request(_A, "each request needs a custom_id and params", "requests")
        if not isinstance(r.get("params"), dict):
            raise bad_request(_A, "each request needs a custom_id and params", "requests")
    bid = f"msgbatch_sim{next(st.ids):06d}"
    counts = {"processing": len(reqs), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    b: dict[str, Any] = {
        "id": bid,
        "processing_status": "in_progress",
        "request_counts": counts,
        "created_at": time.time(),
        "results": [],
    }
    st.batches[bid] = b
    auth = {
        k: v
        for k, v in request.headers.items()
        if k.lower() in ("authorization", "x-api-key", "anthropic-version")
    }
    task = asyncio.create_task(_run_messages(b, reqs, f"http://{request.host}", auth))
    st.tasks.add(task)
    task.add_done_callback(st.tasks.discard)
    return _json(_message_batch(request, b))


def _own_message_batch(request: web.Request) -> dict[str, Any]:
    b = request.app[BATCH_API].batches.get(request.match_info["batch_id"])
    if b is None or "processing_status" not in b:
        raise Rejected(error_response(_A, 404, "No such message batch."))
    return b


async def retrieve_messages(request: web.Request) -> web.Response:
    return _json(_message_batch(request, _own_message_batch(request)))


async def cancel_messages(request: web.Request) -> web.Response:
    b = _own_message_batch(request)
    if b["processing_status"] == "in_progress":
        b["processing_status"], b["cancel_initiated_at"] = "canceling", time.time()
    return _json(_message_batch(request, b))


async def results_messages(request: web.Request) -> web.Response:
    b = _own_message_batch(request)
    if b["processing_status"] != "ended":
        raise bad_request(_A, "the batch has not ended", "batch_id")
    body = b"".join(orjson.dumps(r) + b"\n" for r in b["results"])
    return web.Response(body=body, content_type="application/x-jsonl")


async def _run_messages(
    b: dict[str, Any], reqs: list[dict[str, Any]], origin: str, auth: dict[str, str]
) -> None:
    counts = b["request_counts"]
    async with aiohttp.ClientSession() as s:
        for r in reqs:
            counts["processing"] -= 1
            if b["processing_status"] == "canceling":
                b["results"].append({"custom_id": r["custom_id"], "result": {"type": "canceled"}})
                counts["canceled"] += 1
                continue
            async with s.post(origin + "/v1/messages", json=r["params"], headers=auth) as resp:
                status, body = resp.status, orjson.loads(await resp.read())
            if status < 300:
                result = {"type": "succeeded", "message": body}
                counts["succeeded"] += 1
            else:
                result = {"type": "errored", "error": body}
                counts["errored"] += 1
            b["results"].append({"custom_id": r["custom_id"], "result": result})
    b["processing_status"], b["ended_at"] = "ended", time.time()


async def _stop(app: web.Application) -> None:
    for t in list(app[BATCH_API].tasks):
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t


def add_routes(app: web.Application) -> None:
    app[BATCH_API] = _Batches()
    r = app.router
    r.add_post("/v1/files", upload)
    r.add_get("/v1/files/{file_id}/content", content)
    r.add_post("/v1/batches", create)
    r.add_get("/v1/batches/{batch_id}", retrieve)
    r.add_post("/v1/batches/{batch_id}/cancel", cancel)
    r.add_post("/v1/messages/batches", create_messages)
    r.add_get("/v1/messages/batches/{batch_id}", retrieve_messages)
    r.add_post("/v1/messages/batches/{batch_id}/cancel", cancel_messages)
    r.add_get("/v1/messages/batches/{batch_id}/results", results_messages)
    app.on_cleanup.append(_stop)
