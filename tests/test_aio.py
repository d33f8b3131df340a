"""shield_inline: asyncio.shield's guarantees, without a task unless the caller is cancelled;
gather_inline: coroutines side by side in one task."""

from __future__ import annotations

import asyncio

import pytest

from tokenomy.aio import gather_inline, shield_inline


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

    task = asyncio.create_task(shield_inline(inner()))
    await asyncio.sleep(0.01)
    task.cancel()  # the caller: the rest of inner() moves to a task of its own
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == []
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert len(rest) == 1
    rest[0].cancel()  # that task itself, as a loop shutting down does
    assert await rest[0] == "cleaned up"
    assert seen == ["cancelled"]


async def test_a_wait_that_is_cancelled_itself_reaches_the_coroutine() -> None:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def inner() -> str:
        try:
            await fut
        except asyncio.CancelledError:
            return "saw it"
        return "no"

    asyncio.get_running_loop().call_later(0.005, fut.cancel)
    assert await shield_inline(inner()) == "saw it"


async def test_waiting_takes_no_task_of_its_own() -> None:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    seen: list[int] = []

    async def inner() -> int:
        seen.append(len(asyncio.all_tasks()))
        return await fut

    asyncio.get_running_loop().call_later(0.005, fut.set_result, 3)
    assert await shield_inline(inner()) == 3
    assert seen == [1] and len(asyncio.all_tasks()) == 1


async def test_gather_inline_starts_each_before_finishing_any() -> None:
    loop = asyncio.get_running_loop()
    order: list[str] = []
    futs = [loop.create_future() for _ in range(2)]

    async def step(i: int) -> None:
        order.append(f"start {i}")
        await futs[i]
        order.append(f"end {i}")

    loop.call_soon(futs[1].set_result, None)
    loop.call_later(0.005, futs[0].set_result, None)
    assert await gather_inline([step(0), step(1)]) == [None, None]
    assert order == ["start 0", "start 1", "end 0", "end 1"]


async def test_gather_inline_reports_each_failure_and_runs_the_rest() -> None:
    ran: list[str] = []

    async def fails_now() -> None:
        raise ValueError("now")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise KeyError("later")

    async def fine() -> None:
        await asyncio.sleep(0)
        ran.append("fine")

    errors = await gather_inline([fails_now(), fails_later(), fine()])
    assert isinstance(errors[0], ValueError) and isinstance(errors[1], KeyError)
    assert errors[2] is None and ran == ["fine"]


async def test_gather_inline_cancelled_closes_what_it_had_not_finished() -> None:
    closed: list[int] = []

    async def waits(i: int) -> None:
        try:
            await asyncio.sleep(10)
        finally:
            closed.append(i)

    task = asyncio.create_task(gather_inline([waits(0), waits(1)]))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(closed) == [0, 1]
