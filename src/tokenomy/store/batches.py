"""Batch jobs in the database: batches, their lines, claims with expiring leases.

Lines are claimed in the order of the claim index (state, lease lapse), never sorted:
a sort of every waiting line per claim made a large batch run slower the larger it was.
A line is claimed by one process at a time: the claim sets a lease (an instant after
which any process may claim it again) in one UPDATE, with ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL (SQLite's single writer makes the UPDATE atomic). A line whose outcome is
recorded (``batch_results``, written with its usage record) is never claimed again.
Blocking; callers run it on a thread.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from tokenomy.store.files import CHUNK_BYTES
from tokenomy.store.schema import batch_lines, batch_results, batches, file_chunks, files

#: Line states.
PENDING, DONE, CANCELLED, EXPIRED = "pending", "done", "cancelled", "expired"

#: Batch statuses that are over.
ENDED = frozenset({"failed", "completed", "expired", "cancelled"})

_LINE_CHUNK = 500


@dataclass(frozen=True, slots=True)
class ClaimedLine:
    batch_id: str
    line_no: int
    request_id: str
    custom_id: str
    body: str
    attempts: int
    held_nanos: int
    held_tokens: int


@dataclass(frozen=True, slots=True)
class BatchStats:
    """Every process's unfinished lines: waiting (ready now or scheduled later), leased
    to a process, the creation second of the oldest running batch, and those ready now."""

    queued: int = 0
    running: int = 0
    oldest: int | None = None
    ready: int = 0

    @property
    def scheduled(self) -> int:
        return self.queued - self.ready


_CLAIM = """
UPDATE batch_lines SET lease_until = :until, attempts = attempts + 1
WHERE (batch_id, line_no) IN (
  SELECT l.batch_id, l.line_no FROM batch_lines l
  WHERE l.state = 'pending' AND l.lease_until < :now
    AND NOT EXISTS (SELECT 1 FROM batch_results r WHERE r.request_id = l.request_id)
  ORDER BY l.lease_until
  LIMIT :n{lock}
)
RETURNING batch_id, line_no, request_id, custom_id, body, attempts, held_nanos, held_tokens
"""


class BatchStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        lock = " FOR UPDATE SKIP LOCKED" if engine.dialect.name == "postgresql" else ""
        self._claim = text(_CLAIM.format(lock=lock))

    # -- creating and reading ----------------------------------------------------------

    def create(self, row: dict[str, Any], lines: Iterable[dict[str, Any]]) -> None:
        """A batch and all its lines, in one transaction."""
        with self.engine.begin() as conn:
            conn.execute(insert(batches).values(**row))
            chunk: list[dict[str, Any]] = []
            for line in lines:
                chunk.append(line)
                if len(chunk) >= _LINE_CHUNK:
                    conn.execute(insert(batch_lines), chunk)
                    chunk = []
            if chunk:
                conn.execute(insert(batch_lines), chunk)

    def get(self, batch_id: str, owner: str | None = None) -> dict[str, Any] | None:
        q = select(batches).where(batches.c.id == batch_id)
        if owner is not None:
            q = q.where(batches.c.owner == owner)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return dict(row._mapping) if row is not None else None

    def page(
        self,
        owner: str | None,
        *,
        after: str | None,
        limit: int,
        endpoint: str | None = None,
        not_endpoint: str | None = None,
        before: str | None = None,
    ) -> list[dict[str, Any]]:
        """The owner's batches (everyone's for None), newest first: those older than
        ``after``, or the ``limit`` nearest newer than ``before``."""
        t = batches
        q = select(t) if owner is None else select(t).where(t.c.owner == owner)
        if endpoint is not None:
            q = q.where(t.c.endpoint == endpoint)
        if not_endpoint is not None:
            q = q.where(t.c.endpoint != not_endpoint)
        with self.engine.connect() as conn:
            if before:
                at = conn.execute(select(t.c.created_at).where(t.c.id == before)).scalar()
                if at is None:
                    return []
                q = q.where((t.c.created_at > at) | ((t.c.created_at == at) & (t.c.id > before)))
                q = q.order_by(t.c.created_at.asc(), t.c.id.asc()).limit(limit)
                return [dict(r._mapping) for r in conn.execute(q)][::-1]
            if after:
                # Keyset by (creation second, id): ids of different processes do not sort
                # by time, and a page must neither skip nor repeat a batch.
                at = conn.execute(select(t.c.created_at).where(t.c.id == after)).scalar()
                if at is None:
                    return []
                q = q.where((t.c.created_at < at) | ((t.c.created_at == at) & (t.c.id < after)))
            q = q.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit)
            return [dict(r._mapping) for r in conn.execute(q)]

    def counts(self, batch_id: str) -> tuple[int, int]:
        """(completed, failed) lines: results with status 200, and the other results."""
        ok = func.sum(func.cast(batch_results.c.status_code == 200, batches.c.total.type))
        q = select(func.count(), ok).where(batch_results.c.batch_id == batch_id)
        with self.engine.connect() as conn:
            n, good = conn.execute(q).one()
        return int(good or 0), int(n) - int(good or 0)

    def stats(self, now_ms: int) -> BatchStats:
        """The worker's gauges, every process's lines. Reads only unfinished lines."""
        lines = batch_lines.c
        running = (lines.lease_until >= now_ms) & (lines.attempts > 0)
        scheduled = (lines.lease_until >= now_ms) & (lines.attempts == 0)
        q = select(
            func.count().filter(lines.lease_until < now_ms),
            func.count().filter(running),
            func.count().filter(scheduled),
        ).where(lines.state == PENDING)
        oldest = select(func.min(batches.c.created_at)).where(batches.c.status.not_in(ENDED))
        with self.engine.connect() as conn:
            ready, leased, later = conn.execute(q).one()
            first = conn.execute(oldest).scalar()
        return BatchStats(
            int(ready) + int(later), int(leased), None if first is None else int(first), int(ready)
        )

    def has_work(self, now_ms: int) -> bool:
        """Is any line waiting to be claimed? (A read: an idle worker takes no lock.)"""
        q = (
            select(batch_lines.c.line_no)
            .where(batch_lines.c.state == PENDING, batch_lines.c.lease_until < now_ms)
            .limit(1)
        )
        with self.engine.connect() as conn:
            return conn.execute(q).first() is not None

    def line_states(self, batch_id: str) -> dict[str, int]:
        """How many of the batch's lines are in each state."""
        q = (
            select(batch_lines.c.state, func.count())
            .where(batch_lines.c.batch_id == batch_id)
            .group_by(batch_lines.c.state)
        )
        with self.engine.connect() as conn:
            return {str(st): int(n) for st, n in conn.execute(q)}

    def delete(self, batch_id: str) -> None:
        """Forget an ended batch and its lines (its results stay: they are the billing
        side of its usage records)."""
        with self.engine.begin() as conn:
            conn.execute(batch_lines.delete().where(batch_lines.c.batch_id == batch_id))
            conn.execute(batches.delete().where(batches.c.id == batch_id))

    def spent(self, batch_id: str) -> int:
        """What the batch's lines have cost so far (nanos of the org's currency)."""
        q = select(func.coalesce(func.sum(batch_results.c.cost_nanos), 0)).where(
            batch_results.c.batch_id == batch_id
        )
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def lines(self, batch_id: str, state: str) -> list[dict[str, Any]]:
        q = select(batch_lines).where(
            batch_lines.c.batch_id == batch_id, batch_lines.c.state == state
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def unrecorded(self, batch_id: str, now_ms: int) -> list[dict[str, Any]]:
        """The batch's lines still to run: pending, no process's lease, no result."""
        has = select(batch_results.c.request_id).where(
            batch_results.c.request_id == batch_lines.c.request_id
        )
        q = select(batch_lines).where(
            batch_lines.c.batch_id == batch_id,
            batch_lines.c.state == PENDING,
            _not_running(now_ms),
            ~has.exists(),
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def active(self) -> list[dict[str, Any]]:
        """Batches not yet over."""
        q = select(batches).where(batches.c.status.not_in(ENDED))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    # -- running lines -----------------------------------------------------------------

    def claim(self, n: int, now_ms: int, lease_ms: int) -> list[ClaimedLine]:
        with self.engine.begin() as conn:
            rows = conn.execute(self._claim, {"until": now_ms + lease_ms, "now": now_ms, "n": n})
            return [ClaimedLine(*r) for r in rows]

    def mark_done(self, lines: Sequence[tuple[str, int]]) -> None:
        """Lines whose results are committed: never looked at by a claim again."""
        if not lines:
            return
        with self.engine.begin() as conn:
            for batch_id, line_no in lines:
                conn.execute(
                    update(batch_lines)
                    .where(
                        batch_lines.c.batch_id == batch_id,
                        batch_lines.c.line_no == line_no,
                        batch_lines.c.state == PENDING,
                    )
                    .values(state=DONE)
                )

    def release_lease(
        self, batch_id: str, line_no: int, after_s: float, now: float | None = None
    ) -> None:
        """Let the line be claimed again ``after_s`` from ``now`` (default: the clock)."""
        until = int(((time.time() if now is None else now) + after_s) * 1000)
        with self.engine.begin() as conn:
            conn.execute(
                update(batch_lines)
                .where(batch_lines.c.batch_id == batch_id, batch_lines.c.line_no == line_no)
                .values(lease_until=until)
            )

    def settle_recorded(self, batch_id: str, now_ms: int) -> None:
        """Mark done the pending lines that have a result (a process died between
        recording a line and marking it): among those once claimed whose lease lapsed,
        never a scan of the lines not yet run."""
        has = select(batch_results.c.request_id).where(
            batch_results.c.request_id == batch_lines.c.request_id
        )
        with self.engine.begin() as conn:
            conn.execute(
                update(batch_lines)
                .where(
                    batch_lines.c.state == PENDING,
                    batch_lines.c.lease_until > 0,
                    batch_lines.c.lease_until < now_ms,
                    batch_lines.c.batch_id == batch_id,
                    has.exists(),
                )
                .values(state=DONE)
            )

    def end_pending(self, batch_id: str, state: str, now_ms: int) -> list[dict[str, Any]]:
        """Cancel or expire the batch's lines that no process is running; returns them
        (their holds are to be released)."""
        cond = and_(
            batch_lines.c.batch_id == batch_id,
            batch_lines.c.state == PENDING,
            _not_running(now_ms),
        )
        # One UPDATE ... RETURNING: two processes ending the same batch at once each get
        # only the lines they changed, so no hold is released twice.
        q = update(batch_lines).where(cond).values(state=state).returning(*batch_lines.c)
        with self.engine.begin() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def any_pending(self, batch_id: str) -> bool:
        """Has the batch a line not yet ended? (One index probe, however large.)"""
        q = (
            select(batch_lines.c.line_no)
            .where(batch_lines.c.batch_id == batch_id, batch_lines.c.state == PENDING)
            .limit(1)
        )
        with self.engine.connect() as conn:
            return conn.execute(q).first() is not None

    # -- status changes ----------------------------------------------------------------

    def transition(
        self,
        batch_id: str,
        allowed: Iterable[str],
        values: dict[str, Any],
        owner: str | None = None,
    ) -> bool:
        """Change a batch only from one of ``allowed`` statuses; whether it changed."""
        cond = [batches.c.id == batch_id, batches.c.status.in_(list(allowed))]
        if owner is not None:
            cond.append(batches.c.owner == owner)
        with self.engine.begin() as conn:
            return bool(conn.execute(update(batches).where(*cond).values(**values)).rowcount)

    def take_finalizing(self, batch_id: str, now_ms: int, lease_ms: int, at: int) -> bool:
        """Claim the right to write a batch's result files (one process; a dead one's
        claim lapses)."""
        with self.engine.begin() as conn:
            n = conn.execute(
                update(batches)
                .where(
                    batches.c.id == batch_id,
                    batches.c.status.in_(["in_progress", "cancelling", "finalizing"]),
                    batches.c.lease_until < now_ms,
                )
                .values(
                    lease_until=now_ms + lease_ms,
                    finalizing_at=func.coalesce(batches.c.finalizing_at, at),
                )
            ).rowcount
        return bool(n)

    def finalize(
        self,
        batch: dict[str, Any],
        status: str,
        at: int,
        output: Iterator[bytes],
        errors: Iterator[bytes],
    ) -> None:
        """Write the output and error files and end the batch, in one transaction."""
        bid = batch["id"]
        values: dict[str, Any] = {"status": status, f"{status}_at": at}
        with self.engine.begin() as conn:
            for kind, lines in (("output", output), ("error", errors)):
                fid = f"file-{bid}-{kind}"
                size, count = _write_chunks(conn, fid, lines)
                if count:
                    conn.execute(
                        insert(files).values(
                            id=fid,
                            owner=batch["owner"],
                            purpose="batch_output",
                            filename=f"{bid}_{kind}.jsonl",
                            bytes=size,
                            lines=count,
                            created_at=at,
                        )
                    )
                    values[f"{kind}_file_id"] = fid
            conn.execute(update(batches).where(batches.c.id == bid).values(**values))

    def results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The batch's results in line order, a page at a time."""
        last = 0
        while page := self.results_page(batch_id, last):
            yield from page
            last = page[-1]["line_no"]

    def results_page(self, batch_id: str, after_line: int, n: int = 1000) -> list[dict[str, Any]]:
        """Up to ``n`` results of lines after ``after_line``, in line order."""
        q = (
            select(batch_results)
            .where(batch_results.c.batch_id == batch_id, batch_results.c.line_no > after_line)
            .order_by(batch_results.c.line_no)
            .limit(n)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def ended_lines(self, batch_id: str) -> list[dict[str, Any]]:
        """Lines cancelled or expired before they ran."""
        q = (
            select(
                batch_lines.c.line_no,
                batch_lines.c.request_id,
                batch_lines.c.custom_id,
                batch_lines.c.state,
            )
            .where(
                batch_lines.c.batch_id == batch_id, batch_lines.c.state.in_([CANCELLED, EXPIRED])
            )
            .order_by(batch_lines.c.line_no)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]


def _not_running(now_ms: int) -> ColumnElement[bool]:
    """No process runs the line: its lease lapsed, or it was never claimed (a line
    scheduled for later carries its planned start as its lease)."""
    return or_(batch_lines.c.lease_until < now_ms, batch_lines.c.attempts == 0)


def _write_chunks(conn: Connection, file_id: str, lines: Iterator[bytes]) -> tuple[int, int]:
    """Store JSONL lines as a file's chunks; (bytes, lines)."""
    conn.execute(file_chunks.delete().where(file_chunks.c.file_id == file_id))
    buf, seq, size, count = bytearray(), 0, 0, 0
    for line in lines:
        buf += line
        buf += b"\n"
        count += 1
        if len(buf) >= CHUNK_BYTES:
            conn.execute(insert(file_chunks).values(file_id=file_id, seq=seq, data=bytes(buf)))
            size += len(buf)
            seq, buf = seq + 1, bytearray()
    if buf:
        conn.execute(insert(file_chunks).values(file_id=file_id, seq=seq, data=bytes(buf)))
        size += len(buf)
    return size, count


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
