"""The dashboard's video queue panel: jobs waiting, and queue-wait percentiles, over time.

Read from the jobs themselves (``video_jobs``: submitted, started, ended), so the history
needs no sampler: the depth at the end of a bucket is the jobs submitted by then and not
yet started (nor cancelled) by then; a bucket's waits are those of the jobs it started.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, or_, select

from tokenomy.analytics import charts
from tokenomy.analytics.formatting import compact
from tokenomy.analytics.queries import Scope
from tokenomy.store.schema import video_jobs

_J = video_jobs.c


@dataclass(slots=True)
class VideoQueueHistory:
    depth: dict[str, dict[int, float | None]] = field(default_factory=dict)  # per model
    wait_p50: dict[int, float | None] = field(default_factory=dict)  # seconds
    wait_p95: dict[int, float | None] = field(default_factory=dict)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]  # nearest rank


def video_queue_history(
    engine: Engine, buckets: Sequence[int], size_ms: int, scope: Scope
) -> VideoQueueHistory:
    """Per bucket (its start in ``buckets``, ``size_ms`` long): depth at its end, by model,
    and the p50 and p95 waits of the jobs it started."""
    out = VideoQueueHistory()
    if not buckets:
        return out
    start, end = buckets[0], buckets[-1] + size_ms
    q = select(_J.model, _J.created_ms, _J.started_ms, _J.completed_ms, _J.status).where(
        _J.created_ms < end,
        or_(_J.started_ms.is_(None), _J.started_ms >= start),
    )
    if scope.key_id is not None:
        q = q.where(_J.key_id == scope.key_id)
    if scope.org_id is not None:
        q = q.where(_J.owner == scope.org_id)
    with engine.connect() as conn:
        rows = list(conn.execute(q))
    n = len(buckets)
    diffs: dict[str, list[int]] = {}
    waits: dict[int, list[float]] = {}
    for model, created, started, ended, status in rows:
        # In the queue from ``created`` until it started (or, cancelled, until it ended):
        # counted in bucket i when there at the bucket's end, start + (i + 1) * size.
        left = started if started is not None else (ended if status == "cancelled" else None)
        first = max(0, -(-(created - start) // size_ms) - 1)
        last = n if left is None else min(n, max(0, -(-(left - start) // size_ms) - 1))
        if first < last:
            d = diffs.setdefault(model, [0] * (n + 1))
            d[first] += 1
            d[last] -= 1
        if started is not None and start <= started < end:
            b = buckets[min(n - 1, (started - start) // size_ms)]
            waits.setdefault(b, []).append((started - created) / 1000)
    for model, d in diffs.items():
        running = 0
        series: dict[int, float | None] = {}
        for i, b in enumerate(buckets):
            running += d[i]
            series[b] = float(running)
        out.depth[model] = series
    for b in buckets:
        out.wait_p50[b] = _quantile(waits.get(b, []), 0.5)
        out.wait_p95[b] = _quantile(waits.get(b, []), 0.95)
    return out


def _seconds(v: float) -> str:
    return f"{v:.0f} s" if v >= 10 else f"{v:.1f} s"


def video_queue_charts(h: VideoQueueHistory, buckets: Sequence[int], hourly: bool) -> str:
    """The panel's two charts and their legends (SVG and HTML)."""
    depth = sorted(h.depth.items())
    waits: list[tuple[str, dict[int, float | None]]] = [
        ("wait p50", h.wait_p50),
        ("wait p95", h.wait_p95),
    ]
    return (
        charts.lines("Video jobs waiting", buckets, depth, compact, hourly=hourly)
        + charts.legend([m for m, _ in depth])
        + charts.lines("Video queue wait", buckets, waits, _seconds, hourly=hourly)
        + charts.legend([n for n, _ in waits])
    )
