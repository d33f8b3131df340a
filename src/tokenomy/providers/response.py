"""One vendor answer on a pooled connection: status and headers, then its body, buffered
as it arrives so the connection can go back to its pool the moment the answer is whole.

Its connection (``transport._UpstreamConnection``) feeds it parsed bytes and pauses reading past
:data:`HIGH_WATER` buffered bytes; the answer resumes it as the body is read.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from tokenomy.providers.body_decoder import BodyDecoder

if TYPE_CHECKING:
    from tokenomy.providers.transport import _UpstreamConnection

#: Bytes buffered on a response before the connection stops reading (backpressure).
HIGH_WATER = 1 << 20


class TransportError(ConnectionError):
    """The connection failed, or closed before the answer was whole."""


class ResponseTooLarge(TransportError):
    """A body (decoded) passed the pool's ``max_response_bytes``."""


class Response:
    """An answer: status and headers once they arrived, then its body as it comes."""

    __slots__ = (
        "_buffered",
        "_conn",
        "_decoder",
        "_done",
        "_error",
        "_headers_done",
        "_idle_timer",
        "_last_data",
        "_loop",
        "_max_bytes",
        "_parts",
        "_read_timeout",
        "_streaming",
        "_total",
        "_until_close",
        "_waiter",
        "got_bytes",
        "headers",
        "status",
    )

    def __init__(
        self,
        conn: _UpstreamConnection,
        loop: asyncio.AbstractEventLoop,
        read_timeout: float,
        max_bytes: int | None = None,
    ):
        self.status = 0
        #: Lower-case names; a repeated header's values joined with ", ".
        self.headers: dict[str, str] = {}
        self._conn: _UpstreamConnection | None = conn
        self._loop = loop
        self._headers_done: asyncio.Future[None] = loop.create_future()
        self._parts: list[bytes] = []
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._decoder: BodyDecoder | None = None
        self._until_close = False
        self._last_data = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._read_timeout = read_timeout
        self.got_bytes = False
        self._streaming = False
        #: A whole body's cap; a stream's is per event (see providers.sse).
        self._max_bytes = max_bytes
        self._total = 0

    # The connection's side.

    def _header(self, name: bytes, value: bytes) -> None:
        k = name.decode("latin-1").lower()
        v = value.decode("latin-1")
        old = self.headers.get(k)
        self.headers[k] = v if old is None else f"{old}, {v}"

    def _headers_complete(self, status: int) -> None:
        self.status = status
        enc = self.headers.get("content-encoding", "").strip().lower()
        if enc in ("gzip", "x-gzip", "deflate"):
            self._decoder = BodyDecoder(gzip=enc != "deflate")
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self._until_close = (
            "content-length" not in self.headers
            and not chunked
            and status not in (204, 304)
            and status >= 200
        )
        if not self._headers_done.done():
            self._headers_done.set_result(None)

    def _body(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as e:
                self._fail(TransportError(f"undecodable body: {e}"))
                return
            if not data:
                return
        self._parts.append(data)
        self._buffered += len(data)
        if self._max_bytes is not None and not self._streaming:
            self._total += len(data)
            if self._total > self._max_bytes:
                self._parts.clear()
                self._fail(ResponseTooLarge(f"an answer over {self._max_bytes} bytes"))
                return
        if self._streaming and self._buffered >= HIGH_WATER and self._conn is not None:
            self._conn.pause()  # the reader is behind (a slow client): stop reading
        self._wake()

    def _complete(self) -> None:
        if self._error is not None:
            return  # already failed (an undecodable body): the error stands
        if self._decoder is not None:
            try:
                tail = self._decoder.finish()
            except zlib.error as e:
                self._fail(TransportError(f"undecodable body: {e}"))
                return
            if tail:
                self._parts.append(tail)
        self._done = True
        self._conn = None
        self._stop_idle_timer()
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._done or self._error is not None:
            return
        self._error = exc
        if not self._headers_done.done():
            self._headers_done.set_exception(exc)
            self._headers_done.exception()  # retrieved here: the waiter may be gone
        self._stop_idle_timer()
        self._wake()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()

    def _lost(self, exc: Exception | None) -> None:
        """The connection closed: the end of a read-until-close body, else a failure. A
        reset (``exc``) ends no body: what came before it may be only part of one."""
        if self._done:
            return
        if self._until_close and self._headers_done.done() and exc is None:
            self._complete()
        else:
            self._fail(TransportError("the connection closed before the answer was whole"))

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    # The reader's side.

    async def read(self) -> bytes:
        """The whole body (usually already here: it came with the headers)."""
        while not self._done:
            await self._wait()
        data = b"".join(self._parts)
        self._parts.clear()
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: everything buffered since the last chunk, at once."""
        self._streaming = True
        while True:
            if self._parts:
                parts = self._parts
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                parts.clear()
                self._buffered = 0
                if self._conn is not None:
                    self._conn.resume()
                yield data
            elif self._done:
                return
            else:
                await self._wait()

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        if self._idle_timer is None:
            self._last_data = self._loop.time()
            self._idle_timer = self._loop.call_at(
                self._last_data + self._read_timeout, self._check_idle
            )
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        except BaseException:
            # The reader went away mid-body (cancelled): the connection cannot be reused.
            self.release()
            raise
        if self._error is not None:
            raise self._error

    def _check_idle(self) -> None:
        """Fires once a read timeout after the last data: re-arms, or cuts a stalled body."""
        self._idle_timer = None
        if self._done or self._error is not None:
            return
        due = self._last_data + self._read_timeout
        conn = self._conn
        if conn is not None and conn._paused:
            # Paused because the reader is behind, not because the upstream is silent.
            due = self._last_data = self._loop.time()
            due += self._read_timeout
        elif self._loop.time() >= due:
            self._fail(TimeoutError(f"no data for {self._read_timeout:g} s"))
        else:
            self._idle_timer = self._loop.call_at(due, self._check_idle)

    def _stop_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def release(self) -> None:
        """Done with it: a body not yet whole closes its connection (it cannot be reused)."""
        if not self._done and self._error is None:
            self._fail(TransportError("released before the answer was whole"))
        self._parts.clear()
