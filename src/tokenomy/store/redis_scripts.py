"""Lua script calls on the request path, over one pipelined Redis connection.

The rate limiter and the live ledger each make two script calls a request (admit and
settle, hold and settle). Through redis-py's asyncio client each call cost roughly 80 µs
of event-loop CPU (a connection checked out of a pool, a command packer, a parser
object and several awaits per reply); this writes RESP by hand, parses replies with
hiredis (C) and keeps every call in flight on one connection, answered in order, which
is also how Redis itself serves fastest. Everything else (loading meters, admin
reads) stays on redis-py.

Errors are redis-py's classes, so callers' handling (fail open, retry) is unchanged:
``ConnectionError`` when the connection fails, ``TimeoutError`` when Redis stops
answering, ``ResponseError`` for an error reply.

Managed Redis: ``rediss://`` (TLS, with redis-py's ``ssl_*`` URL parameters) and AUTH
(password, or user and password, from the URL) are served here too. A connection that
cannot be made rests the client for a backoff that doubles with each failure (up to
:data:`BACKOFF_MAX_S`): while Redis is down every call fails at once instead of waiting
for a connect timeout of its own.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections import deque
from typing import Any, cast

import hiredis
from redis import exceptions as rx
from redis.connection import parse_url

from tokenomy.store.redis_cluster import CLUSTER_SCHEMES, is_cluster_url, node_url
from tokenomy.store.scripts import Script

__all__ = ["Script", "ScriptClient", "encode", "tls_context"]

#: A call not answered within this many seconds fails its connection (and every call on it).
CALL_TIMEOUT_S = 5.0
#: Connecting (TCP, TLS, AUTH, SELECT) takes at most this long.
CONNECT_TIMEOUT_S = 2.0
#: After a failed connect no other is tried for a backoff that starts here and doubles
#: with each failure in a row, up to BACKOFF_MAX_S (with jitter, so that replicas do not
#: all come back at once).
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0


def _arg(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, int):  # a bool too: as 1 or 0, never "True"
        return b"%d" % v
    raise TypeError(f"cannot send {type(v).__name__} to Redis")


#: Strings and ints already encoded as RESP bulk strings: the keys, script SHAs and limits
#: of a request's calls recur on every request. Started over when full, so that values
#: seen once (ids, times) cannot keep it from those that recur. Only exact str and int
#: are looked up (True == 1, but a bool must not be sent as 1).
_SEGMENTS: dict[str | int, bytes] = {}
_SEGMENTS_MAX = 4096


def encode(*args: Any) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    append = out.append
    segments = _SEGMENTS
    for a in args:
        # The common types inline (a request's calls carry some 55 arguments).
        t = type(a)
        if t is str or t is int:
            seg = segments.get(a)
            if seg is None:
                b = a.encode() if t is str else b"%d" % a
                seg = b"$%d\r\n%b\r\n" % (len(b), b)
                if len(segments) >= _SEGMENTS_MAX:
                    segments.clear()
                segments[a] = seg
            append(seg)
            continue
        b = a if t is bytes else _arg(a)
        append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    """Replies come back in the order commands went out: one future each, in a queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=rx.ResponseError)
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.lost = False
        #: Talking to a cluster node: a MOVED reply means the slot went elsewhere.
        self.cluster = False
        #: Commands of this loop iteration, written together at its end.
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.pending
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as e:
                self.fail(rx.ConnectionError(f"Redis protocol error: {e}"))
                return
            if reply is False:
                return
            if not pending:  # a reply nobody asked for: out of step, start over
                self.fail(rx.ConnectionError("unexpected reply from Redis"))
                return
            fut, _ = pending.popleft()
            if not fut.done():
                if isinstance(reply, rx.ResponseError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
            if self.cluster and isinstance(reply, rx.ResponseError) and _moved(reply):
                # Resharded or failed over: the next call finds the slot's new node.
                self.fail(rx.ConnectionError(f"Redis Cluster moved the slot: {reply}"))
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(rx.ConnectionError(f"Redis connection lost: {exc or 'closed'}"))

    def fail(self, err: Exception) -> None:
        self.lost = True
        while self.pending:
            fut, _ = self.pending.popleft()
            if not fut.done():
                fut.set_exception(err)
        if self.transport is not None:
            self.transport.abort()

    def call(self, data: bytes) -> asyncio.Future[Any]:
        """Queue a command; every command queued in one loop iteration leaves in one write
        (a socket write wakes Redis and costs more than encoding a dozen commands)."""
        loop = self.loop
        fut = loop.create_future()
        if self.lost:
            # Nothing will ever read this connection again: fail now, never queue.
            fut.set_exception(rx.ConnectionError("Redis connection lost"))
            return fut
        self.pending.append((fut, loop.time()))
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(data)
        return fut

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.lost:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))


