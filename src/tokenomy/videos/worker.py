"""The video worker: every gateway process runs one; they share the queue through leases.

For each video model, while its deployment renders fewer jobs than its capacity (every
process's together, counted in the database), the worker claims the next job in fair
turns across owners, submits it to the vendor (or resumes the vendor's job after a
crash), polls it, renewing its lease, and downloads the media. The media is recorded
with the job's usage record and ledger rows in one transaction, keyed by the job id, so
a job is billed once however often it is rendered; a job with media is never rendered
again. A housekeeping loop queues again the jobs of dead processes, fails those out of
tries, releases the holds of failed and cancelled jobs (once: a conditional UPDATE of
``hold_open``), and keeps each deployment's queue plan (``queue_view``) up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from tokenomy.aio import stop_worker
from tokenomy.batches.holds import LineHolds
from tokenomy.billing.call_pricing import Charge
from tokenomy.billing.media_prices import media_cost
from tokenomy.billing.money import Currency
from tokenomy.config import VideosConfig
from tokenomy.core.call import Call
from tokenomy.core.keys import ApiKey
from tokenomy.core.usage import Usage
from tokenomy.gateway.records import EXTRA_ROWS
from tokenomy.ledger.live import Hold, Shortfall
from tokenomy.ledger.stage import LEDGER, CallLedger
from tokenomy.providers.videos import UpstreamVideo, VideoClient, VideoUpstreamError
from tokenomy.store.schema import video_outputs
from tokenomy.store.videos import FAILED, VideoStore
from tokenomy.videos.models import VideoModel, VideoModels
from tokenomy.videos.plan import next_owner
from tokenomy.videos.queue_view import QueueView

if TYPE_CHECKING:
    from tokenomy.services import Services

log = logging.getLogger(__name__)


class _Lost(Exception):
    """The job's lease lapsed and another process took it."""


