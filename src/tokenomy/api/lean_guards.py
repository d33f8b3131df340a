"""What the lean server refuses before a request is served, and how it lets go of a
refused connection: heads that are not HTTP/1.x, and the body of a refused request, read
and dropped so that the client sees the answer (see ``lean_server``)."""

from __future__ import annotations

import asyncio
import re
from typing import cast

#: A method or header name (RFC 9110's token).
TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
#: Of a refused request's body, at most this much is read (and dropped) so that the
#: client, still sending, gets the answer rather than a reset.
DRAIN_MAX = 64 * 1024 * 1024
#: ... and only while it keeps coming: a pause this long ends the drain.
DRAIN_IDLE_S = 0.5

#: The request line of HTTP/1.x (after any empty lines, which RFC 9112 says to skip).
REQUEST_LINE = re.compile(rb"(?:\r\n)*" + TOKEN + rb" [^\x00-\x20\x7f]+ HTTP/1\.[01]\r\n")
#: Methods with routes here; any other is a 405 before aiohttp (which would refuse it
#: without knowing the route, so without knowing the error's dialect).
METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"})
#: What may start a request: a method's first letter, or an empty line before it.
HEAD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n")


def head_problem(buf: bytes, pos: int, end: int) -> str | None:
    """Why ``buf[pos:end]``, all or the start of a request head, cannot be HTTP/1.x.

    Run only off the hot path (a head split across reads, or one handed to aiohttp): a
    client speaking TLS, HTTP/2 or bare-LF lines gets a 400 and a close, not silence.
    """
    if pos >= end:
        return None
    if buf[pos] not in HEAD_START:
        return "this port speaks plain HTTP/1.1 (not TLS, not HTTP/2)"
    if buf.count(b"\n", pos, end) != buf.count(b"\r\n", pos, end):
        return "header lines must end with CRLF, not a bare LF"
    if buf.find(b"\n", pos, end) >= 0 and REQUEST_LINE.match(buf, pos, end) is None:
        return "the request line must be 'METHOD target HTTP/1.1'"
    return None


class Drain(asyncio.Protocol):
    """The rest of a refused request's body, read and dropped; then the connection closes.

    Closing while the client is still sending would reset the connection, and a reset can
    destroy the answer before the client reads it. So up to :data:`DRAIN_MAX` bytes are
    taken, while they keep coming, within ``limit_s``; none are kept.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, left: int, limit_s: float) -> None:
        self.loop = loop
        self.left = min(left, DRAIN_MAX)
        self.last = loop.time()
        self.deadline = self.last + limit_s
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.timer = self.loop.call_later(DRAIN_IDLE_S, self._check)

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()
        self.left -= len(data)
        if self.left <= 0:
            self._close()

    def _check(self) -> None:
        now = self.loop.time()
        if now - self.last >= DRAIN_IDLE_S or now >= self.deadline:
            self._close()
        else:
            self.timer = self.loop.call_later(DRAIN_IDLE_S, self._check)

    def _close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
