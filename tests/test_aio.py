"""shield_inline: asyncio.shield's guarantees, without a task for what never waits."""

from __future__ import annotations

import asyncio

import pytest

from tokenomy.aio import shield_inline


async def test_a_coroutine_that_never_waits_runs_without_a_task() -> None:
    tasks: list[asyncio.Task[object] | None] = []

    async def inner() -> int:
        tasks.append(asyncio.current_task())
        return 7

    assert await shield_inline(inner()) == 7
    assert tasks == [asyncio.current_task()]  # ran in the caller's own task


async def test_errors_come_back_as_raised() -> None:
    async def fails_at_once() -> None:
        raise ValueError("now")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise KeyError("later")

    with pytest.raises(ValueError, match="now"):
        await shield_inline(fails_at_once())
    with pytest.raises(KeyError, match="later"):
        await shield_inline(fails_later())


async def test_a_waiting_coroutine_gets_results_and_finishes() -> None:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def inner() -> int:
        await asyncio.sleep(0)  # a bare yield to the loop
        got = await fut
        await asyncio.sleep(0.001)
        return got + 1

    asyncio.get_running_loop().call_later(0.005, fut.set_result, 41)
    assert await shield_inline(inner()) == 42


async def test_a_cancelled_caller_does_not_stop_what_it_waits_for() -> None:
    started, finished = asyncio.Event(), asyncio.Event()

    async def inner() -> None:
        started.set()
        await asyncio.sleep(0.01)
        finished.set()

    caller = asyncio.create_task(shield_inline(inner()))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(finished.wait(), 1)


async def test_exceptions_thrown_into_the_waiting_part_reach_the_coroutine() -> None:
    seen: list[str] = []

    async def inner() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            return "cleaned up"
        return "slept"

    async def run() -> str:
        return await shield_inline(inner())

    task = asyncio.create_task(run())
    await asyncio.sleep(0.01)
    for t in asyncio.all_tasks():
        if t is not task and t is not asyncio.current_task():
            t.cancel()  # the shielded rest itself (as a loop shutting down does)
    assert await task == "cleaned up"
    assert seen == ["cancelled"]
