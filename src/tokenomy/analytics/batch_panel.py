"""The dashboard's batch panel: queue depth and waits over time, batch spend and savings.

Read from the job store, not the rollups: batches (their creation, end, size and plan)
and their lines' results (when each ended and what it cost). Per bucket: the peak of
lines waiting (at the bucket's start and at each batch created in it), and the 50th,
90th and 99th percentiles of the wait of the lines that ended in it (from their batch's
creation to their result: time in line, scheduled delay included). The saving of a
batch is its spend times its plan's ratio of interactive price now to batch price at
the planned time (an estimate, as the plan is); a batch without a plan saves nothing.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from decimal import Decimal
from html import escape
from typing import Any

from sqlalchemy import Engine, func, select

from tokenomy.analytics import charts
from tokenomy.analytics.formatting import compact, money_map
from tokenomy.analytics.queries import EVERYONE, Scope
from tokenomy.store.schema import batch_results, batches

#: The most batches (newest first) a panel reads.
MAX_BATCHES = 2000
_ENDS = ("completed_at", "cancelled_at", "expired_at", "failed_at")


@dataclass
class BatchPanel:
    depth: dict[int, float] = field(default_factory=dict)
    waits: list[tuple[str, dict[int, float | None]]] = field(default_factory=list)
    spend: dict[str, int] = field(default_factory=dict)  # by currency
    saved: dict[str, int] = field(default_factory=dict)
    lines: int = 0
    recent: list[dict[str, Any]] = field(default_factory=list)


def collect(
    engine: Engine, start_ms: int, end_ms: int, buckets: list[int], scope: Scope = EVERYONE
) -> BatchPanel:
    t = batches.c
    q = select(batches).where(t.created_at * 1000 < end_ms)
    if scope.key_id is not None:
        q = q.where(t.key_id == scope.key_id)
    if scope.org_id is not None:
        q = q.where(t.owner == scope.org_id)
    ended = func.coalesce(*(t[c] for c in _ENDS))
    q = q.where((ended.is_(None)) | (ended * 1000 >= start_ms))
    q = q.order_by(t.created_at.desc()).limit(MAX_BATCHES)
    panel = BatchPanel()
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q)]
        ids = [r["id"] for r in rows]
        r = batch_results.c
        done: dict[str, list[tuple[int, int]]] = {i: [] for i in ids}
        for i in range(0, len(ids), 500):
            rq = select(r.batch_id, r.ts_ms, r.cost_nanos).where(r.batch_id.in_(ids[i : i + 500]))
            for bid, ts, cost in conn.execute(rq):
                done[bid].append((int(ts), int(cost)))
    size = buckets[1] - buckets[0] if len(buckets) > 1 else end_ms - start_ms
    ends = {b["id"]: _end_ms(b) for b in rows}
    stamps = {bid: sorted(ts for ts, _ in d) for bid, d in done.items()}

    def depth_at(at: int) -> int:
        n = 0
        for b in rows:
            end = ends[b["id"]]
            # Stamps are whole seconds: a batch ended in the second it began still waited.
            if b["created_at"] * 1000 <= at and (end is None or end >= at):
                n += max(b["total"] - bisect.bisect_right(stamps[b["id"]], at), 0)
        return n

    waits: dict[int, list[float]] = {}
    for b in rows:
        created = b["created_at"] * 1000
        plan = json.loads(b["plan"]) if b.get("plan") else None
        cur = plan["currency"] if plan else "USD"
        spent = 0
        for ts, cost in done[b["id"]]:
            if start_ms <= ts < end_ms:
                spent += cost
                panel.lines += 1
                waits.setdefault(_bucket(ts, buckets, size), []).append((ts - created) / 1000)
        panel.spend[cur] = panel.spend.get(cur, 0) + spent
        panel.saved[cur] = panel.saved.get(cur, 0) + _saving(spent, plan)
    for bk in buckets:
        instants = [bk] + [
            b["created_at"] * 1000 for b in rows if bk <= b["created_at"] * 1000 < bk + size
        ]
        peak = max(depth_at(at) for at in instants)
        if peak:
            panel.depth[bk] = float(peak)
    for name, q_ in (("wait p50", 0.5), ("wait p90", 0.9), ("wait p99", 0.99)):
        panel.waits.append((name, {bk: _quantile(v, q_) for bk, v in waits.items()}))
    for b in rows[:8]:
        plan = json.loads(b["plan"]) if b.get("plan") else None
        spent = sum(c for _, c in done[b["id"]])
        cur = plan["currency"] if plan else "USD"
        panel.recent.append(
            {
                "id": b["id"],
                "status": b["status"],
                "lines": f"{len(done[b['id']])}/{b['total']}",
                "spend": money_map({cur: spent}),
                "saved": money_map({cur: _saving(spent, plan)}),
            }
        )
    return panel


def _end_ms(b: dict[str, Any]) -> int | None:
    for c in _ENDS:
        if b.get(c) is not None:
            return int(b[c]) * 1000
    return None


def _bucket(ts: int, buckets: list[int], size: int) -> int:
    i = bisect.bisect_right(buckets, ts) - 1
    return buckets[max(i, 0)] if buckets else ts - ts % size


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(int(q * len(s)), len(s) - 1)]


def _saving(spent: int, plan: dict[str, Any] | None) -> int:
    """What the spend would have cost at interactive prices now, less the spend."""
    if not plan or not spent:
        return 0
    expected = Decimal(plan["expected_cost"])
    now = Decimal(plan["cost_now_interactive"])
    if expected <= 0:
        return 0
    return max(int(spent * now / expected) - spent, 0)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render(panel: BatchPanel, buckets: list[int], hourly: bool) -> str:
    """The panel as a dashboard card."""
    if not panel.lines and not panel.depth:
        body = '<p class="empty-note">No batches in this range</p>'
        return _section(body)
    depth = charts.stacked_bars(
        "Batch lines waiting (peak)", buckets, [("lines waiting", panel.depth)], compact,
        hourly=hourly,
    )  # fmt: skip
    waits = charts.lines("Batch line waits", buckets, panel.waits, duration, hourly=hourly)
    big = (
        f'<p class="big">{escape(money_map(panel.saved))} saved<span>'
        f"{escape(money_map(panel.spend))} spent on {compact(panel.lines)} batch lines"
        " · against the same lines at interactive prices</span></p>"
    )
    rows = "".join(
        f"<tr><td>{escape(r['id'])}</td><td>{escape(r['status'])}</td>"
        f'<td class="num">{escape(r["lines"])}</td><td class="num">{escape(r["spend"])}</td>'
        f'<td class="num">{escape(r["saved"])}</td></tr>'
        for r in panel.recent
    )
    table = (
        '<table><thead><tr><th>batch</th><th>status</th><th class="num">lines</th>'
        '<th class="num">spend</th><th class="num">saved</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )
    body = (
        big
        + f'<div class="pair"><div>{depth}</div><div>{waits}</div></div>'
        + charts.legend([n for n, _ in panel.waits])
        + table
    )
    return _section(body)


def _section(body: str) -> str:
    note = "lines waiting and their waits (from their batch's creation), spend and savings"
    return (
        '<section class="card wide" data-chart="batches"><h2>Batches</h2>'
        f'<p class="note">{escape(note)}</p>{body}</section>'
    )
