"""Server-sent events: parsing an upstream byte stream, and framing events for a client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson

from tokenomy.providers.response import ResponseTooLarge


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: bytes


def parse_block(block: bytes) -> SSEEvent | None:
    """One event from the lines between two blank lines; None for comments-only blocks."""
    event: str | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            v = line[5:]
            data.append(v[1:] if v.startswith(b" ") else v)
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode()
    if not data and event is None:
        return None
    return SSEEvent(event, b"\n".join(data))


async def iter_event_bytes(
    chunks: AsyncIterator[bytes], max_event: int | None = None
) -> AsyncIterator[bytes]:
    """The whole events of each network chunk as bytes, unparsed: line ends normalised,
    each event ending in a blank line. A relay that passes most events through unchanged
    looks into only the few it must.

    A trailing event without its blank line counts only if its last line is whole (or it is
    a bare ``[DONE]``): a stream cut in the middle of a line must not yield half an event,
    which the SSE spec says to discard. An event still unfinished past ``max_event`` bytes
    is :class:`ResponseTooLarge`: a stream's memory is bounded per event.
    """
    buf = b""
    async for chunk in chunks:
        buf += chunk
        if b"\r" in buf:
            # On the whole buffer, not the chunk: a CRLF may straddle two network chunks.
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end >= 0:
            raw, buf = buf[: end + 2], buf[end + 2 :]
            yield raw
        if max_event is not None and len(buf) > max_event:
            raise ResponseTooLarge(f"a stream event over {max_event} bytes")
    tail = buf.rstrip(b"\r\n")
    if tail and (buf != tail or tail == b"data: [DONE]"):
        yield tail + b"\n\n"


async def iter_event_batches(
    chunks: AsyncIterator[bytes], max_event: int | None = None
) -> AsyncIterator[list[SSEEvent]]:
    """The events of each network chunk, parsed (never an empty list; see
    :func:`iter_event_bytes`).

    Batches let the relay answer a chunk holding many events with one write, as a plain
    byte relay would, instead of one socket write (and one generator step) per event.
    """
    async for raw in iter_event_bytes(chunks, max_event):
        batch = [ev for ev in map(parse_block, raw.split(b"\n\n")) if ev is not None]
        if batch:
            yield batch


def block_data(block: bytes) -> bytes | None:
    """The data of one event block (None when it holds none): a plain one-line
    ``data: ...`` block without parsing, anything else through :func:`parse_block`."""
    if block.startswith(b"data: ") and b"\n" not in block:
        return block[6:]
    ev = parse_block(block)
    return None if ev is None else ev.data


def frames_data(frames: bytes) -> list[bytes]:
    """The data of each event in complete SSE bytes."""
    out = []
    for block in frames.split(b"\n\n"):
        d = block_data(block) if block else None
        if d is not None:
            out.append(d)
    return out


async def iter_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[SSEEvent]:
    """Events one at a time (see :func:`iter_event_batches`)."""
    async for batch in iter_event_batches(chunks):
        for ev in batch:
            yield ev


def frame_data(data: bytes) -> bytes:
    """An OpenAI-style ``data:`` event."""
    return b"data: " + data + b"\n\n"


def frame_event(event: str, data: bytes) -> bytes:
    """An Anthropic-style named event."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def frame_json(event: str | None, obj: object) -> bytes:
    data = orjson.dumps(obj)
    return frame_event(event, data) if event else frame_data(data)
