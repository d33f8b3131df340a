"""asyncio helpers for the request path."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


async def shield_inline(coro: Coroutine[Any, Any, T]) -> T:
    """``await asyncio.shield(coro)``, without a task unless the caller is cancelled.

    The coroutine runs in the caller's task. Each future it waits for is awaited through
    a shield of its own (one future more, no task), so cancelling the caller leaves that
    future alone; at that moment the rest of the coroutine moves to a task of its own and
    finishes there, while the cancellation goes on up, as ``asyncio.shield`` would have
    it. Most calls never wait at all (settling with the in-process ledger and rate
    limiter); those that do (a Redis round trip) no longer pay for a task, its first
    scheduling and the extra loop iterations.
    """
    try:
        waiting = coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    return await _shielded(coro, waiting)  # type: ignore[no-any-return]


@types.coroutine
def _shielded(coro: Coroutine[Any, Any, Any], waiting: Any) -> Generator[Any, Any, Any]:
    """The rest of a started coroutine, in the caller's task, each wait shielded."""
    while True:
        try:
            if waiting is None:
                value = yield None  # a bare yield to the loop (asyncio.sleep(0))
            else:
                value = yield from asyncio.shield(waiting)
        except asyncio.CancelledError as e:
            if waiting is None or not waiting.cancelled():
                # The caller is cancelled: the coroutine goes on in a task of its own.
                task = asyncio.ensure_future(_rest(coro, waiting))
                _detached.add(task)
                task.add_done_callback(_detached.discard)
                raise
            try:  # what it waited for was cancelled itself: the coroutine's to handle
                waiting = coro.throw(e)
            except StopIteration as done:
                return done.value
        except BaseException as e:
            try:
                waiting = coro.throw(e)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting = coro.send(value)
            except StopIteration as done:
                return done.value


#: Coroutines finishing after their caller was cancelled (a task needs a reference).
_detached: set[asyncio.Future[Any]] = set()


async def _rest(coro: Coroutine[Any, Any, T], waiting: Any) -> T:
    return await _resume(coro, waiting)  # type: ignore[no-any-return]


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], waiting: Any) -> Generator[Any, Any, Any]:
    """The rest of a started coroutine: what it waits for goes to the task running this,
    what the task sends back (a result, or an exception) goes to the coroutine."""
    while True:
        try:
            value = yield waiting
        except BaseException as e:
            try:
                waiting = coro.throw(e)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting = coro.send(value)
            except StopIteration as done:
                return done.value


async def gather_inline(coros: list[Coroutine[Any, Any, Any]]) -> list[BaseException | None]:
    """Run coroutines side by side in the calling task: what failed in each (None: done).

    Each starts here, in order, until it first suspends, so the calls they make at once
    leave together (Redis commands queued in one loop iteration go out in one write and
    come back in one read); then each is finished in turn. Unlike ``asyncio.gather``, no
    task is made. A cancellation while one is being finished closes the ones not yet
    finished and goes on up.
    """
    errors: list[BaseException | None] = [None] * len(coros)
    started: list[tuple[int, Coroutine[Any, Any, Any], Any]] = []
    for i, coro in enumerate(coros):
        try:
            waiting = coro.send(None)
        except StopIteration:
            continue
        except Exception as e:
            errors[i] = e
            continue
        started.append((i, coro, waiting))
    for n, (i, coro, waiting) in enumerate(started):
        try:
            await _resume(coro, waiting)
        except Exception as e:
            errors[i] = e
        except BaseException:
            for _, rest, _ in started[n + 1 :]:
                rest.close()
            raise
    return errors
