"""asyncio helpers: the request path's inline shield, and stopping a background worker."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import Collection, Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


async def shield_inline(coro: Coroutine[Any, Any, T]) -> T:
    """``await asyncio.shield(coro)``, without a task when ``coro`` never has to wait.

    The coroutine runs here until it first suspends. Most never do (settling a call with
    the in-process ledger and rate limiter), and then nothing could cancel them half-way:
    they are done without the task, the extra futures and the loop round trips a shield
    costs. One that does suspend is handed, at that point, to a task of its own, shielded
    from the caller's cancellation as ``asyncio.shield`` would have it.
    """
    try:
        waiting = coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    return await asyncio.shield(_rest(coro, waiting))


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


async def stop_worker(
    loops: list[asyncio.Task[Any]], running: Collection[asyncio.Task[Any]], grace_s: float
) -> None:
    """Stop a background worker: cancel its ``loops`` (so it claims nothing more) and wait
    for them, give the jobs still ``running`` ``grace_s`` to end, then cancel the rest."""
    for t in loops:
        t.cancel()
    for t in loops:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    loops.clear()
    if running:
        _, late = await asyncio.wait(running, timeout=grace_s)
        for t in late:
            t.cancel()
        await asyncio.gather(*late, return_exceptions=True)
