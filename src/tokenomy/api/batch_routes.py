"""OpenAI's Files and Batches APIs: upload JSONL, create, follow and cancel batches.

Uploads are streamed to the database a chunk at a time; the batch worker (one in every
gateway process, see ``tokenomy.batches.worker``) runs the lines.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from tokenomy.api import anthropic_routes
from tokenomy.api.edge import SERVICES, authenticate, read_json
from tokenomy.api.openai_routes import INFERENCE
from tokenomy.batches.holds import LineHolds
from tokenomy.batches.intake import BatchIntake
from tokenomy.batches.native import NativeBatches
from tokenomy.batches.objects import MESSAGES, batch_object
from tokenomy.batches.worker import BatchWorker, WorkerSettings
from tokenomy.core.errors import GatewayError, InvalidRequest, NotFound, PayloadTooLarge
from tokenomy.core.keys import ApiKey
from tokenomy.services import Services
from tokenomy.store.batches import BatchStore
from tokenomy.store.files import CHUNK_BYTES, FileStore, StoredFile, new_file_id, now_s

#: OpenAI's limits on a batch input file.
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_FILE_LINES = 50_000

#: Purposes a file may be uploaded with (``batch`` is the one batches read).
PURPOSES = frozenset({"batch", "fine-tune", "assistants", "vision", "user_data", "evals"})


class Batches:
    """The files, batches and worker of one gateway process."""

    def __init__(self, svc: Services, settings: WorkerSettings) -> None:
        builders = {r.path: r.build for r in (*INFERENCE, *anthropic_routes.INFERENCE)}
        self.files = FileStore(svc.engine)
        self.store = BatchStore(svc.engine)
        holds = LineHolds(svc.live, svc.accounts)
        self.intake = BatchIntake(svc, self.files, self.store, builders, holds)
        self.worker = BatchWorker(svc, self.store, builders, holds, settings)
        self.intake.pace = self.worker.pace
        self.worker.native = NativeBatches(svc, self.store, self.worker)


BATCHES: web.AppKey[Batches] = web.AppKey("batches", Batches)


def caller(request: web.Request) -> tuple[Services, ApiKey, str]:
    """The services, the caller's key and what it owns (its org, or the key itself)."""
    svc = request.app[SERVICES]
    key = authenticate(request.headers, svc)
    return svc, key, key.org_id or key.id


def json_ok(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "20")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= 10_000:
        raise InvalidRequest("limit must be a whole number from 1 to 10000.", param="limit")
    return n


def _page(data: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    page = data[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(data) > limit,
    }


# -- files ------------------------------------------------------------------------------


async def upload_file(request: web.Request) -> web.Response:
    _svc, _key, owner = caller(request)
    b = request.app[BATCHES]
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest("Upload a file as multipart/form-data with 'file' and 'purpose'.")
    reader = await request.multipart()
    purpose: str | None = None
    stored: StoredFile | None = None
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                if stored is not None:
                    raise InvalidRequest("Send one file per upload.", param="file")
                stored = await _store_upload(b.files, part, owner)
            else:
                await part.release()
    except BaseException:
        if stored is not None:
            await asyncio.to_thread(b.files.discard_chunks, stored.id)
        raise
    if stored is None:
        raise InvalidRequest("The upload has no 'file' part.", param="file")
    if purpose not in PURPOSES:
        await asyncio.to_thread(b.files.discard_chunks, stored.id)
        raise InvalidRequest(
            f"purpose must be one of {', '.join(sorted(PURPOSES))}.", param="purpose"
        )
    f = dataclasses.replace(stored, purpose=purpose)
    await asyncio.to_thread(b.files.finish, f)
    return json_ok(f.openai())


async def _store_upload(files: FileStore, part: BodyPartReader, owner: str) -> StoredFile:
    """Write the file part to the database a chunk at a time, counting lines and bytes
    (413 past the limits; the chunks written so far are dropped)."""
    fid = new_file_id()
    buf, seq, size, lines, last = bytearray(), 0, 0, 0, b"\n"
    try:
        while chunk := await part.read_chunk(256 * 1024):
            size += len(chunk)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
            if size > MAX_FILE_BYTES:
                raise PayloadTooLarge(
                    f"The file is larger than the limit of {MAX_FILE_BYTES} bytes.", param="file"
                )
            if lines > MAX_FILE_LINES:
                raise PayloadTooLarge(
                    f"The file has more than {MAX_FILE_LINES} lines.", param="file"
                )
            buf += chunk
            if len(buf) >= CHUNK_BYTES:
                await asyncio.to_thread(files.put_chunk, fid, seq, bytes(buf))
                seq, buf = seq + 1, bytearray()
        if buf:
            await asyncio.to_thread(files.put_chunk, fid, seq, bytes(buf))
    except BaseException:
        await asyncio.to_thread(files.discard_chunks, fid)
        raise
    if size and last != b"\n":
        lines += 1  # the last line has no newline
        if lines > MAX_FILE_LINES:
            await asyncio.to_thread(files.discard_chunks, fid)
            raise PayloadTooLarge(f"The file has more than {MAX_FILE_LINES} lines.", param="file")
    name = part.filename or "upload.jsonl"
    return StoredFile(fid, owner, "", name[:400], size, lines, now_s())


async def _own_file(request: web.Request) -> tuple[Batches, StoredFile]:
    _svc, _key, owner = caller(request)
    b = request.app[BATCHES]
    fid = request.match_info["file_id"]
    f = await asyncio.to_thread(b.files.get, fid, owner)
    if f is None:
        raise NotFound(f"No such File object: {fid}", param="file_id", code=None)
    return b, f


async def get_file(request: web.Request) -> web.Response:
    _b, f = await _own_file(request)
    return json_ok(f.openai())


async def delete_file(request: web.Request) -> web.Response:
    b, f = await _own_file(request)
    await asyncio.to_thread(b.files.delete, f.id, f.owner)
    return json_ok({"id": f.id, "object": "file", "deleted": True})


async def file_content(request: web.Request) -> web.StreamResponse:
    b, f = await _own_file(request)
    resp = web.StreamResponse(
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(f.bytes)}
    )
    await resp.prepare(request)
    seq = 0
    while (data := await asyncio.to_thread(b.files.chunk, f.id, seq)) is not None:
        await resp.write(data)
        seq += 1
    await resp.write_eof()
    return resp


