"""Server-sent events: framing, pacing by time-to-first-token and tokens/s, and cut streams."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

DONE = b"data: [DONE]\n\n"
# Events due within this window of each other go out in one write: a fast stream then costs
# a few syscalls, not one per token.
_BATCH_WINDOW_S = 0.005

#: One event: its framed bytes, and how many tokens the model "generates" before it is due.
Event = tuple[bytes, float]


@dataclass(frozen=True, slots=True)
class Plan:
    """How one response is delivered: time to first token, tokens per second (0 = at once),
    and, for a disconnect fault, how many stream events go out before the socket closes.
    """

    ttft_s: float = 0.0
    tps: float = 0.0
    cut_after: int | None = None

    def duration(self, tokens: float) -> float:
        """Seconds a model at this pace takes to produce ``tokens``."""
        return self.ttft_s + (tokens / self.tps if self.tps > 0 else 0.0)


def data_frame(obj: Any) -> bytes:
    """An OpenAI-style ``data: {...}`` frame."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def named_frame(name: bytes, obj: Any) -> bytes:
    """An Anthropic-style frame with an ``event:`` line."""
    return b"event: " + name + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


async def open_stream(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """Send the stream's headers now, as vendors do before the first token."""
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            **headers,
        }
    )
    await resp.prepare(request)
    return resp


async def send_events(
    request: web.Request,
    resp: web.StreamResponse,
    events: Sequence[Event],
    plan: Plan,
) -> bool:
    """Write ``events`` paced like a model, or only the first ``cut_after`` then drop the
    connection (no usage, no terminator). True if the whole stream was delivered.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    cut_after = plan.cut_after
    last = len(events) if cut_after is None else min(max(cut_after, 0), len(events))
    due: list[float] = []
    generated = 0.0
    for _, tokens in events[:last]:
        generated += tokens
        due.append(plan.duration(generated))
    i = 0
    try:
        while i < last:
            delay = start + due[i] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            horizon = loop.time() - start + _BATCH_WINDOW_S
            j = i + 1
            while j < last and due[j] <= horizon:
                j += 1
            await resp.write(b"".join(frame for frame, _ in events[i:j]))
            i = j
    except ConnectionError:
        return False  # the client went away; nothing left to send to
    if last < len(events):
        drop_connection(request)
        return False
    return True


def drop_connection(request: web.Request) -> None:
    """Close the socket under a response (flushing what was written), as a crashed vendor."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def wait_generation(request: web.Request, plan: Plan, tokens: float) -> None:
    """Before a non-streamed answer: as long as the model would take to write it."""
    seconds = plan.duration(tokens)
    if seconds > 0:
        await hold(request, seconds)


async def hold(request: web.Request, seconds: float) -> None:
    """Sleep ``seconds``, or less if the client hangs up first (a timed-out client does)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (remaining := end - loop.time()) > 0:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(min(remaining, 0.05))
