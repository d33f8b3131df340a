"""A lean HTTP/1.1 server for the inference routes, in front of the aiohttp application.

Every connection starts here. A request to an inference route (``POST
/v1/chat/completions`` and the like) in the plain shape clients send (HTTP/1.1, a
``Content-Length`` body, no ``Expect``, ``Transfer-Encoding`` or ``Upgrade``) is parsed
and answered here. At the first request that is anything else (another route, another
method, an odd or malformed head) the connection is handed, with every byte of that
request, to aiohttp, which serves it from then on with the whole application and its own
strict parser and errors (answered in JSON). So this module never has to be a general
HTTP server: what it does not recognise exactly, it passes on; only what is not HTTP/1.x
at all (TLS, HTTP/2, bare-LF lines) or has an unknown method is refused here.

Against hostile clients: a head must arrive within ``server.header_timeout_s``, a body
may not pause longer than ``server.body_timeout_s`` (408 and a close); a body still to
come is read only for a known key whose org can pay for something; the bytes of
unauthenticated requests are capped over all connections; a refused body is read and
dropped so that the client sees the answer.

Why: aiohttp's server side (request and response objects, middlewares, a task per
connection fed through queues) cost a third of a gateway request's CPU; this path is a
head split, a dict and one write per answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Callable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

from tokenomy.api.edge import (
    InferenceRoute,
    authenticate,
    error_parts,
    internal_error,
    run_inference,
    too_large,
)
from tokenomy.api.http_errors import http_error
from tokenomy.api.lean_guards import METHODS, TOKEN, Drain, head_problem
from tokenomy.core.errors import GatewayError, Overloaded, RequestTimeout

if TYPE_CHECKING:
    from tokenomy.api.lean_site import LeanSite
    from tokenomy.ledger.broke_orgs import Turn

log = logging.getLogger(__name__)

#: A longer head (request line and headers) is aiohttp's to judge: its lines are 8 KiB at
#: most, and it answers 400 past that.
MAX_HEAD = 8190
#: Bytes a client may send ahead (pipelined) while its answer is being made.
MAX_AHEAD = 256 * 1024
#: Refusals waiting for their org's turn (ledger.broke_orgs) the site holds at most. Each
#: holds a socket, and what the kernel buffered of its body, whose close is seen only at
#: its answer: a flood of connections sent and closed at once would otherwise hold ten
#: seconds' worth of them (descriptors run out at 20,000 here). Past it, a refusal is
#: answered at once, undrained.
MAX_WAITING_REFUSALS = 4096

_VALUE = rb"[^\x00-\x08\x0a-\x1f\x7f]*"  # visible characters, spaces and tabs (RFC 9110)
#: Header lines, each ended by CRLF. Linear to match: neither part can run into the next.
_BLOCK = re.compile(rb"(?:" + TOKEN + rb":" + _VALUE + rb"\r\n)*")
#: Headers that change how the request is framed or answered: aiohttp handles those.
_NOT_PLAIN = frozenset({"transfer-encoding", "expect", "upgrade"})
#: Headers that must not be given twice (a second Content-Length is a smuggling attempt).
_ONCE = frozenset({"content-length", "host", "connection"})
_REASONS = {s.value: s.phrase for s in HTTPStatus}


class _Date:
    """The Date header, formatted once a second."""

    __slots__ = ("line", "second")

    def __init__(self) -> None:
        self.second = -1
        self.line = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.line = f"Date: {formatdate(now, usegmt=True)}\r\nServer: tokenomy\r\n"
        return self.line


_date = _Date()


def _tokens(value: str) -> set[str]:
    """A comma-separated header's tokens, lower case (``Connection: keep-alive, close``)."""
    return {t.strip() for t in value.lower().split(",")}


#: A chunk at least this long is written beside its framing, not copied into it.
_COPY_MAX = 16 * 1024
_LAST_CHUNK = b"0\r\n\r\n"


