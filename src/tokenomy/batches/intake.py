"""Creating a batch: check every line of its input file, hold its worst case, store it.

Each line is checked as the HTTP route would check the same request (the route's own
call builder, the key's models, a deployment that serves it), so a line that would be
refused interactively fails the batch up front, with its line number, and nothing is
held. A batch whose lines are all good holds each line's worst case at batch prices
(all or none: 402 before any work when the balance or a budget cannot cover it).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from tokenomy.batches.holds import LineHolds
from tokenomy.batches.objects import ENDPOINTS, WINDOWS, line_request_id, new_batch_id
from tokenomy.billing.call_pricing import units
from tokenomy.core.call import Call
from tokenomy.core.errors import GatewayError, InsufficientQuota, InvalidRequest, NotFound
from tokenomy.core.keys import ApiKey
from tokenomy.ledger.live import Shortfall
from tokenomy.store.batches import PENDING, BatchStore
from tokenomy.store.files import FileStore

if TYPE_CHECKING:
    from tokenomy.services import Services

#: Builds a line's call from its body, as the HTTP route does.
Builder = Callable[[dict[str, Any], ApiKey, "Services"], Call]

#: The most errors a failed batch lists.
MAX_ERRORS = 100

#: The tier every batch line is served and billed at.
BATCH_TIER = "batch"


@dataclass(slots=True)
class _Line:
    line_no: int
    custom_id: str
    body: dict[str, Any]
    amount: int
    tokens: int


class BatchIntake:
    def __init__(
        self,
        svc: Services,
        files: FileStore,
        store: BatchStore,
        builders: Mapping[str, Builder],
        holds: LineHolds,
    ) -> None:
        self.svc = svc
        self.files = files
        self.store = store
        self.builders = builders
        self.holds = holds

    async def create(self, key: ApiKey, owner: str, req: dict[str, Any]) -> dict[str, Any]:
        """Check and store a batch; its row (failed when a line is bad)."""
        endpoint, window, file_id, meta = _parse_request(req)
        f = await asyncio.to_thread(self.files.get, file_id, owner)
        if f is None:
            raise NotFound(f"No such File object: {file_id}", param="input_file_id", code=None)
        if f.purpose != "batch":
            raise InvalidRequest(
                f"File {file_id} has purpose '{f.purpose}'; a batch needs a file uploaded "
                "with purpose 'batch'.",
                param="input_file_id",
            )
        row = _new_row(new_batch_id(), key, owner, endpoint, window, meta, file_id)
        lines, errors = await self._check(_file_lines(self.files, f.id), key, endpoint)
        if errors or not lines:
            if not lines and not errors:
                errors = [_error("empty_file", "The input file has no requests.", None, None)]
            row.update(
                status="failed", failed_at=row["created_at"], total=0, errors=json.dumps(errors)
            )
            await asyncio.to_thread(self.store.create, row, ())
            return row
        await self._hold_and_store(row, key, lines)
        return row

    async def create_inline(
        self, key: ApiKey, owner: str, requests: list[dict[str, Any]], batch_id: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A batch of requests given inline (Anthropic's Message Batches), as
        ``{custom_id, params}``: its row (stored only when every request is good) and
        the errors, by request number from 1."""
        endpoint = "/v1/messages"

        async def lines() -> AsyncIterator[tuple[int, bytes]]:
            for i, r in enumerate(requests, 1):
                if not isinstance(r, dict):
                    yield i, b"[]"
                    continue
                line = {"custom_id": r.get("custom_id"), "url": endpoint, "body": r.get("params")}
                yield i, orjson.dumps(line)

        row = _new_row(batch_id, key, owner, endpoint, "24h", None, "")
        found, errors = await self._check(lines(), key, endpoint)
        if not errors:
            await self._hold_and_store(row, key, found)
        return row, errors

    async def _hold_and_store(self, row: dict[str, Any], key: ApiKey, lines: list[_Line]) -> None:
        """Hold every line's worst case (402 if it cannot be covered) and store the batch."""
        bid, now = row["id"], row["created_at"]
        created_ms = now * 1000
        holds = [
            h
            for ln in lines
            if (
                h := self.holds.hold_for(
                    key,
                    line_request_id(bid, ln.line_no),
                    ln.amount,
                    ln.tokens,
                    created_ms,
                    row["expires_at"],
                )
            )
            is not None
        ]
        try:
            await self.holds.make(holds)
        except Shortfall as s:
            raise _refusal(s, sum(ln.amount for ln in lines), key, self.svc) from None
        row.update(
            status="in_progress",
            in_progress_at=now,
            total=len(lines),
            held_nanos=sum(h.amount for h in holds),
        )
        stored = (
            {
                "batch_id": bid,
                "line_no": ln.line_no,
                "request_id": line_request_id(bid, ln.line_no),
                "custom_id": ln.custom_id,
                "body": orjson.dumps(ln.body).decode(),
                "state": PENDING,
                "lease_until": 0,
                "attempts": 0,
                "held_nanos": ln.amount,
                "held_tokens": ln.tokens,
            }
            for ln in lines
        )
        try:
            await asyncio.to_thread(self.store.create, row, stored)
        except BaseException:
            await self.holds.release(holds)
            raise

    async def _check(
        self, source: AsyncIterator[tuple[int, bytes]], key: ApiKey, endpoint: str
    ) -> tuple[list[_Line], list[dict[str, Any]]]:
        lines: list[_Line] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        build = self.builders[endpoint]
        org = self.svc.accounts.org_of(key)
        at = datetime.now(UTC)
        async for n, raw in source:
            try:
                custom_id, body = _parse_line(raw, endpoint)
                if custom_id in seen:
                    raise _LineError(
                        "duplicate_custom_id",
                        "The custom_id for this request is a duplicate of another request. "
                        "The custom_id parameter must be unique for each request in a batch.",
                        "custom_id",
                    )
                seen.add(custom_id)
                body["service_tier"] = BATCH_TIER
                call = build(body, key, self.svc)
                if call.stream:
                    raise _LineError(
                        "invalid_request", "Batch requests cannot stream.", "body.stream"
                    )
                pipeline = self.svc.pipeline
                pipeline.route(call)
                deps = pipeline.candidates(call)
                amount, tokens = 0, 0
                if org is not None:
                    bound = self.svc.pricer.prompt_bound(call)
                    cap = self.svc.config.server.default_max_output_tokens
                    amount, tokens = self.svc.pricer.worst(call, deps, org.currency, bound, cap, at)
                lines.append(_Line(n, custom_id, body, amount, tokens))
            except _LineError as e:
                errors.append(_error(e.code, e.message, e.param, n))
            except GatewayError as e:
                errors.append(_error(e.code or e.type, e.message, e.param and f"body.{e.param}", n))
            if len(errors) >= MAX_ERRORS:
                break
        return lines, errors


