"""Video jobs in the database: submit, claim in fair turns under a capacity, lease, end.

A job is claimed by one process at a time: the claim is one conditional UPDATE (the job
still queued, its deployment below capacity), under a transaction-scoped advisory lock
per deployment on PostgreSQL (SQLite's single writer makes the UPDATE atomic). The claim
raises ``attempts``, which then fences the claimant: its renewals and its completion
apply only while ``attempts`` is still its own, so a process whose lease lapsed (and
whose job another process took) can change nothing. Blocking; callers run it on a thread.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, select, text, update

from tokenomy.store.schema import video_jobs, video_outputs

QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = (
    "queued",
    "in_progress",
    "completed",
    "failed",
    "cancelled",
)
ENDED = frozenset({COMPLETED, FAILED, CANCELLED})

_J = video_jobs.c

_CLAIM = text(
    """
UPDATE video_jobs SET status = 'in_progress', lease_until = :until, attempts = attempts + 1,
  started_ms = :now, progress = 0
WHERE id = :id AND status = 'queued'
  AND (SELECT count(*) FROM video_jobs r
       WHERE r.deployment = :dep AND r.status = 'in_progress') < :cap
"""
)


class VideoStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pg = engine.dialect.name == "postgresql"

    # -- submitting and reading --------------------------------------------------------

    def create(self, row: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(video_jobs).values(**row))

    def get(self, job_id: str, owner: str | None = None) -> dict[str, Any] | None:
        q = select(video_jobs).where(_J.id == job_id)
        if owner is not None:
            q = q.where(_J.owner == owner)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return dict(row._mapping) if row is not None else None

    def page(
        self, owner: str | None, *, after: str | None, limit: int, ascending: bool = False
    ) -> list[dict[str, Any]]:
        """The owner's jobs (everyone's for None) by creation, after the job ``after``."""
        q = select(video_jobs)
        if owner is not None:
            q = q.where(_J.owner == owner)
        with self.engine.connect() as conn:
            if after:
                at = conn.execute(select(_J.created_ms).where(_J.id == after)).scalar()
                if at is None:
                    return []
                if ascending:
                    q = q.where((_J.created_ms > at) | ((_J.created_ms == at) & (_J.id > after)))
                else:
                    q = q.where((_J.created_ms < at) | ((_J.created_ms == at) & (_J.id < after)))
            if ascending:
                q = q.order_by(_J.created_ms.asc(), _J.id.asc())
            else:
                q = q.order_by(_J.created_ms.desc(), _J.id.desc())
            return [dict(r._mapping) for r in conn.execute(q.limit(limit))]

    def depth(self, deployment: str) -> int:
        q = select(func.count()).where(_J.deployment == deployment, _J.status == QUEUED)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def output(self, job_id: str) -> tuple[str, bytes] | None:
        q = select(video_outputs.c.content_type, video_outputs.c.data).where(
            video_outputs.c.job_id == job_id
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return (str(row[0]), bytes(row[1])) if row is not None else None

    # -- the queue -----------------------------------------------------------------------

    def queue(self, deployment: str) -> tuple[list[Any], list[Any], dict[str, int]]:
        """The deployment's waiting jobs (id, owner, created_ms, seconds), running jobs
        (id, started_ms, seconds), and each waiting owner's last start."""
        with self.engine.connect() as conn:
            waiting = [
                (r.id, r.owner, r.created_ms, r.seconds)
                for r in conn.execute(
                    select(_J.id, _J.owner, _J.created_ms, _J.seconds).where(
                        _J.deployment == deployment, _J.status == QUEUED
                    )
                )
            ]
            running = [
                (r.id, r.started_ms or 0, r.seconds)
                for r in conn.execute(
                    select(_J.id, _J.started_ms, _J.seconds).where(
                        _J.deployment == deployment, _J.status == IN_PROGRESS
                    )
                )
            ]
            owners = {w[1] for w in waiting}
            last = self._last_starts(conn, deployment, owners)
        return waiting, running, last

    def _last_starts(self, conn: Any, deployment: str, owners: set[str]) -> dict[str, int]:
        if not owners:
            return {}
        q = (
            select(_J.owner, func.max(_J.started_ms))
            .where(_J.deployment == deployment, _J.owner.in_(owners), _J.started_ms.is_not(None))
            .group_by(_J.owner)
        )
        return {str(o): int(t) for o, t in conn.execute(q) if t is not None}

    def claim(
        self,
        deployment: str,
        capacity: int,
        now_ms: int,
        lease_ms: int,
        pick: Callable[[Mapping[str, int], Mapping[str, int]], str],
    ) -> dict[str, Any] | None:
        """Start the next job, if the deployment has a free render slot: the oldest of
        the owner ``pick`` chooses from each waiting owner's oldest job and last start."""
        with self.engine.begin() as conn:
            if self._pg:
                lock = zlib.crc32(deployment.encode()) & 0x7FFFFFFF
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock})
            running = conn.execute(
                select(func.count()).where(_J.deployment == deployment, _J.status == IN_PROGRESS)
            ).scalar()
            if int(running or 0) >= capacity:
                return None
            oldest = {
                str(o): int(t)
                for o, t in conn.execute(
                    select(_J.owner, func.min(_J.created_ms))
                    .where(_J.deployment == deployment, _J.status == QUEUED)
                    .group_by(_J.owner)
                )
            }
            if not oldest:
                return None
            last = self._last_starts(conn, deployment, set(oldest))
            owner = pick(oldest, last)
            job_id = conn.execute(
                select(_J.id)
                .where(_J.deployment == deployment, _J.status == QUEUED, _J.owner == owner)
                .order_by(_J.created_ms, _J.id)
                .limit(1)
            ).scalar()
            n = conn.execute(
                _CLAIM,
                {
                    "until": now_ms + lease_ms,
                    "now": now_ms,
                    "id": job_id,
                    "dep": deployment,
                    "cap": capacity,
                },
            ).rowcount
            if not n:
                return None
            row = conn.execute(select(video_jobs).where(_J.id == job_id)).first()
        return dict(row._mapping) if row is not None else None

    # -- the claimant's changes (fenced by ``attempts``) ---------------------------------

    def _mine(self, job_id: str, attempt: int) -> Any:
        return and_(_J.id == job_id, _J.attempts == attempt, _J.status == IN_PROGRESS)

    def renew(self, job_id: str, attempt: int, until_ms: int, **values: Any) -> bool:
        """Extend the lease (and set ``values``); False once the job is no longer ours."""
        with self.engine.begin() as conn:
            q = update(video_jobs).where(self._mine(job_id, attempt))
            return bool(conn.execute(q.values(lease_until=until_ms, **values)).rowcount)

    def complete(self, job_id: str, values: dict[str, Any]) -> bool:
        """Mark a job whose media is recorded completed (whoever rendered it)."""
        with self.engine.begin() as conn:
            q = update(video_jobs).where(_J.id == job_id, _J.status.in_([QUEUED, IN_PROGRESS]))
            return bool(conn.execute(q.values(status=COMPLETED, **values)).rowcount)

    def retry_or_fail(
        self, job_id: str, attempt: int, max_attempts: int, error: str, now_ms: int
    ) -> str | None:
        """A failed render: queued again while tries remain, else failed. The new status,
        or None if the job was no longer ours."""
        with self.engine.begin() as conn:
            again = conn.execute(
                update(video_jobs)
                .where(self._mine(job_id, attempt), _J.attempts < max_attempts)
                .values(status=QUEUED, lease_until=0, upstream_id=None, progress=0)
            ).rowcount
            if again:
                return QUEUED
            failed = conn.execute(
                update(video_jobs)
                .where(self._mine(job_id, attempt))
                .values(status=FAILED, error=error, completed_ms=now_ms)
            ).rowcount
        return FAILED if failed else None

    # -- housekeeping --------------------------------------------------------------------

    def finish_recorded(self, now_ms: int) -> list[dict[str, Any]]:
        """Jobs whose media is recorded but that are not marked completed (their process
        died in between): marked now, and returned."""
        has = select(video_outputs.c.job_id).where(video_outputs.c.job_id == _J.id)
        with self.engine.begin() as conn:
            rows = [
                dict(r._mapping)
                for r in conn.execute(
                    select(video_jobs).where(
                        _J.status == IN_PROGRESS, _J.lease_until < now_ms, has.exists()
                    )
                )
            ]
            for r in rows:
                conn.execute(
                    update(video_jobs)
                    .where(_J.id == r["id"], _J.status == IN_PROGRESS)
                    .values(status=COMPLETED, completed_ms=now_ms, hold_open=0, progress=100)
                )
        return rows

    def requeue_lapsed(self, now_ms: int, max_attempts: int, error: str) -> int:
        """Jobs whose process died mid-render (lease lapsed, no media): queued again
        (keeping the vendor's job id, to be resumed) or failed after ``max_attempts``."""
        has = select(video_outputs.c.job_id).where(video_outputs.c.job_id == _J.id)
        lapsed = and_(_J.status == IN_PROGRESS, _J.lease_until < now_ms, ~has.exists())
        with self.engine.connect() as conn:  # an idle queue is only read, never written
            if conn.execute(select(_J.id).where(lapsed).limit(1)).first() is None:
                return 0
        with self.engine.begin() as conn:
            n = conn.execute(
                update(video_jobs)
                .where(lapsed, _J.attempts < max_attempts)
                .values(status=QUEUED, lease_until=0)
            ).rowcount
            n += conn.execute(
                update(video_jobs)
                .where(lapsed)
                .values(status=FAILED, error=error, completed_ms=now_ms)
            ).rowcount
        return int(n)

    def unreleased(self) -> list[dict[str, Any]]:
        """Failed or cancelled jobs whose hold is still open."""
        q = select(video_jobs).where(_J.hold_open == 1, _J.status.in_([FAILED, CANCELLED]))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def take_release(self, job_id: str) -> bool:
        """The right to release (or settle) the job's hold: True once, to one caller."""
        with self.engine.begin() as conn:
            q = update(video_jobs).where(_J.id == job_id, _J.hold_open == 1).values(hold_open=0)
            return bool(conn.execute(q).rowcount)

    def open_holds(self) -> list[dict[str, Any]]:
        """Jobs not yet ended whose hold is open (a restarted process holds them again)."""
        q = select(video_jobs).where(_J.hold_open == 1, _J.status.in_([QUEUED, IN_PROGRESS]))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def cancel(self, job_id: str, owner: str | None, now_ms: int) -> bool:
        """Cancel a job that has not started; whether it was."""
        cond = [_J.id == job_id, _J.status == QUEUED]
        if owner is not None:
            cond.append(_J.owner == owner)
        with self.engine.begin() as conn:
            q = update(video_jobs).where(*cond).values(status=CANCELLED, completed_ms=now_ms)
            return bool(conn.execute(q).rowcount)

    def delete(self, job_id: str) -> None:
        """Forget an ended job and its media (its usage record stays)."""
        with self.engine.begin() as conn:
            conn.execute(delete(video_outputs).where(video_outputs.c.job_id == job_id))
            conn.execute(delete(video_jobs).where(_J.id == job_id, _J.status.in_(ENDED)))

    def purge_expired(self, now_s: int) -> int:
        """Delete the media of completed jobs past their ``expires_at``."""
        expired = select(_J.id).where(_J.status == COMPLETED, _J.expires_at < now_s)
        with self.engine.begin() as conn:
            q = delete(video_outputs).where(video_outputs.c.job_id.in_(expired))
            return int(conn.execute(q).rowcount)

    # -- measurements --------------------------------------------------------------------

    def measured(self, deployment: str, n: int) -> list[tuple[int, int]]:
        """(render ms, seconds) of the deployment's ``n`` latest completed renders."""
        q = (
            select(_J.render_ms, _J.seconds)
            .where(_J.deployment == deployment, _J.status == COMPLETED, _J.render_ms.is_not(None))
            .order_by(_J.completed_ms.desc())
            .limit(n)
        )
        with self.engine.connect() as conn:
            return [(int(a), int(b)) for a, b in conn.execute(q)]

    def waits(self, deployment: str, since_ms: int) -> list[int]:
        """Queue waits (ms from submission to start) of jobs started since ``since_ms``."""
        q = select(_J.started_ms - _J.created_ms).where(
            _J.deployment == deployment, _J.started_ms >= since_ms
        )
        with self.engine.connect() as conn:
            return [int(w) for (w,) in conn.execute(q)]

    def counts(self) -> tuple[dict[str, int], int | None]:
        """Jobs per status (all deployments), and the creation ms of the oldest queued."""
        with self.engine.connect() as conn:
            by = {
                str(s): int(n)
                for s, n in conn.execute(select(_J.status, func.count()).group_by(_J.status))
            }
            oldest = conn.execute(
                select(func.min(_J.created_ms)).where(_J.status == QUEUED)
            ).scalar()
        return by, None if oldest is None else int(oldest)

    def owners_of(self, ids: Sequence[str]) -> dict[str, str]:
        q = select(_J.id, _J.owner).where(_J.id.in_(list(ids)))
        with self.engine.connect() as conn:
            return {str(i): str(o) for i, o in conn.execute(q)}