class VideoWorker:
    def __init__(
        self,
        svc: Services,
        store: VideoStore,
        models: VideoModels,
        holds: LineHolds,
        settings: VideosConfig,
        client: VideoClient,
    ) -> None:
        self.svc = svc
        self.store = store
        self.models = models
        self.holds = holds
        self.s = settings
        self.client = client
        #: Each deployment's queue plan: places, ETAs and the figures of ``GET /v1/queue``.
        self.view = QueueView(store, models, settings)
        self._tasks: list[asyncio.Task[None]] = []
        self._renders: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._local: dict[str, int] = {}  # renders of this process per deployment
        #: Jobs this process ended (completed or failed), and every process's counts.
        self.done = 0
        self.counts: dict[str, int] = {}
        self.oldest_queued_ms: int | None = None
        self._sweeps = 0

    # -- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._retake_holds()
        for m in self.models:
            await self.view.refresh(m)
        if any(True for _ in self.models):
            self._tasks.append(asyncio.create_task(self._dispatch(), name="video-dispatch"))
            self._tasks.append(asyncio.create_task(self._housekeeping(), name="video-house"))

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop claiming; renders still running after ``grace_s`` are dropped (their
        lease lapses and another process resumes them)."""
        await stop_worker(self._tasks, self._renders, grace_s)
        await self.client.close()

    def wake(self) -> None:
        self._wake.set()

    async def _retake_holds(self) -> None:
        """Holds in this process's memory are lost with it: hold again those of jobs not
        yet ended (in Redis they outlive any process)."""
        if not self.holds.in_memory:
            return
        try:
            rows = await asyncio.to_thread(self.store.open_holds)
        except Exception:
            log.exception("reading the open video holds failed")
            return
        for r in rows:
            hold = await self._hold(r)
            if hold is not None:
                with contextlib.suppress(Shortfall):
                    await self.holds.live.hold(hold)

    async def _key(self, key_id: str) -> ApiKey | None:
        key = self.svc.key_cache.by_id(key_id)
        if key is not None:
            return key
        got = await asyncio.to_thread(self.svc.keys.get, key_id)
        return got[1] if got is not None else None

    async def _hold(self, row: dict[str, Any]) -> Hold | None:
        key = await self._key(row["key_id"])
        if key is None:
            return None
        expires = row["created_ms"] // 1000 + self.s.hold_ttl_s
        return self.holds.hold_for(key, row["id"], row["held_nanos"], 0, row["created_ms"], expires)

    # -- claiming ------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        lease_ms = int(self.s.lease_s * 1000)
        while True:
            self._wake.clear()
            for m in self.models:
                while self._local.get(m.id, 0) < m.capacity:
                    try:
                        now = int(time.time() * 1000)
                        job = await asyncio.to_thread(
                            self.store.claim, m.id, m.capacity, now, lease_ms, next_owner
                        )
                    except Exception:
                        log.exception("claiming a video job failed")
                        job = None
                    if job is None:
                        break
                    self._local[m.id] = self._local.get(m.id, 0) + 1
                    task = asyncio.create_task(self._run(m, job), name=job["id"])
                    self._renders.add(task)
                    task.add_done_callback(self._renders.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.s.poll_s)

    async def _run(self, m: VideoModel, job: dict[str, Any]) -> None:
        try:
            await self._render(m, job)
        except _Lost:
            log.info("video job %s: lease lost to another process", job["id"])
        except Exception:
            log.exception("video job %s failed", job["id"])
        finally:
            self._local[m.id] -= 1
            self._wake.set()  # a slot is free: claim the next job now, not at the next poll

    # -- rendering -----------------------------------------------------------------------

    async def _renew(self, job: dict[str, Any], **values: Any) -> None:
        until = int((time.time() + self.s.lease_s) * 1000)
        if not await asyncio.to_thread(
            self.store.renew, job["id"], job["attempts"], until, **values
        ):
            raise _Lost

    async def _upstream(self, m: VideoModel, job: dict[str, Any]) -> UpstreamVideo:
        """The vendor's job: the one a dead process started, else a new one."""
        v = m.deployment.vendor
        if job["upstream_id"]:
            try:
                return await self.client.retrieve(v, job["upstream_id"])
            except VideoUpstreamError as e:
                if e.code != "upstream_not_found":
                    raise
        up = await self.client.create(
            v, m.deployment.upstream_model, job["prompt"], job["seconds"], job["size"]
        )
        await self._renew(job, upstream_id=up.id)
        return up

    async def _render(self, m: VideoModel, job: dict[str, Any]) -> None:
        v = m.deployment.vendor
        key = await self._key(job["key_id"])
        if key is None or not key.active:  # revoked while it waited: never rendered
            revoked = VideoUpstreamError(
                "The job's API key was revoked.", retry=False, code="invalid_api_key"
            )
            await self._failed(job, revoked)
            return
        # The lease and progress are written at most this often, not at every poll.
        every = min(self.s.lease_s / 3, 0.5)
        try:
            up = await self._upstream(m, job)
            renewed = time.monotonic()
            while up.status not in ("completed", "failed"):
                await asyncio.sleep(self.s.upstream_poll_s)
                up = await self.client.retrieve(v, up.id)
                if time.monotonic() - renewed >= every:
                    await self._renew(job, progress=min(max(up.progress, 0), 99))
                    renewed = time.monotonic()
            if up.status == "failed":
                err = up.error or {}
                raise VideoUpstreamError(
                    str(err.get("message") or "The vendor failed the job."),
                    retry=False,
                    code=str(err.get("code") or "video_failed"),
                )
            content_type, data = await self.client.content(v, up.id)
        except VideoUpstreamError as e:
            await self._failed(job, e)
            return
        await self._record(m, job, content_type, data)

    async def _failed(self, job: dict[str, Any], e: VideoUpstreamError) -> None:
        tries = self.s.max_attempts if e.retry else job["attempts"]
        if job["attempts"] < tries:
            # A vendor failing now may not in a moment: wait before the job is queued
            # again (holding its slot, which the failing vendor could not use anyway).
            await asyncio.sleep(min(2.0 ** job["attempts"], self.s.lease_s / 3))
        error = orjson.dumps({"code": e.code, "message": str(e)}).decode()
        status = await asyncio.to_thread(
            self.store.retry_or_fail, job["id"], job["attempts"], tries, error,
            int(time.time() * 1000),
        )  # fmt: skip
        if status == FAILED:
            self.done += 1
            await self._release(job)

    async def _release(self, row: dict[str, Any]) -> None:
        """Release a failed or cancelled job's hold, once."""
        if not await asyncio.to_thread(self.store.take_release, row["id"]):
            return
        hold = await self._hold(row)
        if hold is not None:
            await self.holds.release([hold])

    async def _record(
        self, m: VideoModel, job: dict[str, Any], content_type: str, data: bytes
    ) -> None:
        """Bill the job and keep its media, in one transaction; then mark it completed."""
        now_ms = int(time.time() * 1000)
        key = await self._key(job["key_id"])
        if key is None:
            raise _Lost  # the key is gone: nothing to bill; the hold lapses with its ttl
        at = datetime.fromtimestamp(job["created_ms"] / 1000, UTC)
        price = self.models.prices.lookup(*m.price_ref, at)
        cur = Currency(job["currency"]) if job["currency"] else price.currency
        cost = media_cost(price, job["size"], job["seconds"], cur, self.svc.pricer.fx, at)
        call = Call(
            endpoint="videos", dialect="openai", body={}, model=job["model"], stream=False,
            key=key, request_id=job["id"], ts_ms=now_ms,
        )  # fmt: skip
        call.deployment = m.deployment
        call.usage = Usage()
        ledger = CallLedger(self.svc.accounts.org_of(key))
        ledger.charge = Charge(
            cost_nanos=cost.cost_nanos,
            currency=cost.currency,
            list_cost_nanos=cost.list_cost_nanos,
            list_currency=cost.list_currency,
            price_version=price.id,
            fx_rate=cost.fx_rate,
            held_nanos=job["held_nanos"],
            tier="video",
        )
        # Settled by this render only if no earlier one settled it (then it was lost
        # before its record was written): the record is written either way, once.
        if job["hold_open"] and await asyncio.to_thread(self.store.take_release, job["id"]):
            hold = await self._hold(job)
            if hold is not None:
                ledger.hold = hold
        call.put(LEDGER, ledger)
        call.stages_passed = [self.svc.ledger_stage]
        output = {
            "job_id": job["id"],
            "content_type": content_type,
            "data": data,
            "cost_nanos": cost.cost_nanos,
            "ts_ms": now_ms,
        }
        call.put(EXTRA_ROWS, [(video_outputs, output)])
        await self.svc.pipeline.finish(call)
        await self.svc.usage_writer.flush()
        # The render slot was busy until now (the record included): what the plan needs.
        done_ms = int(time.time() * 1000)
        values = {
            "completed_ms": done_ms,
            "render_ms": done_ms - (job["started_ms"] or now_ms),
            "cost_nanos": cost.cost_nanos,
            "progress": 100,
            "hold_open": 0,
            "expires_at": done_ms // 1000 + self.s.keep_s,
        }
        if await asyncio.to_thread(self.store.complete, job["id"], values):
            self.done += 1

    # -- housekeeping --------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(0.25)
            tick += 1
            try:
                for m in self.models:
                    await self.view.refresh_if_stale(m)
                if tick % 4 == 0:
                    await self.sweep()
            except Exception:
                log.exception("video housekeeping failed")

    async def sweep(self) -> None:
        now = int(time.time() * 1000)
        await asyncio.to_thread(self.store.finish_recorded, now)
        error = orjson.dumps(
            {"code": "render_lost", "message": "The job's renders were lost too often."}
        ).decode()
        if await asyncio.to_thread(self.store.requeue_lapsed, now, self.s.max_attempts, error):
            self._wake.set()
        for row in await asyncio.to_thread(self.store.unreleased):
            await self._release(row)
        self._sweeps += 1
        if self._sweeps % 60 == 1:  # about once a minute: expired media is deleted
            await asyncio.to_thread(self.store.purge_expired, now // 1000)
        by, oldest = await asyncio.to_thread(self.store.counts)
        self.counts, self.oldest_queued_ms = by, oldest

    def oldest_age_s(self) -> float:
        o = self.oldest_queued_ms
        return max(time.time() - o / 1000, 0.0) if o is not None else 0.0

    def count(self, status: str) -> int:
        return self.counts.get(status, 0)