class ScriptClient:
    """EVALSHA calls (loading a script the server has not seen) on one connection."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = CALL_TIMEOUT_S,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        cluster_slot: int | None = None,
    ) -> None:
        self._addr = (host, port)
        #: On a Redis Cluster: the one slot every call's keys are in (see
        #: store.redis_cluster); the connection goes to the node that serves it, found
        #: from the seed node (host, port) on every connect.
        self._seed = (host, port)
        self._slot = cluster_slot
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout_s
        #: Failed connects in a row, and when the next may be tried (loop time).
        self._failures = 0
        self._retry_at = 0.0
        self._hello: list[bytes] = []
        if password:
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            self._hello.append(encode(*auth))
        if db:
            self._hello.append(encode("SELECT", db))
        self._timeout = timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    @staticmethod
    def serves(url: str) -> bool:
        """TCP, plain or TLS, one node or a cluster; Unix sockets are left to redis-py."""
        return url.startswith(("redis://", "rediss://", *CLUSTER_SCHEMES))

    @classmethod
    def for_url(cls, url: str, *, slot: int | None = None) -> ScriptClient | None:
        """The client for ``url``, or None when redis-py must serve it (see :meth:`serves`)."""
        return cls.from_url(url, slot=slot) if cls.serves(url) else None

    @classmethod
    def from_url(cls, url: str, *, slot: int | None = None) -> ScriptClient:
        """A redis://, rediss:// or (with the ``slot`` of every key) a cluster URL."""
        if not cls.serves(url):
            raise ValueError("only redis:// and rediss:// URLs are served by the script client")
        cluster = is_cluster_url(url)
        if cluster and slot is None:
            raise ValueError("a Redis Cluster URL needs the slot of the keys")
        url = node_url(url)
        kw = parse_url(url)  # type: ignore[no-untyped-call]
        return cls(
            kw.get("host", "127.0.0.1"),
            int(kw.get("port", 6379)),
            db=0 if cluster else int(kw.get("db", 0)),
            username=kw.get("username"),
            password=kw.get("password"),
            ssl_context=tls_context(kw) if url.startswith("rediss://") else None,
            cluster_slot=slot if cluster else None,
        )

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    async def execute(self, *args: Any) -> Any:
        """Send one command and wait for its reply."""
        conn = self._conn
        if conn is None or conn.lost:
            loop = asyncio.get_running_loop()
            self._check_resting(loop)
            conn = await self._connect(loop)
            if conn.lost:  # lost again before this caller resumed (closed at once)
                raise rx.ConnectionError("Redis closed the connection on connect")
        return await self._queue(conn, args)

    def submit(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command now, without waiting; its reply comes in the future.

        Queued at once, it leaves in this loop iteration's write (see ``_Connection.call``)
        and takes no task; only a client not connected yet needs one, to connect first.
        """
        conn = self._conn
        if conn is None or conn.lost:
            loop = asyncio.get_running_loop()
            if self._is_resting(loop):
                fut: asyncio.Future[Any] = loop.create_future()
                fut.set_exception(self._resting_error(loop))
                return fut
            return asyncio.ensure_future(self.execute(*args))
        return self._queue(conn, args)

    def _is_resting(self, loop: asyncio.AbstractEventLoop) -> bool:
        # After a failure only one caller probes: the others fail at once meanwhile too.
        return self._failures > 0 and (loop.time() < self._retry_at or self._connecting is not None)

    def _check_resting(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._is_resting(loop):
            raise self._resting_error(loop)

    def _resting_error(self, loop: asyncio.AbstractEventLoop) -> rx.ConnectionError:
        wait = self._retry_at - loop.time()
        where = f"{self._addr[0]}:{self._addr[1]}"
        then = f"next attempt in {wait:.2f} s" if wait > 0 else "an attempt is under way"
        return rx.ConnectionError(
            f"Redis at {where} is unreachable ({self._failures} failed connects in a row); " + then
        )

    @property
    def resting(self) -> bool:
        """Whether calls fail at once (Redis could not be reached a moment ago)."""
        return self._is_resting(asyncio.get_running_loop())

    def _queue(self, conn: _Connection, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        # The connection's loop, not asyncio.get_running_loop(): on Python 3.11 asking
        # for the running loop costs a getpid() system call.
        loop = conn.loop
        fut = conn.call(encode(*args))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout, self._check)
        return fut

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        # Concurrent callers share one connection attempt; it is forgotten as soon as it
        # ends, whether or not anyone is still waiting for it.
        task = self._connecting
        if task is None:
            task = self._connecting = loop.create_task(self._open(loop))
            task.add_done_callback(self._connected)
        return await asyncio.shield(task)

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved: the callers that wanted it may all be gone

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                conn = await self._dial(loop, self._seed)
                if self._slot is not None:
                    owner = _slot_owner(await conn.call(encode("CLUSTER", "SLOTS")), self._slot)
                    if owner != self._seed:
                        assert conn.transport is not None
                        conn.transport.close()
                        conn = None
                        conn = await self._dial(loop, owner)
                    self._addr = owner
                    conn.cluster = True
        except BaseException as e:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()  # a refused AUTH or SELECT must not leak the socket
            if not isinstance(e, asyncio.CancelledError):
                self._rest(loop)
            # (TimeoutError is an OSError: asyncio's timeout is told apart first.)
            if isinstance(e, TimeoutError):
                raise rx.TimeoutError("Redis did not answer in time") from e
            if isinstance(e, OSError):
                where = f"{self._addr[0]}:{self._addr[1]}"
                raise rx.ConnectionError(f"cannot reach Redis at {where}: {e}") from e
            raise
        self._failures = 0
        self._retry_at = 0.0
        self._conn = conn
        return conn

    async def _dial(self, loop: asyncio.AbstractEventLoop, addr: tuple[str, int]) -> _Connection:
        """A connection to ``addr``, authenticated and on its database."""
        conn: _Connection | None = None
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(loop),
                *addr,
                ssl=self._ssl,
                server_hostname=addr[0] if self._ssl is not None else None,
            )
            for hello in self._hello:
                await conn.call(hello)
        except BaseException:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            raise
        return conn

    def _rest(self, loop: asyncio.AbstractEventLoop) -> None:
        self._failures += 1
        backoff = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (self._failures - 1))
        self._retry_at = loop.time() + backoff * random.uniform(0.75, 1.0)

    def _check(self) -> None:
        """Fail a connection whose oldest call has waited too long (a hung Redis)."""
        self._watchdog = None
        conn = self._conn
        if conn is None or not conn.pending:
            return
        loop = asyncio.get_running_loop()
        oldest = conn.pending[0][1]
        if loop.time() - oldest >= self._timeout:
            conn.fail(rx.TimeoutError(f"Redis did not answer within {self._timeout:g} s"))
            self._rest(loop)  # a hung Redis: the calls after these fail at once for a while
            return
        self._watchdog = loop.call_at(oldest + self._timeout, self._check)

    async def aclose(self) -> None:
        """Close once the calls already queued are answered (settlements queued without
        waiting; the rate limiter and the ledger share a client, and either may close it
        first), or after the call timeout."""
        if self._connecting is not None:
            self._connecting.cancel()
        conn, self._conn = self._conn, None
        if conn is not None and conn.pending and not conn.lost:
            # asyncio.wait, not a timed gather: a timeout must not cancel the callers' futures
            # (closing fails them with a ConnectionError instead).
            await asyncio.wait([fut for fut, _ in conn.pending], timeout=self._timeout)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if conn is not None and conn.transport is not None:
            conn.transport.close()


def tls_context(kw: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context redis-py would make of a rediss:// URL's ``ssl_*`` parameters."""
    ctx = ssl.create_default_context(cafile=kw.get("ssl_ca_certs"))
    reqs = kw.get("ssl_cert_reqs")
    if reqs in ("none", ssl.CERT_NONE):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif kw.get("ssl_check_hostname") is False:
        ctx.check_hostname = False
    if kw.get("ssl_certfile"):
        ctx.load_cert_chain(kw["ssl_certfile"], kw.get("ssl_keyfile"))
    return ctx


def _moved(e: BaseException) -> bool:
    return str(e).startswith(("MOVED ", "ASK "))


def _slot_owner(slots: Any, slot: int) -> tuple[str, int]:
    """The (host, port) of the primary serving ``slot``, from a CLUSTER SLOTS reply."""
    for start, end, primary, *_ in slots:
        if int(start) <= slot <= int(end):
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            return host, int(primary[1])
    raise rx.ConnectionError(f"no Redis Cluster node serves slot {slot}")