def _chunk_parts(head: bytes, data: bytes, last: bool) -> list[bytes]:
    """``head`` (a stream's head, or b""), ``data`` as one chunk of a chunked body (none
    when empty: an empty chunk would end the body) and, if ``last``, the body's end.

    A long chunk (a burst of events read at once) stays a part of its own: the transport
    writes the parts together (writev) where joining them would copy it once more."""
    if not data:
        return [head + _LAST_CHUNK if last else head]
    if len(data) < _COPY_MAX:
        return [b"%b%x\r\n%b\r\n%b" % (head, len(data), data, _LAST_CHUNK if last else b"")]
    return [head + b"%x\r\n" % len(data), data, b"\r\n0\r\n\r\n" if last else b"\r\n"]


def response_head(status: int, headers: Mapping[str, str], framing: str) -> bytes:
    """A response's status line and headers; ``framing`` ends them (length, close)."""
    fields = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
    if fields.count("\n") != len(headers):
        raise ValueError("a response header holds a line break")
    reason = _REASONS.get(status, "Unknown")
    return f"HTTP/1.1 {status} {reason}\r\n{fields}{_date()}{framing}\r\n".encode("latin-1")


class _Exchange:
    """One request served by the lean server (see ``edge.Exchange``).

    A JSON answer is kept until the call has been settled and recorded, then written: as
    under aiohttp, the client never sees an answer whose record could still be lost.
    """

    __slots__ = ("_body", "answer", "conn", "head", "headers")

    def __init__(self, conn: _ClientConnection, headers: dict[str, str], body: bytes) -> None:
        self.conn = conn
        self.headers = headers
        self._body = body
        self.answer: bytes | None = None  # a whole response, written after the call
        self.head: bytes | None = None  # a stream's head, not yet sent

    async def body(self, limit: int) -> bytes:
        # Its length was checked against the limit before reading it. Handed over once:
        # a large body is not held here while its call is served.
        body, self._body = self._body, b""
        return body

    async def reply(self, body: bytes, headers: Mapping[str, str]) -> None:
        self.answer = self.conn.whole(200, headers, body)

    async def start_stream(self, headers: Mapping[str, str]) -> None:
        self.head = response_head(200, headers, self.conn.framing("Transfer-Encoding: chunked"))

    async def send(self, chunk: bytes) -> None:
        if chunk:
            await self.conn.send(_chunk_parts(self._take_head(), chunk, last=False))

    async def end(self, chunk: bytes) -> None:
        await self.conn.send(_chunk_parts(self._take_head(), chunk, last=True))

    def _take_head(self) -> bytes:
        head, self.head = self.head, None
        return head or b""

    @property
    def started(self) -> bool:
        """Whether any of a stream has been sent (after which no error answer can go)."""
        return self.conn.sent_stream