async def list_files(request: web.Request) -> web.Response:
    _svc, _key, owner = caller(request)
    b = request.app[BATCHES]
    limit = _limit(request)
    found = await asyncio.to_thread(
        b.files.page,
        owner,
        purpose=request.query.get("purpose"),
        after=request.query.get("after"),
        limit=limit + 1,
    )
    return json_ok(_page([f.openai() for f in found], limit))


# -- batches ----------------------------------------------------------------------------


async def _batch_json(b: Batches, row: dict[str, Any]) -> dict[str, Any]:
    completed, failed = await asyncio.to_thread(b.store.counts, row["id"])
    return batch_object(row, completed, failed)


async def create_batch(request: web.Request) -> web.Response:
    svc, key, owner = caller(request)
    b = request.app[BATCHES]
    row = await b.intake.create(key, owner, await read_json(request, svc))
    b.worker.wake()
    return json_ok(batch_object(row, 0, 0))


async def _own_batch(request: web.Request) -> tuple[Batches, dict[str, Any], str]:
    _svc, _key, owner = caller(request)
    b = request.app[BATCHES]
    bid = request.match_info["batch_id"]
    row = await asyncio.to_thread(b.store.get, bid, owner)
    if row is None or row["endpoint"] == MESSAGES:
        raise NotFound(f"No such batch: {bid}", param="batch_id", code=None)
    return b, row, owner


async def get_batch(request: web.Request) -> web.Response:
    b, row, _ = await _own_batch(request)
    return json_ok(await _batch_json(b, row))


async def cancel_batch(request: web.Request) -> web.Response:
    b, row, owner = await _own_batch(request)
    if row["status"] in ("cancelling", "cancelled"):
        return json_ok(await _batch_json(b, row))
    now = int(b.worker.clock())
    changed = await asyncio.to_thread(
        b.store.transition,
        row["id"],
        ["validating", "in_progress"],
        {"status": "cancelling", "cancelling_at": now},
        owner,
    )
    if not changed:
        err = GatewayError(
            f"Cannot cancel a batch with status '{row['status']}'.", code="batch_not_cancellable"
        )
        err.status, err.type = 409, "invalid_request_error"
        raise err
    await b.worker.sweep()  # ends the lines not running and releases their holds now
    now_row = await asyncio.to_thread(b.store.get, row["id"], owner)
    assert now_row is not None
    return json_ok(await _batch_json(b, now_row))


async def list_batches(request: web.Request) -> web.Response:
    _svc, _key, owner = caller(request)
    b = request.app[BATCHES]
    limit = _limit(request)
    rows = await asyncio.to_thread(
        b.store.page,
        owner,
        after=request.query.get("after"),
        limit=limit + 1,
        not_endpoint=MESSAGES,  # Anthropic's Message Batches are listed on their own route
    )
    return json_ok(_page([await _batch_json(b, r) for r in rows], limit))


def add_routes(app: web.Application, svc: Services, settings: WorkerSettings) -> None:
    b = app[BATCHES] = Batches(svc, settings)
    app.router.add_post("/v1/files", upload_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", get_file)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", get_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)

    _register_gauges(svc, b.worker)

    async def start(_app: web.Application) -> None:
        await b.worker.start()

    async def stop(_app: web.Application) -> None:
        await b.worker.stop()

    # After the services start (migrations) and before they stop (the writer drains).
    app.on_startup.append(start)
    app.on_cleanup.insert(0, stop)


def _register_gauges(svc: Services, w: BatchWorker) -> None:
    m = svc.metrics
    m.gauge("tokenomy_batch_lines_queued", "Batch lines waiting to run (every process's).",
            lambda: w.stats.queued)  # fmt: skip
    m.gauge("tokenomy_batch_lines_running", "Batch lines leased to a process now.",
            lambda: w.stats.running)  # fmt: skip
    m.gauge("tokenomy_batch_lines_scheduled",
            "Batch lines waiting for their batch's planned start (part of the queued).",
            lambda: w.stats.scheduled)  # fmt: skip
    m.gauge("tokenomy_batch_lines_per_second",
            "Batch lines this process runs per second (measured while lines wait).",
            lambda: w.throughput.lines_per_s())  # fmt: skip
    m.gauge("tokenomy_batch_oldest_age_seconds", "Age of the oldest batch still running.",
            w.oldest_age_s)  # fmt: skip
    m.gauge("tokenomy_batch_lines_done_total", "Batch lines run to a recorded outcome.",
            lambda: w.lines_run, kind="counter")  # fmt: skip
    m.gauge("tokenomy_batch_width",
            "Batch lines this process may run at once now (fewer while interactive calls "
            "are served).", lambda: w.yielding.last_width)  # fmt: skip
    m.gauge("tokenomy_batch_lag_pauses_total",
            "Times this process's batch worker stopped claiming because its event loop "
            "lagged while serving interactive calls.",
            lambda: w.yielding.lag_pauses, kind="counter")  # fmt: skip
