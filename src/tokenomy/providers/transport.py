"""A lean HTTP/1.1 client for vendor calls: a pool of keep-alive connections per origin
(each answer is a :class:`~tokenomy.providers.response.Response`).

A vendor call is always the same exchange: POST a JSON body, then read the whole answer
or relay its stream. aiohttp's client did that for about 50 µs of CPU a call (request and
response objects, multidict headers, a cookie jar, a StreamReader per response), as much
as the rest of a bare relay. Here one small protocol object per connection feeds bytes to
httptools' C parser (llhttp, Node's parser) and the body is buffered on the response, so
a connection goes back to the pool the moment its answer is whole, whoever reads it.

Errors are plain: :class:`TransportError` (a ``ConnectionError``) when a connection fails
or closes before its answer is whole (:class:`ResponseTooLarge` when a body passes its
cap), ``TimeoutError`` when an answer stalls, and :class:`PoolExhausted` when every
connection stayed busy for as long as a request may wait for one (the gateway's own
overload, not the vendor's failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from typing import cast

import httptools

from tokenomy.core.origin import Origin
from tokenomy.core.proxy_url import Proxy
from tokenomy.providers.proxy import ProxyError, open_tunnel
from tokenomy.providers.response import Response, TransportError

#: A request on a reused connection that fails within this many seconds, with no byte of
#: answer, met a connection the server had already closed: it is sent once more.
RETRY_WINDOW_S = 0.1
#: A connection idle this long is not reused: servers close idle ones after 5–120 s,
#: and a request written into a connection the server is closing fails.
IDLE_REUSE_S = 15.0


class PoolExhausted(Exception):
    """Every connection to the origin stayed in use for the whole wait: nothing was sent."""


def header_block(headers: Mapping[str, str]) -> bytes:
    """Header lines for every request (names and values checked: a line break in a
    configured header would let it smuggle a request of its own)."""
    lines = []
    for name, value in headers.items():
        if not name or any(c in name for c in "\r\n\0: ") or any(c in value for c in "\r\n\0"):
            raise ValueError(f"invalid HTTP header {name!r}")
        if name.lower() in _FRAMING:
            continue  # the client writes these itself: a second copy would confuse framing
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


#: Headers each request's own framing sets (see :meth:`Pool.post`).
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class _UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection: writes requests, feeds the parser, routes its callbacks."""

    __slots__ = (
        "_informational",
        "_paused",
        "closed",
        "counted_out",
        "idle_since",
        "parser",
        "pool",
        "response",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.idle_since = 0.0
        self._paused = False
        self._informational = False
        #: Taken off the pool's count of open connections (exactly once).
        self.counted_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        resp = self.response
        if resp is None:  # bytes nobody asked for: the connection is out of step
            self.abort()
            return
        resp.got_bytes = True
        resp._last_data = resp._loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            resp._fail(TransportError(f"invalid HTTP response: {e}"))
            self.abort()  # the parser is out of step: never reuse this connection

    def eof_received(self) -> bool:
        return False  # close; a read-until-close body ends in connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        resp, self.response = self.response, None
        if resp is not None:
            resp._lost(exc)
        self.pool._lost(self)

    # httptools callbacks.

    def on_message_begin(self) -> None:
        if self.response is None:  # an answer after the one asked for: out of step
            self.abort()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response._header(name, value)

    def on_headers_complete(self) -> None:
        resp = self.response
        if resp is None:
            return
        status = self.parser.get_status_code()
        if status < 200:  # 1xx (103 Early Hints): the real answer follows
            self._informational = True
            resp.headers.clear()
            return
        resp._headers_complete(status)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        resp, self.response = self.response, None
        if resp is None:
            return
        keep = self.parser.should_keep_alive() and not resp._until_close
        resp._complete()
        if keep:
            self.resume()  # paused for a slow reader, it must read the next answer
            self.pool._release(self)
        else:
            self.abort()

    # The pool's side.

    def send(self, resp: Response, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        self.response = resp
        self.transport.writelines((head, body))

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()


class Pool:
    """Keep-alive connections to one origin, at most ``limit`` open at once."""

    def __init__(
        self,
        origin: Origin,
        *,
        limit: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        proxy: Proxy | None = None,
        max_response_bytes: int | None = None,
        pool_wait_s: float | None = None,
    ) -> None:
        self.origin = origin
        self.limit = max(1, limit)
        self.proxy = proxy
        self.max_response_bytes = max_response_bytes
        #: How long a request waits for a free connection (None: its first-byte timeout).
        self._pool_wait = pool_wait_s
        self._connect_timeout = connect_timeout_s
        self._read_timeout = read_timeout_s
        self._ssl: ssl.SSLContext | None = None
        if origin.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self._idle: list[_UpstreamConnection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: What follows the path on every request line, written out once.
        self._after_path = f" HTTP/1.1\r\nHost: {origin.host_header}\r\n"

    async def post(
        self, path: str, head_lines: bytes, body: bytes, *, first_byte_timeout_s: float
    ) -> Response:
        """Send one request; returns once the answer's status and headers are in.

        ``head_lines`` are the header lines every request carries (see
        :func:`header_block`); Host and Content-Length are added here. A request written
        into a reused connection that fails within :data:`RETRY_WINDOW_S` without a byte
        of answer (the server had shut it as it went idle) is sent once more on a new
        connection.
        """
        loop = self._loop
        if loop is None:
            # Bound to the first loop that uses it (asking each time costs a syscall).
            loop = self._loop = asyncio.get_running_loop()
        # The pool's wait is the gateway's own; the first-byte clock starts when the
        # request is written, so a request that waited for a connection is not cut short
        # (and then counted against the vendor) for the time it spent waiting.
        wait = self._pool_wait if self._pool_wait is not None else first_byte_timeout_s
        wait_until = loop.time() + wait
        head = (
            (
                f"POST {self.origin.target(path)}{self._after_path}Content-Length: {len(body)}\r\n"
            ).encode("latin-1")
            + head_lines
            + b"\r\n"
        )
        for attempt in (1, 2):
            conn, reused = await self._acquire(loop, wait_until, first_byte_timeout_s)
            transport = conn.transport
            if conn.closed or transport is None or transport.is_closing():
                # Closed by the server before anything was written: nothing was sent.
                if attempt == 1:
                    continue
                raise TransportError("the connection closed before the request was sent")
            resp = Response(conn, loop, self._read_timeout, self.max_response_bytes)
            conn.send(resp, head, body)
            sent_at = loop.time()
            timer = loop.call_at(
                sent_at + first_byte_timeout_s, resp._fail, TimeoutError("no answer in time")
            )
            try:
                await resp._headers_done
            except TransportError:
                # A reused connection the server had already shut (it went idle) fails at
                # once; one that fails later may have had the request processed, and a
                # POST sent twice is a generation billed twice.
                quick = loop.time() - sent_at < RETRY_WINDOW_S
                if attempt == 1 and reused and quick and not resp.got_bytes:
                    continue
                raise
            except BaseException:
                resp.release()
                raise
            finally:
                timer.cancel()
            return resp
        raise AssertionError("unreachable")

    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, wait_until: float, first_byte_timeout_s: float
    ) -> tuple[_UpstreamConnection, bool]:
        if self._closed:
            raise TransportError("the client is closed")
        idle = self._idle
        stale = loop.time() - IDLE_REUSE_S
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if (
                not conn.closed
                and conn.idle_since > stale
                and transport is not None
                and not transport.is_closing()
            ):
                return conn, True
            conn.abort()  # connection_lost will count it out
        if self._open >= self.limit:
            await self._wait_for_turn(loop, wait_until)
            if idle:
                return await self._acquire(loop, wait_until, first_byte_timeout_s)
        self._open += 1
        made: list[_UpstreamConnection] = []

        def protocol() -> _UpstreamConnection:
            made.append(_UpstreamConnection(self))
            return made[-1]

        try:
            async with asyncio.timeout(min(first_byte_timeout_s, self._connect_timeout)):
                _, proto = await self._connect(loop, protocol)
        except BaseException as e:
            # Cancelled just after the handshake, the transport may still report
            # connection_lost: the connection is counted out once, whichever comes first.
            if made:
                self._count_out(made[-1])
            else:
                self._open -= 1
            self._wake_one()
            if isinstance(e, OSError) and not isinstance(e, (TimeoutError, TransportError)):
                raise TransportError(f"could not connect: {type(e).__name__}") from e
            raise
        return proto, False

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, protocol: Callable[[], _UpstreamConnection]
    ) -> tuple[asyncio.BaseTransport, _UpstreamConnection]:
        """A new connection: straight to the origin, or through a CONNECT tunnel."""
        host, port = self.origin.host, self.origin.port
        server_hostname = host if self._ssl else None
        if self.proxy is None:
            return await loop.create_connection(
                protocol, host, port, ssl=self._ssl, server_hostname=server_hostname
            )
        try:
            sock = await open_tunnel(loop, self.proxy, host, port)
        except ProxyError as e:
            raise TransportError(str(e)) from e
        try:
            return await loop.create_connection(
                protocol, sock=sock, ssl=self._ssl, server_hostname=server_hostname
            )
        except BaseException:
            sock.close()
            raise

    async def _wait_for_turn(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Wait until a connection is free or may be opened; :class:`PoolExhausted` if
        none is by ``deadline``."""
        idle = self._idle
        try:
            async with asyncio.timeout_at(deadline):
                while self._open >= self.limit and not idle:
                    w = loop.create_future()
                    self._waiters.append(w)
                    try:
                        await w
                    except BaseException:
                        if w.done() and not w.cancelled():
                            self._wake_one()  # woken, but leaving: pass the turn on
                        raise
                    finally:
                        if not w.done():
                            w.cancel()
                        with contextlib.suppress(ValueError):
                            self._waiters.remove(w)
        except TimeoutError:
            raise PoolExhausted(
                f"all {self.limit} connections to {self.origin.host} stayed busy"
            ) from None

    def _release(self, conn: _UpstreamConnection) -> None:
        if self._closed or conn.closed:
            conn.abort()
            return
        assert self._loop is not None  # a connection exists only after a post
        conn.idle_since = self._loop.time()
        self._idle.append(conn)
        self._wake_one()

    def _count_out(self, conn: _UpstreamConnection) -> None:
        if not conn.counted_out:
            conn.counted_out = True
            self._open -= 1

    def _lost(self, conn: _UpstreamConnection) -> None:
        self._count_out(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()
        for w in self._waiters:
            if not w.done():
                w.set_exception(TransportError("the client is closed"))
        self._waiters.clear()
        await asyncio.sleep(0)  # let the aborted transports report connection_lost
