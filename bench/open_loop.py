"""Open-loop calls at a fixed rate, timed from when each was due, and their percentiles.

Shared by the bench scripts that watch one client's latency while something else loads
the gateway (a batch running, a flooding tenant).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


@dataclass
class Phase:
    """One open-loop run of calls: latencies of good answers, errors by kind."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    start: float = 0.0  # when the first call was due
    stop: float = 0.0  # when the schedule stopped (the last answers come after)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def open_loop(
    url: str,
    key: str,
    rate: float,
    seconds: float,
    body: bytes,
    done: Callable[[], bool] | None = None,
) -> Phase:
    """POST ``body`` as call i at ``start + i / rate`` whatever the answers do, for
    ``seconds`` or until ``done()``; each latency runs from the call's scheduled start to
    its answer's last byte."""
    phase = Phase()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(due: float) -> None:
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status == 200:
                        phase.latencies.append(time.perf_counter() - due)
                    else:
                        phase.error(str(r.status))
            except (aiohttp.ClientError, TimeoutError) as e:
                phase.error(type(e).__name__)

        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter() + 0.05
        for i in range(int(rate * seconds)):
            due = start + i / rate
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            if done is not None and done():
                break
            tasks.append(asyncio.create_task(one(due)))
        phase.sent = len(tasks)
        phase.start, phase.stop = start, time.perf_counter()
        await asyncio.gather(*tasks)
    phase.latencies.sort()
    return phase
