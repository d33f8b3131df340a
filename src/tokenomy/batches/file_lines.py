"""A stored file's lines, numbered from 1 (blank lines skipped but counted), read a
chunk at a time: never the whole file in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from tokenomy.store.files import FileStore


class _Feed:
    """Splits a file given a chunk at a time into its non-blank lines, numbered from 1."""

    def __init__(self) -> None:
        self.rest, self.n = b"", 0

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        parts = (self.rest + data).split(b"\n")
        self.rest = parts.pop()
        for p in parts:
            self.n += 1
            if p.strip():
                yield self.n, p

    def end(self) -> Iterator[tuple[int, bytes]]:
        if self.rest.strip():
            yield self.n + 1, self.rest


def file_lines_blocking(files: FileStore, file_id: str) -> Iterator[tuple[int, bytes]]:
    """A stored file's lines, a chunk read at a time (blocking)."""
    feed, seq = _Feed(), 0
    while (data := files.chunk(file_id, seq)) is not None:
        seq += 1
        yield from feed.feed(data)
    yield from feed.end()


async def file_lines(files: FileStore, file_id: str) -> AsyncIterator[tuple[int, bytes]]:
    """A stored file's lines, a chunk read on a thread at a time."""
    feed, seq = _Feed(), 0
    while (data := await asyncio.to_thread(files.chunk, file_id, seq)) is not None:
        seq += 1
        for x in feed.feed(data):
            yield x
    for x in feed.end():
        yield x
