"""Tasks as a ledger level: the calls of one agent run, under one budget of their own.

A call names its task with the ``X-Tokenomy-Task`` header (or ``metadata.task_id`` in its
body). A name made by ``POST /v1/tasks`` (``task_…``) must be the caller's
organisation's; its budget (money and/or tokens, for the task's whole life) becomes one
more meter on the call's hold, so the same two-phase holds that keep an org's budgets
keep a task's, across parallel calls and replicas. Any other name only groups the calls.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tokenomy.core.call import Call
from tokenomy.core.errors import InvalidRequest, NotFound
from tokenomy.ledger.accounts import Budget, BudgetMeter, Scope
from tokenomy.ledger.periods import EPOCH_MS, Period
from tokenomy.store.tasks import Task, TaskStore

#: Made tasks' names start so; other names are the caller's own labels.
TASK_PREFIX = "task_"
MAX_TASK_NAME = 64
#: How old a task read from the database may be before it is read again (in the
#: background: the request goes on with what is known): a budget changed on another
#: replica applies here within this.
REFRESH_S = 2.0


def task_meter(task: Task) -> BudgetMeter | None:
    """The task's budget as a lifetime budget meter (None: it has no budget)."""
    if task.budget_nanos is None and task.budget_tokens is None:
        return None
    budget = Budget(
        id=task.id,
        scope=Scope.TASK,
        scope_id=task.id,
        period=Period.LIFETIME,
        amount_nanos=task.budget_nanos,
        token_limit=task.budget_tokens,
    )
    return BudgetMeter(budget, EPOCH_MS, None)


def owner_of(org_id: str | None, key_id: str) -> str:
    return org_id or key_id


def task_not_found(name: str) -> NotFound:
    return NotFound(f"Task '{name}' not found.", param="task", code="task_not_found")


class TaskFinder:
    """Finds a call's task for the ledger stage (before its hold); made tasks are cached
    by id. Only a call that names a task costs more than one look at its body."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store
        self._refreshing: dict[str, asyncio.Task[Any]] = {}

    async def find(self, call: Call, name: Any) -> BudgetMeter | None:
        """Check the call's task ``name`` (400/404) and set the call's ``task_id``; the
        task's budget meter, if it has a budget (one more level of the call's hold)."""
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= MAX_TASK_NAME
            or not name.isprintable()
        ):
            raise InvalidRequest(
                f"The task name must be 1 to {MAX_TASK_NAME} printable characters.",
                param="X-Tokenomy-Task",
            )
        if name.startswith(TASK_PREFIX):
            hit = self.store.cached(name)
            if hit is None:
                task = await asyncio.to_thread(self.store.get, name)
            else:
                task, age = hit
                if age > REFRESH_S and name not in self._refreshing:
                    self._refresh(name)
            if task is None or task.owner != owner_of(call.key.org_id, call.key.id):
                raise task_not_found(name)  # another organisation's is unknown here
            call.task_id = name
            return task_meter(task)
        call.task_id = name
        return None

    def _refresh(self, name: str) -> None:
        t = asyncio.create_task(asyncio.to_thread(self.store.get, name), name="task-refresh")
        self._refreshing[name] = t
        t.add_done_callback(lambda _t: self._refreshing.pop(name, None))
