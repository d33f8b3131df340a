"""Each video deployment's queue as last read, and the fair order replayed over it:
every waiting job's place and expected times, and the figures ``GET /v1/queue`` shows.

Made again about every quarter second by the worker's housekeeping, and on demand for a
job the plan has not seen; a long queue (its plan slow to make) less often.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from typing import Any

from tokenomy.config import VideosConfig
from tokenomy.store.videos import VideoStore
from tokenomy.videos.models import VideoModel, VideoModels
from tokenomy.videos.plan import Running, Slot, Waiting, moving_rate, percentile, plan

#: Queue waits looked at for the percentiles of ``GET /v1/queue``.
WAIT_WINDOW_MS = 3_600_000


class QueuePlan:
    """One deployment's queue as last read: each waiting job's slot, and the figures
    ``GET /v1/queue`` shows."""

    def __init__(self, m: VideoModel, at_ms: float, rate: float) -> None:
        self.model = m
        self.at_ms = at_ms
        #: Seconds the refresh took: a long queue is read again less often.
        self.cost_s = 0.0
        self.rate = rate  # render ms per output second
        self.slots: dict[str, Slot] = {}
        self.starts: list[float] = []  # the slots' expected starts, in order
        self.ends: dict[str, float] = {}  # running jobs' expected end
        self.depth = 0
        self.running = 0
        self.oldest_ms: int | None = None
        self.waits_ms: list[int] = []


class QueueView:
    def __init__(self, store: VideoStore, models: VideoModels, settings: VideosConfig) -> None:
        self.store = store
        self.models = models
        self.s = settings
        self.plans: dict[str, QueuePlan] = {}

    async def refresh_if_stale(self, m: VideoModel) -> None:
        p = self.plans.get(m.id)
        if p is None or self._age_s(p) >= max(0.25, 10 * p.cost_s):
            await self.refresh(m)

    async def refresh(self, m: VideoModel) -> QueuePlan:
        """Read the deployment's queue and replay the fair order over it."""

        def read() -> tuple[Any, ...]:
            now = time.time() * 1000
            waiting, running, last = self.store.queue(m.id)
            measured = self.store.measured(m.id, self.s.measured_window)
            waits = self.store.waits(m.id, int(now) - WAIT_WINDOW_MS)
            return now, waiting, running, last, measured, waits

        began = time.perf_counter()
        now, waiting, running, last, measured, waits = await asyncio.to_thread(read)
        rate = moving_rate(measured, self.s.default_render_ratio * 1000)
        p = QueuePlan(m, now, rate)
        ws = [Waiting(*w) for w in waiting]
        rs = [Running(*r) for r in running]
        p.slots = plan(ws, rs, last, m.capacity, rate, now)
        p.starts = sorted(s.start_ms for s in p.slots.values())
        p.ends = {r.id: max(now, r.started_ms + r.seconds * rate) for r in rs}
        p.depth, p.running = len(ws), len(rs)
        p.oldest_ms = min((w.created_ms for w in ws), default=None)
        p.waits_ms = waits
        p.cost_s = time.perf_counter() - began
        self.plans[m.id] = p
        return p

    @staticmethod
    def _age_s(p: QueuePlan) -> float:
        return time.time() - p.at_ms / 1000

    async def slot(self, row: dict[str, Any]) -> tuple[int, float, float] | None:
        """(position, seconds until start, seconds until ready) of a job not ended."""
        if row["status"] not in ("queued", "in_progress"):
            return None
        m = self.models.by_deployment.get(row["deployment"])
        if m is None:
            return None
        p = self.plans.get(m.id)
        # Read again when stale, or for a job the plan has not seen yet; but a long queue
        # (its plan taking over 0.1 s to make) no more often than ten times that.
        if p is None:
            p = await self.refresh(m)
        else:
            known = row["id"] in p.slots or row["id"] in p.ends
            age = self._age_s(p)
            floor = 10 * p.cost_s if p.cost_s > 0.1 else 0.0
            if age >= max(1.0, floor) or (not known and age >= floor):
                p = await self.refresh(m)
        now = time.time() * 1000
        s = p.slots.get(row["id"])
        if s is not None:
            # The jobs expected to have started since the plan was made are ahead no more.
            position = max(1, s.position - bisect.bisect_left(p.starts, now))
            return position, (s.start_ms - now) / 1000, (s.end_ms - now) / 1000
        end = p.ends.get(row["id"])
        if end is not None:
            return 0, 0.0, (end - now) / 1000
        return None

    def queue_json(self) -> list[dict[str, Any]]:
        """Each video model's queue: depth, running, oldest age, wait percentiles."""
        now = time.time() * 1000
        data = []
        for m in self.models:
            p = self.plans.get(m.id)
            if p is None:
                continue
            waits = [w / 1000 for w in p.waits_ms]
            p50, p95 = percentile(waits, 0.5), percentile(waits, 0.95)
            data.append(
                {
                    "object": "queue.model",
                    "model": m.name,
                    "deployment": m.id,
                    "capacity": m.capacity,
                    "max_depth": m.max_queue_depth,
                    "depth": p.depth,
                    "running": p.running,
                    "oldest_age_seconds": round((now - p.oldest_ms) / 1000, 3)
                    if p.oldest_ms is not None
                    else 0.0,
                    "wait_p50_seconds": None if p50 is None else round(p50, 3),
                    "wait_p95_seconds": None if p95 is None else round(p95, 3),
                    "render_seconds_per_second": round(p.rate / 1000, 4),
                    "as_of": int(p.at_ms // 1000),
                }
            )
        return data

    def retry_after(self, m: VideoModel) -> float:
        """Seconds until the deployment is likely to take another job."""
        p = self.plans.get(m.id)
        rate = p.rate if p is not None else self.s.default_render_ratio * 1000
        return max(1.0, rate * m.default_seconds / 1000 / m.capacity)