class _LineError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _new_row(
    bid: str,
    key: ApiKey,
    owner: str,
    endpoint: str,
    window: str,
    meta: dict[str, str] | None,
    file_id: str,
) -> dict[str, Any]:
    now = int(time.time())
    return {
        "id": bid,
        "owner": owner,
        "key_id": key.id,
        "endpoint": endpoint,
        "input_file_id": file_id,
        "completion_window": window,
        "metadata": json.dumps(meta) if meta else None,
        "created_at": now,
        "expires_at": now + WINDOWS[window],
        "lease_until": 0,
        "held_nanos": 0,
    }


def _error(code: str, message: str, param: str | None, line: int | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _parse_request(req: dict[str, Any]) -> tuple[str, str, str, dict[str, str] | None]:
    endpoint = req.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(f"endpoint must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
    window = req.get("completion_window")
    if window not in WINDOWS:
        raise InvalidRequest("completion_window must be '24h'.", param="completion_window")
    file_id = req.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise InvalidRequest("input_file_id is required.", param="input_file_id")
    meta = req.get("metadata")
    if meta is not None and not (
        isinstance(meta, dict)
        and len(meta) <= 16
        and all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
            for k, v in meta.items()
        )
    ):
        raise InvalidRequest(
            "metadata must be an object of at most 16 string values (keys up to 64 "
            "characters, values up to 512).",
            param="metadata",
        )
    return endpoint, window, file_id, meta


def _parse_line(raw: bytes, endpoint: str) -> tuple[str, dict[str, Any]]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _LineError("invalid_json_line", "This line is not parseable as valid JSON.") from None
    if not isinstance(obj, dict):
        raise _LineError("invalid_json_line", "Each line must be a JSON object.")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 512:
        raise _LineError(
            "missing_required_parameter",
            "Each request needs a custom_id: a string of 1 to 512 characters.",
            "custom_id",
        )
    if obj.get("method", "POST") != "POST":
        raise _LineError("invalid_method", "The method of a batch request must be POST.", "method")
    if obj.get("url") != endpoint:
        raise _LineError(
            "mismatched_endpoint",
            f"The url of this request ({obj.get('url')!r}) does not match the batch's "
            f"endpoint {endpoint}.",
            "url",
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        raise _LineError("missing_required_parameter", "Each request needs a body object.", "body")
    return custom_id, body


async def _file_lines(files: FileStore, file_id: str) -> AsyncIterator[tuple[int, bytes]]:
    """A stored file's lines, a chunk read on a thread at a time."""
    seq, rest, n = 0, b"", 0
    while True:
        data = await asyncio.to_thread(files.chunk, file_id, seq)
        if data is None:
            break
        seq += 1
        parts = (rest + data).split(b"\n")
        rest = parts.pop()
        for p in parts:
            n += 1
            if p.strip():
                yield n, p
    if rest.strip():
        yield n + 1, rest


def _refusal(s: Shortfall, worst: int, key: ApiKey, svc: Services) -> InsufficientQuota:
    org = svc.accounts.org_of(key)
    cur = org.currency.value if org is not None else ""
    left = f"{units(max(s.available, 0))} {cur}"
    return InsufficientQuota(
        f"{'Budget exceeded' if s.budget else 'Insufficient funds'}: {s.what} has {left} "
        f"available and this batch may cost up to {units(worst)} {cur} at batch prices. "
        "Nothing was held or run."
    )