class _ClientConnection(asyncio.Protocol):
    """One client connection, until (if ever) it is handed to aiohttp.

    Requests are taken one at a time: the next is not looked at while an answer is being
    made or is waiting for the client to read it, and reading stops once more than
    :data:`MAX_AHEAD` bytes wait unread.
    """

    def __init__(self, site: LeanSite) -> None:
        self.site = site
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.pos = 0  # where the unread part of buf starts
        self.parts: list[bytes] = []  # a body still arriving, and how much it needs
        self.need = 0
        self.busy = False
        self.close_after = False
        self.lost = False
        self.reading_paused = False
        self.writing_paused = False
        self.drain: asyncio.Future[None] | None = None
        self.sent_stream = False
        self.active = 0.0
        #: When the head now arriving began (or the connection opened); None between
        #: requests, when the keep-alive timeout applies instead.
        self.head_since: float | None = None
        self.route: InferenceRoute | None = None  # of a body still arriving
        self.held = 0  # unauthenticated bytes this connection holds (see LeanSite)
        #: A refusal waiting for its org's turn, and its timer (see _refuse_later).
        self.refusal: Callable[[], None] | None = None
        self.refusal_timer: asyncio.TimerHandle | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if self.site.closing:
            self.transport.close()  # accepted as the server stopped listening
            return
        self.active = self.head_since = self.site.loop.time()
        self.site.connections.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.site.connections.discard(self)
        self._count(0)
        self._wake(ConnectionResetError("the client closed the connection"))

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake(None)
        if not self.busy and not self.lost:
            self._take_more()  # an answer the client was slow to read has gone

    def data_received(self, data: bytes) -> None:
        now = self.active = self.site.loop.time()
        if self.need:
            self.parts.append(data)
            self.need -= len(data)
            if self.need > 0:
                return
            self.buf, self.pos, self.parts, self.need = b"".join(self.parts), 0, [], 0
        elif self.pos < len(self.buf):
            self.buf, self.pos = self.buf[self.pos :] + data, 0
        else:
            self.buf, self.pos = data, 0
            if self.head_since is None:
                self.head_since = now
        if not self.busy and not self.writing_paused:
            self._next()
        self._hold_back()
        held = 0 if self.need else len(self.buf) - self.pos
        if held != self.held and not self.lost:  # in the common case both are 0
            self._count(held)

    def _count(self, held: int) -> None:
        """Keep the site's total of unauthenticated bytes; refuse past its cap."""
        if held == self.held:
            return
        site = self.site
        site.unauthenticated += held - self.held
        grew = held > self.held
        self.held = held
        if grew:
            site.unauthenticated_peak = max(site.unauthenticated_peak, site.unauthenticated)
            if site.unauthenticated > site.max_unauthenticated and not self.busy:
                self._refuse(Overloaded("The server holds too many unfinished requests."))

    # requests

    def _hold_back(self) -> None:
        """Stop reading while too much waits unread."""
        if len(self.buf) - self.pos > MAX_AHEAD and not self.reading_paused and not self.lost:
            assert self.transport is not None
            self.transport.pause_reading()
            self.reading_paused = True

    def _take_more(self) -> None:
        """Between requests: read again, and start on what has arrived."""
        if self.reading_paused and len(self.buf) - self.pos <= MAX_AHEAD:
            assert self.transport is not None
            self.reading_paused = False
            self.transport.resume_reading()
        if self.pos < len(self.buf):
            self._next()
            self._hold_back()

    def _next(self) -> None:
        """Start on the request at the front of the unread bytes, if it has arrived."""
        buf, pos = self.buf, self.pos
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0 or end - pos > MAX_HEAD:
            problem = head_problem(buf, pos, len(buf) if end < 0 else end + 2)
            if problem is not None:
                self._refuse(http_error(400, problem))
            elif end >= 0 or len(buf) - pos > MAX_HEAD:
                self._hand_off()  # a long head: aiohttp's limits and errors apply
            return
        self.head_since = None
        line_end = buf.find(b"\r\n", pos)
        method, _, rest = buf[pos:line_end].partition(b" ")
        target, _, version = rest.partition(b" ")
        route = self.site.routes.get(target)
        if method != b"POST" or version != b"HTTP/1.1" or route is None:
            self._hand_off_checked(end, method, target)
            return
        if _BLOCK.fullmatch(buf, line_end + 2, end + 2) is None:
            self._hand_off_checked(end, method, target)
            return
        headers: dict[str, str] = {}
        if line_end < end:
            for line in buf[line_end + 2 : end].split(b"\r\n"):
                raw_name, _, raw_value = line.partition(b":")
                name = raw_name.lower().decode()
                if name in headers:
                    if name in _ONCE:
                        self._hand_off()
                        return
                    continue  # the first of a repeated header counts, as aiohttp's get() does
                headers[name] = raw_value.strip(b" \t").decode("latin-1")
        if not _NOT_PLAIN.isdisjoint(headers):
            self._hand_off()
            return
        length_text = headers.get("content-length", "0")
        if not (length_text.isdigit() and length_text.isascii()):
            self._hand_off()
            return
        limit = self.site.services.config.server.max_body_bytes
        digits = length_text.lstrip("0")
        # Past 18 digits it is over any limit (and int() refuses 4,300 digits and more).
        length = int(digits or "0") if len(digits) <= 18 else limit + 1
        connection = headers.get("connection")
        close = connection is not None and "close" in _tokens(connection)
        start = end + 4
        if length > limit:
            # Refused before its body is read, so the connection cannot be reused.
            self._refuse(too_large(limit), route, length - (len(buf) - start))
            return
        total = start + length
        if len(buf) < total:
            # A body still to come is read only for a known key (checked from the head,
            # in memory), so no one can make the server hold bodies without one.
            try:
                key = authenticate(headers, self.site.services)
            except GatewayError as e:
                self._refuse(e, route, total - len(buf))
                return
            room = self.site.refusals_waiting < MAX_WAITING_REFUSALS
            broke = self.site.services.ledger_stage.head_refusal(key, length, wait=room)
            if broke is not None:
                self._refuse_later(*broke, route, total - len(buf))
                return
            # The head stays, to be read again with the body once it is all here.
            self.parts, self.need = [buf[pos:]], total - len(buf)
            self.buf, self.pos = b"", 0
            self.route = route
            return
        self.pos = total
        self.busy = True
        self.close_after = close
        ex = _Exchange(self, headers, buf[start:total])
        if total == len(buf):
            # Nothing pipelined behind it: the buffer goes now, not when the next request
            # comes (a 400 KB prompt's was held twice, with its body, while it was served).
            self.buf, self.pos = b"", 0
        self.site.serving(self._serve(route, ex))

    async def _serve(self, route: InferenceRoute, ex: _Exchange) -> None:
        try:
            await run_inference(ex, self.site.services, route.build)
        except Exception as e:
            if not isinstance(e, GatewayError):
                log.exception("unhandled error on POST %s", route.path)
                e = internal_error()
            if ex.started:
                self._abort()
            else:
                self._write_error(e, route)
        else:
            if ex.answer is not None:
                self._write(ex.answer)
        finally:
            self.sent_stream = False
            self._finished()

    def _finished(self) -> None:
        """One answer is out: close, or go on to the next request."""
        self.busy = False
        if self.lost:
            return
        assert self.transport is not None
        if self.close_after or self.site.closing:
            self.transport.close()
            return
        self.active = self.site.loop.time()
        # The next head's time runs from now if some of it is here already.
        self.head_since = self.active if self.pos < len(self.buf) else None
        if not self.writing_paused:  # else resume_writing goes on, once the client reads
            self._take_more()

    def _hand_off_checked(self, end: int, method: bytes, target: bytes) -> None:
        """Hand a whole head to aiohttp, unless it is not HTTP/1.x at all (which aiohttp
        would answer with silence or guess at) or its method is unknown (which aiohttp
        refuses before it knows the route, so before it knows the error's dialect)."""
        problem = head_problem(self.buf, self.pos, end + 2)
        if problem is None and method not in METHODS:
            err = http_error(405, f"unknown method {method.decode('latin-1')[:20]!r}")
        elif problem is not None:
            err = http_error(400, problem)
        else:
            self._hand_off()
            return
        dialect = (
            self.site.routes.get(b"/v1/messages") if target.startswith(b"/v1/messages") else None
        )
        self._refuse(err, dialect)

    def _hand_off(self) -> None:
        """From this request on, aiohttp serves the connection."""
        transport = self.transport
        assert transport is not None and not self.busy
        self._count(0)
        self.site.connections.discard(self)
        handler = self.site.fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        data, self.buf, self.pos = self.buf[self.pos :], b"", 0
        handler.data_received(data)

    # answers

    def framing(self, line: str) -> str:
        return f"{line}\r\nConnection: close\r\n" if self.close_after else f"{line}\r\n"

    def whole(self, status: int, headers: Mapping[str, str], body: bytes) -> bytes:
        framing = self.framing(f"Content-Type: application/json\r\nContent-Length: {len(body)}")
        return response_head(status, headers, framing) + body

    def _write_error(self, err: GatewayError, route: InferenceRoute | None) -> None:
        status, headers, body = error_parts(err, route is not None and route.anthropic)
        self._write(self.whole(status, headers, body))

    def _refuse_later(
        self, err: GatewayError, turn: Turn, route: InferenceRoute, left: int
    ) -> None:
        """Refuse a large request of an org that can pay for nothing, from its head (no
        body could change the answer, so none is kept or parsed: see ledger.broke_orgs),
        at its org's turn with the connection unread: a tenant sending such requests back
        to back gets a few a second in all, not thousands however many connections it
        opens, and the other tenants keep the event loop. Outside the turns (a flood),
        the body is left unread even then; past :data:`MAX_WAITING_REFUSALS` waiting
        (a zero wait), it is answered at once."""
        assert self.transport is not None
        if turn.wait_s == 0:
            self._refuse(err, route)
            return
        self.busy = True  # no sweep, and no next request, while it waits
        self.buf, self.pos = b"", 0
        self._count(0)  # what was held of it is dropped (it may have come pipelined)
        if not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        self.site.refusals_waiting += 1
        self.refusal = functools.partial(self._refuse, err, route, left if turn.drain else 0)
        self.refusal_timer = self.site.loop.call_later(turn.wait_s, self.refuse_now)

    def refuse_now(self) -> None:
        """Give a refusal waiting for its turn now (at its turn, or as the server stops:
        the client gets its 402 rather than a reset)."""
        refusal, self.refusal = self.refusal, None
        if refusal is None:
            return
        self.site.refusals_waiting -= 1
        if self.refusal_timer is not None:
            self.refusal_timer.cancel()
            self.refusal_timer = None
        refusal()

    def _refuse(
        self, err: GatewayError, route: InferenceRoute | None = None, left: int = 0
    ) -> None:
        """Answer ``err`` and close, first reading and dropping the ``left`` bytes of a
        body the client is still sending (see :class:`Drain`)."""
        transport = self.transport
        assert transport is not None
        self.close_after = True
        self.buf, self.pos, self.parts, self.need, self.route = b"", 0, [], 0, None
        self._count(0)
        self._write_error(err, route)
        self.site.connections.discard(self)
        if left <= 0 or self.lost:
            transport.close()
            return
        drain = Drain(self.site.loop, left, self.site.services.config.server.body_timeout_s)
        transport.set_protocol(drain)
        drain.connection_made(transport)
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()

    def check_time(self, head_before: float, body_before: float) -> None:
        """408 and a close for a head or a body that is taking too long."""
        if self.busy or self.transport is None:
            return
        if self.need:
            if self.active <= body_before:
                self._refuse(
                    RequestTimeout("The request body took too long to arrive."), self.route
                )
        elif self.head_since is not None and self.head_since <= head_before:
            self._refuse(RequestTimeout("The request head took too long to arrive."))

    def _write(self, data: bytes) -> None:
        if not self.lost:
            assert self.transport is not None
            self.transport.write(data)

    async def send(self, parts: list[bytes]) -> None:
        """Part of a stream (its bytes in ``parts``); waits while the client is slow to
        read."""
        if self.lost:
            raise ConnectionResetError("the client closed the connection")
        assert self.transport is not None
        self.sent_stream = True
        if len(parts) == 1:
            self.transport.write(parts[0])
        else:
            self.transport.writelines(parts)
        if self.writing_paused:
            self.drain = self.site.loop.create_future()
            await self.drain

    def _wake(self, exc: BaseException | None) -> None:
        drain, self.drain = self.drain, None
        if drain is not None and not drain.done():
            if exc is None:
                drain.set_result(None)
            else:
                drain.set_exception(exc)

    def _abort(self) -> None:
        """A stream failed after it started: the client must not take it for whole."""
        self.close_after = True  # nothing more is read from this connection
        if not self.lost:
            assert self.transport is not None
            self.transport.abort()

    def close_if_idle(self, idle_before: float) -> None:
        if not self.busy and self.active <= idle_before and self.transport is not None:
            self.transport.close()
