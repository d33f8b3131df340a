"""The batch worker: every gateway process runs one; they share the lines through leases.

A few runners (``batches.concurrency``, fewer while interactive calls are being served:
see ``tokenomy.batches.yielding``) each claim a line, run it through the pipeline as an interactive
call would be run (routing, fallbacks, the batch tier of the fair queue and of the
prices, metering, the usage record) and queue its result with its usage record, in
the same database transaction. A housekeeping loop marks recorded lines done, cancels
and expires lines, and writes the result files of a batch whose lines have all ended.

Exactly once: a line's final outcome is recorded under a request id fixed at creation
and the writer skips an id it has already written, so a line run again (its process
killed before marking it done, its lease lapsed) can neither be billed twice nor give
two results; a line whose result is recorded is never claimed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any

import orjson

from tokenomy.aio import stop_worker
from tokenomy.batches.holds import LineHolds
from tokenomy.batches.intake import DEFAULT_LINES_PER_S, Builder
from tokenomy.batches.objects import MESSAGES, result_line, unrun_line
from tokenomy.batches.throughput import Throughput
from tokenomy.batches.yielding import Yielding, YieldSettings
from tokenomy.core.call import Call
from tokenomy.core.errors import GatewayError, InsufficientQuota, Overloaded, RateLimited
from tokenomy.core.keys import ApiKey
from tokenomy.gateway.records import EXTRA_ROWS
from tokenomy.ledger.live import Hold, Shortfall
from tokenomy.ledger.stage import LEDGER, CallLedger
from tokenomy.store.batches import CANCELLED, EXPIRED, BatchStats, BatchStore, ClaimedLine
from tokenomy.store.schema import batch_results

if TYPE_CHECKING:
    from tokenomy.batches.native import NativeBatches
    from tokenomy.services import Services

log = logging.getLogger(__name__)

#: An instant past every lease (a parked line's included).
_EVERY_LEASE = 2**63 - 1

#: Refusals that say "later", not "no": the line is tried again after a pause.
_LATER = (RateLimited, Overloaded)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    concurrency: int = 4
    lease_s: float = 600.0
    poll_s: float = 0.5
    #: How often recorded lines are marked done and batches checked for their end.
    housekeeping_s: float = 0.25
    #: Tries of a line refused with "later" (429, 503) before it fails.
    max_attempts: int = 5
    #: Lines per second batches are planned at before any is measured.
    default_lines_per_s: float = DEFAULT_LINES_PER_S
    #: How the worker narrows while interactive calls are being served.
    yielding: YieldSettings = field(default_factory=YieldSettings)


class BatchWorker:
    def __init__(
        self,
        svc: Services,
        store: BatchStore,
        builders: Mapping[str, Builder],
        holds: LineHolds,
        settings: WorkerSettings,
    ) -> None:
        self.svc = svc
        self.store = store
        self.builders = builders
        self.holds = holds
        self.s = settings
        self._batches: dict[str, dict[str, Any]] = {}
        self._recorded: list[tuple[str, int]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._lines: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        #: Set when a runner is free again.
        self._freed = asyncio.Event()
        #: Runners taken: claiming or running a line.
        self._taken = 0
        #: The width lines run at: narrower while interactive calls are served.
        self.yielding = Yielding(settings.concurrency, settings.yielding, svc.pipeline.traffic)
        #: Lines this process ended with a recorded outcome, and is running (metrics).
        self.lines_run = 0
        self.running = 0
        #: Every process's lines, read from the database by the housekeeping loop.
        self.stats = BatchStats()
        #: The clock lines are claimed, scheduled and expired by (tests give a fake one).
        self.clock: Callable[[], float] = time.time
        self.throughput = Throughput(settings.default_lines_per_s)
        #: Hands batches to vendors' own batch APIs (set when the gateway builds it).
        self.native: NativeBatches | None = None

    async def start(self) -> None:
        await self._retake_holds()
        if self.s.concurrency > 0:
            self._tasks.append(asyncio.create_task(self._dispatch(), name="batch-dispatch"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="batch-housekeeping"))

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop claiming; give the lines running ``grace_s`` to end (the rest are
        cancelled, unrecorded: another process runs them once their lease lapses)."""
        await stop_worker(self._tasks, self._lines, grace_s)
        with contextlib.suppress(Exception):
            await self.mark_recorded()

    async def _retake_holds(self) -> None:
        """Hold again what the unfinished lines of running batches held, when holds live
        in this process's memory: a restarted process has lost them. (In Redis they
        outlive any process, and holding again for a line another replica has just
        settled would hold money that nothing releases.)"""
        if not self.holds.in_memory:
            return
        try:
            active = await asyncio.to_thread(self.store.active)
        except Exception:
            log.exception("reading the running batches failed")
            return
        for b in active:
            if b["status"] != "in_progress":
                continue
            key = await self.key_of(b["key_id"])
            if key is None:
                continue
            # Only lines still to run: one recorded before a crash has been settled. Holds
            # in memory mean one process: no lease, not even a vendor batch's, is anyone
            # else's, so every unrecorded line's hold is taken back.
            for ln in await asyncio.to_thread(self.store.unrecorded, b["id"], _EVERY_LEASE):
                h = self.hold_of(b, key, ln["request_id"], ln["held_nanos"], ln["held_tokens"])
                if h is not None:
                    with contextlib.suppress(Shortfall):
                        await self.holds.live.hold(h)

    def oldest_age_s(self) -> float:
        """Age of the oldest batch still running (0 when none)."""
        first = self.stats.oldest
        return max(self.clock() - first, 0.0) if first is not None else 0.0

    def pace(self) -> tuple[float, int]:
        """(lines per second this process runs, lines every process has waiting): what
        a new batch is planned with."""
        return self.throughput.lines_per_s(), self.stats.queued + self.stats.running

    def wake(self) -> None:
        """A batch was created: look for lines now rather than at the next poll."""
        self._wake.set()

    # -- running lines -----------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Claim a line whenever a runner is free (as many as ``yielding`` allows now);
        when there is no line, look again after ``poll_s`` (or at once when a batch is
        created here). Idle, it only reads."""
        lease_ms = int(self.s.lease_s * 1000)
        while True:
            await self._runner()
            self._taken += 1
            line = None
            try:
                now = int(self.clock() * 1000)
                if await asyncio.to_thread(self.store.has_work, now):
                    claimed = await asyncio.to_thread(self.store.claim, 1, now, lease_ms)
                    line = claimed[0] if claimed else None
            except Exception:
                log.exception("claiming a batch line failed")
            if line is None:
                self._release()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.s.poll_s)
                continue
            task = asyncio.create_task(self._run_line(line), name=line.request_id)
            self._lines.add(task)
            task.add_done_callback(self._lines.discard)

    async def _runner(self) -> None:
        """Wait until a line may be claimed: a runner free within the width allowed now.
        Narrowed, look again every ``tick_s`` (the width grows back with time alone), and
        measure the event loop's lag by how late that wake-up comes."""
        y = self.yielding
        loop = asyncio.get_running_loop()
        while not y.may_claim(self._taken):
            self._freed.clear()
            if not y.narrowed():
                await self._freed.wait()
                continue
            tick = y.s.tick_s
            due = loop.time() + tick
            try:
                await asyncio.wait_for(self._freed.wait(), tick)
            except TimeoutError:
                y.lagged(loop.time() - due)

    def _release(self) -> None:
        self._taken -= 1
        self._freed.set()

    async def _run_line(self, line: ClaimedLine) -> None:
        self.running += 1
        try:
            await self._run(line)
        except Exception:
            log.exception("batch line %s failed", line.request_id)
        finally:
            self.running -= 1
            self._release()

    async def _batch(self, batch_id: str) -> dict[str, Any] | None:
        b = self._batches.get(batch_id)
        if b is None:
            b = await asyncio.to_thread(self.store.get, batch_id)
            if b is not None:
                self._batches[batch_id] = b
        return b

    async def key_of(self, key_id: str) -> ApiKey | None:
        """The batch's key, revoked or not: from the gateway's key cache (which follows
        revocations as they are announced), else from the database."""
        key = self.svc.key_cache.by_id(key_id)
        if key is not None:
            return key
        got = await asyncio.to_thread(self.svc.keys.get, key_id)
        return got[1] if got is not None else None

    async def _run(self, line: ClaimedLine) -> None:
        batch = await self._batch(line.batch_id)
        if batch is None:
            return
        key = await self.key_of(batch["key_id"])
        if key is None:  # the key is gone from the database: nothing to charge it to
            self.result(line, 401, _error_body("invalid_api_key", "The batch's key is gone."))
            return
        hold = self.hold_of(batch, key, line.request_id, line.held_nanos, line.held_tokens)
        if not key.active:
            await self.unrun(line, hold, 401, _error_body("invalid_api_key", "Key revoked."))
            return
        try:
            call = self.builders[batch["endpoint"]](orjson.loads(line.body), key, self.svc)
        except GatewayError as e:
            await self.unrun(line, hold, e.status, orjson.loads(e.openai_body()))
            return
        call.request_id = line.request_id
        await self._serve(call, line, hold)

    def hold_of(
        self, batch: dict[str, Any], key: ApiKey, request_id: str, nanos: int, tokens: int
    ) -> Hold | None:
        return self.holds.hold_for(
            key, request_id, nanos, tokens, batch["created_at"] * 1000, batch["expires_at"]
        )

    async def unrun(self, line: ClaimedLine, hold: Hold | None, status: int, body: Any) -> None:
        """A line that ends before the pipeline: its result, and its hold released."""
        if hold is not None:
            await self.holds.release([hold])
        self.result(line, status, body)

    async def _serve(self, call: Call, line: ClaimedLine, hold: Hold | None) -> None:
        pipeline = self.svc.pipeline
        try:
            if hold is not None:
                try:
                    # Open already (made at creation) or made again after a restart.
                    await self.holds.live.hold(hold)
                except Shortfall:
                    raise InsufficientQuota(
                        "The batch's hold was lost and its funds are now spent elsewhere."
                    ) from None
                # The ledger stage settles it, and holds nothing.
                call.put(LEDGER, CallLedger(self.holds.accounts.org_of(call.key), hold))
            pipeline.route(call)
            outcome = await pipeline.open(call)
            assert outcome.body is not None  # batch lines never stream
            status, out = 200, orjson.loads(outcome.body)
        except _LATER as e:
            if line.attempts < self.s.max_attempts:
                await self._later(call, line, e)
                return
            pipeline.fail(call, e)
            status, out = e.status, _error_of(call, e)
        except GatewayError as e:
            pipeline.fail(call, e)
            status, out = e.status, _error_of(call, e)
        except Exception:
            call.status, call.http_status, call.error_code = "error", 500, "internal_error"
            status, out = 500, _error_body("internal_error", "The gateway hit an internal error.")
        cost = 0
        if status == 200:
            cost = pipeline.quoter.quote(call).cost_nanos
        call.put(EXTRA_ROWS, [(batch_results, self.result_row(line, status, out, cost))])
        await pipeline.finish(call)
        self.lines_run += 1
        self._recorded.append((line.batch_id, line.line_no))

    async def _later(self, call: Call, line: ClaimedLine, e: GatewayError) -> None:
        """A refusal for now: its record gets an id of its own (the line's id is kept
        for its outcome), its hold stays, and the line waits out a pause."""
        ledger = call.get(LEDGER)
        if ledger is not None:
            ledger.hold = None
        call.request_id = f"{line.request_id}~{line.attempts}"
        self.svc.pipeline.fail(call, e)
        await self.svc.pipeline.finish(call)
        pause = min(2.0**line.attempts, 60.0)
        await asyncio.to_thread(
            self.store.release_lease, line.batch_id, line.line_no, pause, self.clock()
        )

    def result_row(self, line: ClaimedLine, status: int, body: Any, cost: int) -> dict[str, Any]:
        return {
            "request_id": line.request_id,
            "batch_id": line.batch_id,
            "line_no": line.line_no,
            "custom_id": line.custom_id,
            "status_code": status,
            "body": orjson.dumps(body).decode(),
            "error": None,
            "cost_nanos": cost,
            "ts_ms": int(self.clock() * 1000),
        }

    def result(self, line: ClaimedLine, status: int, body: Any) -> None:
        """The outcome of a line that never reached the pipeline (nothing to bill)."""
        self.svc.usage_writer.submit_many([(batch_results, self.result_row(line, status, body, 0))])
        self.lines_run += 1
        self.recorded(line)

    def recorded(self, line: ClaimedLine) -> None:
        """The line's outcome is queued with its usage record: marked done once written."""
        self._recorded.append((line.batch_id, line.line_no))

    # -- housekeeping ------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(self.s.housekeeping_s)
            tick += 1
            try:
                touched = await self.mark_recorded()
                every_2s = tick % max(1, int(2 / self.s.housekeeping_s)) == 0
                if touched or every_2s:
                    await self.sweep(everything=tick % 20 == 0)
                if every_2s:
                    now_ms = int(self.clock() * 1000)
                    self.stats = await asyncio.to_thread(self.store.stats, now_ms)
                    # Lines waiting to be claimed: this process ran as fast as it can.
                    self.throughput.sample(self.lines_run, time.monotonic(), self.stats.ready > 0)
                    if self.native is not None:
                        await self.native.tick()
            except Exception:
                log.exception("batch housekeeping failed")

    async def mark_recorded(self) -> bool:
        if not self._recorded:
            return False
        done, self._recorded = self._recorded, []
        # Marked done only once their results (and usage records) are committed.
        await self.svc.usage_writer.flush()
        await asyncio.to_thread(self.store.mark_done, done)
        return True

    async def sweep(self, *, everything: bool = False) -> None:
        """Cancel, expire and finish batches; ``everything`` also marks done the lines a
        killed process recorded but did not mark."""
        now = self.clock()
        for b in await asyncio.to_thread(self.store.active):
            bid = b["id"]
            if everything:
                await asyncio.to_thread(self.store.settle_recorded, bid, int(now * 1000))
            if b["status"] == "cancelling":
                await self._end_lines(b, CANCELLED)
            elif b["expires_at"] is not None and now >= b["expires_at"]:
                if b["expired_at"] is None:
                    await asyncio.to_thread(
                        self.store.transition, bid, ["in_progress"], {"expired_at": int(now)}
                    )
                    b["expired_at"] = int(now)
                await self._end_lines(b, EXPIRED)
            if not await asyncio.to_thread(self.store.any_pending, bid):
                await self._finalize(b)

    async def _end_lines(self, batch: dict[str, Any], state: str) -> None:
        """End the lines nobody is running and release their holds."""
        ended = await asyncio.to_thread(
            self.store.end_pending, batch["id"], state, int(self.clock() * 1000)
        )
        if not ended:
            return
        key = await self.key_of(batch["key_id"])
        if key is None:
            return
        made = (
            self.hold_of(batch, key, ln["request_id"], ln["held_nanos"], ln["held_tokens"])
            for ln in ended
        )
        holds = [h for h in made if h is not None]
        await self.holds.release(holds)

    async def _finalize(self, batch: dict[str, Any]) -> None:
        now = int(self.clock())
        taken = await asyncio.to_thread(
            self.store.take_finalizing, batch["id"], now * 1000, int(self.s.lease_s * 1000), now
        )
        if not taken:
            return
        if batch["status"] == "cancelling":
            status = "cancelled"
        elif batch.get("expired_at") is not None:
            status = "expired"
        else:
            status = "completed"
        await asyncio.to_thread(self._write_files, batch, status, now)
        self._batches.pop(batch["id"], None)

    def _write_files(self, batch: dict[str, Any], status: str, now: int) -> None:
        bid = batch["id"]
        if batch["endpoint"] == MESSAGES:  # Anthropic's results are read from the table
            self.store.finalize(batch, status, now, iter(()), iter(()))
            return
        # Read a page at a time, written a chunk at a time: never the whole file in memory.
        output = (result_line(r) for r in self.store.results(bid) if r["status_code"] == 200)
        failed = (result_line(r) for r in self.store.results(bid) if r["status_code"] != 200)
        unrun = (unrun_line(ln) for ln in self.store.ended_lines(bid))
        self.store.finalize(batch, status, now, output, chain(failed, unrun))


def _error_of(call: Call, e: GatewayError) -> Any:
    """The error body the line's client dialect expects."""
    return orjson.loads(e.anthropic_body() if call.dialect == "anthropic" else e.openai_body())


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }
