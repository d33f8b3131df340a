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
from array import array
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from tokenomy.batches.file_lines import file_lines, file_lines_blocking
from tokenomy.batches.holds import LineHolds
from tokenomy.batches.native import PARKED_MS, PLANNED, native_target
from tokenomy.batches.objects import ENDPOINTS, WINDOWS, line_request_id, new_batch_id
from tokenomy.batches.schedule import Groups, Planner
from tokenomy.billing.call_pricing import BYTES_PER_TOKEN, units
from tokenomy.billing.money import Currency
from tokenomy.core.call import Call
from tokenomy.core.errors import GatewayError, InsufficientQuota, InvalidRequest, NotFound
from tokenomy.core.keys import ApiKey
from tokenomy.ledger.live import Hold, Shortfall
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

#: Lines per second a batch is planned at before the worker has measured any.
DEFAULT_LINES_PER_S = 2.0


@dataclass(slots=True)
class _Checked:
    """What checking a batch's lines keeps: a few integers per line, never the bodies
    (they are read again from their source when stored), so memory stays flat."""

    line_nos: array[int] = field(default_factory=lambda: array("q"))
    amounts: array[int] = field(default_factory=lambda: array("q"))
    tokens: array[int] = field(default_factory=lambda: array("q"))
    groups: Groups = field(default_factory=Groups)

    def __len__(self) -> int:
        return len(self.line_nos)


