"""Tasks: the rows of ``POST /v1/tasks`` (owner and budget) and what a task's calls added
up to, summed from the usage events that name it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, func, insert, select, update

from tokenomy.store.schema import tasks, usage_events


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    owner: str
    created_ms: int
    currency: str | None
    budget_nanos: int | None
    budget_tokens: int | None


@dataclass(frozen=True, slots=True)
class TaskTotals:
    calls: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    cost_nanos: int
    first_ms: int | None
    last_ms: int | None


class TaskStore:
    """The ``tasks`` table and the task totals of ``usage_events`` (blocking: callers on
    the event loop run these in a worker thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: Tasks read or written here, with when: the request path reads them from here.
        self._cache: dict[str, tuple[Task, float]] = {}

    def cached(self, task_id: str) -> tuple[Task, float] | None:
        """The task as last read here, and its age in seconds (None: never read)."""
        hit = self._cache.get(task_id)
        return None if hit is None else (hit[0], time.monotonic() - hit[1])

    def _remember(self, task: Task) -> None:
        if len(self._cache) > 65_536:  # bounded: tasks come and go
            self._cache.clear()
        self._cache[task.id] = (task, time.monotonic())

    def create(self, task: Task) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(tasks).values(
                    id=task.id,
                    owner=task.owner,
                    created_ms=task.created_ms,
                    currency=task.currency,
                    budget_nanos=task.budget_nanos,
                    budget_tokens=task.budget_tokens,
                )
            )
        self._remember(task)

    def set_budget(self, task: Task) -> None:
        """Store the task's new budget (its other fields never change)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(tasks)
                .where(tasks.c.id == task.id)
                .values(budget_nanos=task.budget_nanos, budget_tokens=task.budget_tokens)
            )
        self._remember(task)

    def get(self, task_id: str) -> Task | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(tasks).where(tasks.c.id == task_id)).first()
        if row is None:
            return None
        task = Task(
            row.id, row.owner, row.created_ms, row.currency, row.budget_nanos, row.budget_tokens
        )
        self._remember(task)
        return task

    def totals(self, org_id: str | None, key_id: str, task_id: str) -> TaskTotals:
        """The task's calls so far, as recorded (those of the org, or of an org-less key)."""
        e = usage_events.c
        who = e.org_id == org_id if org_id is not None else e.key_id == key_id
        q = select(
            func.count(),
            func.coalesce(func.sum(e.input_tokens), 0),
            func.coalesce(func.sum(e.cached_tokens), 0),
            func.coalesce(func.sum(e.output_tokens), 0),
            func.coalesce(func.sum(e.cost_nanos), 0),
            func.min(e.ts_ms),
            func.max(e.ts_ms + e.latency_ms),
        ).where(and_(e.task_id == task_id, who))
        with self.engine.connect() as conn:
            r: Any = conn.execute(q).one()
        return TaskTotals(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), r[5], r[6])