#: A source of a batch's lines as ``(line number, raw JSON)``, readable more than once:
#: once to check them (async, off the event loop's thread for I/O), once to store them
#: (blocking, on the storing thread).
@dataclass(frozen=True, slots=True)
class _Source:
    read: Callable[[], AsyncIterator[tuple[int, bytes]]]
    read_blocking: Callable[[], Iterator[tuple[int, bytes]]]


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
        self.planner = Planner(svc.pricer, svc.router.regions)
        #: The clock batches are created and planned by (tests give a fake one).
        self.clock: Callable[[], float] = time.time
        #: (measured lines per second, lines already waiting): set by the worker.
        self.pace: Callable[[], tuple[float, int]] = lambda: (DEFAULT_LINES_PER_S, 0)

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
        row = _new_row(new_batch_id(), key, owner, endpoint, window, meta, file_id, self.clock())
        fid = f.id
        source = _Source(
            lambda: file_lines(self.files, fid),
            lambda: file_lines_blocking(self.files, fid),
        )
        checked, errors = await self._check(source.read(), key, endpoint, row["created_at"])
        if errors or not checked:
            if not checked and not errors:
                errors = [_error("empty_file", "The input file has no requests.", None, None)]
            row.update(
                status="failed", failed_at=row["created_at"], total=0, errors=json.dumps(errors)
            )
            await asyncio.to_thread(self.store.create, row, ())
            return row
        await self._hold_and_store(row, key, checked, source)
        return row

    async def create_inline(
        self, key: ApiKey, owner: str, requests: list[dict[str, Any]], batch_id: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A batch of requests given inline (Anthropic's Message Batches), as
        ``{custom_id, params}``: its row (stored only when every request is good) and
        the errors, by request number from 1."""
        endpoint = "/v1/messages"

        def lines() -> Iterator[tuple[int, bytes]]:
            for i, r in enumerate(requests, 1):
                if not isinstance(r, dict):
                    yield i, b"[]"
                    continue
                line = {"custom_id": r.get("custom_id"), "url": endpoint, "body": r.get("params")}
                yield i, orjson.dumps(line)

        async def read() -> AsyncIterator[tuple[int, bytes]]:
            for x in lines():
                yield x

        row = _new_row(batch_id, key, owner, endpoint, "24h", None, "", self.clock())
        found, errors = await self._check(read(), key, endpoint, row["created_at"])
        if not errors:
            await self._hold_and_store(row, key, found, _Source(read, lines))
        return row, errors

    async def _hold_and_store(
        self, row: dict[str, Any], key: ApiKey, checked: _Checked, source: _Source
    ) -> None:
        """Plan the batch, hold every line's worst case (402 if it cannot be covered)
        and store the batch."""
        bid, now = row["id"], row["created_at"]
        created_ms = now * 1000
        org = self.svc.accounts.org_of(key)
        rate, backlog = self.pace()
        native = native_target(self.svc, checked.groups, row["endpoint"])
        plan = self.planner.plan(
            checked.groups,
            org.currency if org is not None else Currency.USD,
            self.clock(),
            row["expires_at"],
            rate,
            backlog,
            # A vendor's batch has its own 24-hour window from its submission: handed
            # over later, it could end past ours.
            wait=native is None,
        )
        # A line scheduled for later carries its planned start as its lease: no process
        # claims it before then, and claims take lines in that order.
        not_before = plan.start * 1000 if plan.start > now else 0
        if native is not None:
            # Parked: handed whole to the vendor's batch API (at once).
            not_before = PARKED_MS
            dep, api = native
            row["vendor_batch"] = json.dumps(
                {"status": PLANNED, "vendor": dep.vendor.key, "deployment": dep.id, "api": api}
            )

        def holds() -> Iterator[Hold]:
            for n, amount, tokens in zip(
                checked.line_nos, checked.amounts, checked.tokens, strict=True
            ):
                h = self.holds.hold_for(
                    key,
                    line_request_id(bid, n),
                    amount,
                    tokens,
                    created_ms,
                    row["expires_at"],
                )
                if h is not None:
                    yield h

        try:
            await self.holds.make(holds)
        except Shortfall as s:
            raise _refusal(s, sum(checked.amounts), key, self.svc) from None
        row.update(
            status="in_progress",
            in_progress_at=now,
            total=len(checked),
            held_nanos=sum(checked.amounts) if org is not None else 0,
            plan=json.dumps(plan.as_json()),
        )
        endpoint = row["endpoint"]

        def stored() -> Iterator[dict[str, Any]]:
            kept = zip(checked.line_nos, checked.amounts, checked.tokens, strict=True)
            for (n, raw), (line_no, amount, tokens) in zip(
                source.read_blocking(), kept, strict=True
            ):
                assert n == line_no, "the source changed between checking and storing"
                custom_id, body = _parse_line(raw, endpoint)
                body["service_tier"] = BATCH_TIER
                yield {
                    "batch_id": bid,
                    "line_no": n,
                    "request_id": line_request_id(bid, n),
                    "custom_id": custom_id,
                    "body": orjson.dumps(body).decode(),
                    "state": PENDING,
                    "lease_until": not_before,
                    "attempts": 0,
                    "held_nanos": amount if org is not None else 0,
                    "held_tokens": tokens,
                }

        try:
            await asyncio.to_thread(self.store.create, row, stored())
        except BaseException:
            await self.holds.release(holds())
            raise

    async def _check(
        self, source: AsyncIterator[tuple[int, bytes]], key: ApiKey, endpoint: str, now: int
    ) -> tuple[_Checked, list[dict[str, Any]]]:
        checked = _Checked()
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        build = self.builders[endpoint]
        org = self.svc.accounts.org_of(key)
        at = datetime.fromtimestamp(now, UTC)
        pricer, pipeline = self.svc.pricer, self.svc.pipeline
        cap = self.svc.config.server.default_max_output_tokens
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
                pipeline.route(call)
                deps = pipeline.candidates(call)
                amount, tokens = 0, 0
                bound = pricer.prompt_bound(call)
                if org is not None:
                    amount, tokens = pricer.worst(call, deps, org.currency, bound, cap, at)
                if not errors:
                    out = pricer.max_output(call, deps[0], cap) * call.choices() if deps else 0
                    checked.groups.add(call.model, deps, bound // BYTES_PER_TOKEN, out)
                    checked.line_nos.append(n)
                    checked.amounts.append(amount)
                    checked.tokens.append(tokens)
            except _LineError as e:
                errors.append(_error(e.code, e.message, e.param, n))
            except GatewayError as e:
                errors.append(_error(e.code or e.type, e.message, e.param and f"body.{e.param}", n))
            if len(errors) >= MAX_ERRORS:
                break
        return checked, errors


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
    clock_s: float,
) -> dict[str, Any]:
    now = int(clock_s)
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


def _refusal(s: Shortfall, worst: int, key: ApiKey, svc: Services) -> InsufficientQuota:
    org = svc.accounts.org_of(key)
    cur = org.currency.value if org is not None else ""
    left = f"{units(max(s.available, 0))} {cur}"
    return InsufficientQuota(
        f"{'Budget exceeded' if s.budget else 'Insufficient funds'}: {s.what} has {left} "
        f"available and this batch may cost up to {units(worst)} {cur} at batch prices. "
        "Nothing was held or run."
    )
