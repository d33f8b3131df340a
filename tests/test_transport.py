"""The vendor HTTP client against a scripted raw-socket server: framing, reuse, failures."""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import zlib
from collections.abc import Awaitable, Callable

import pytest

from tokenomy.core.origin import Origin
from tokenomy.providers.response import HIGH_WATER, Response, TransportError
from tokenomy.providers.transport import Pool, _UpstreamConnection, header_block

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and body (Content-Length framed, as the client sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


class Server:
    """Answers each connection with a script; counts connections and requests."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(r, w)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def pool(self, **kw: float) -> Pool:
        limit = int(kw.pop("limit", 4))
        return Pool(
            Origin.parse(f"http://127.0.0.1:{self.port}/v1"),
            limit=limit,
            connect_timeout_s=kw.pop("connect", 2.0),
            read_timeout_s=kw.pop("read", 2.0),
        )


HEAD = header_block({"Content-Type": "application/json"})


def answer(body: bytes, *, status: int = 200, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def serve_forever(make: Callable[[bytes], bytes]) -> Script:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            _, body = await read_request(r)
            w.write(make(body))
            await w.drain()

    return script


async def post(pool: Pool, body: bytes = b"{}", timeout: float = 2.0) -> tuple[int, bytes]:
    resp = await pool.post("/chat/completions", HEAD, body, first_byte_timeout_s=timeout)
    return resp.status, await resp.read()


async def test_keep_alive_reuses_one_connection_and_sends_what_it_should() -> None:
    async with Server(serve_forever(lambda b: answer(b"echo:" + b))) as srv:
        pool = srv.pool()
        for i in range(5):
            assert await post(pool, b'{"n":%d}' % i) == (200, b'echo:{"n":%d}' % i)
        await pool.close()
    assert srv.connections == 1


async def test_request_line_host_and_length() -> None:
    async with Server(serve_forever(lambda b: answer(b"ok"))) as srv:
        pool = srv.pool()
        await post(pool, b'{"a":1}')
        await pool.close()
        seen: list[bytes] = []

        async def capture(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            head, body = await read_request(r)
            seen.append(head)
            w.write(answer(body))

        srv.script = capture
        pool = srv.pool()
        assert await post(pool, b'{"a":1}') == (200, b'{"a":1}')
        await pool.close()
        port = srv.port
    head = seen[0].decode()
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}\r\n" in head
    assert "Content-Length: 7\r\n" in head and "Content-Type: application/json\r\n" in head


async def test_chunked_gzip_and_informational_answers() -> None:
    payload = b'{"x":"' + b"y" * 5000 + b'"}'
    packed = gzip.compress(payload)

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(packed), 100):
            piece = packed[i : i + 100]
            w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await w.drain()
        w.write(b"0\r\n\r\n")
        await read_request(r)  # the connection is reused for a second, deflated answer
        body = zlib.compress(b"second")
        w.write(answer(body, extra="Content-Encoding: deflate\r\n"))

    async with Server(script) as srv:
        pool = srv.pool()
        resp = await pool.post("/c", HEAD, b"{}", first_byte_timeout_s=2)
        assert resp.status == 200 and "link" not in resp.headers
        assert await resp.read() == payload
        assert await post(pool) == (200, b"second")
        await pool.close()
    assert srv.connections == 1


async def test_body_until_close_and_connection_close_are_not_reused() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await w.drain()

    async with Server(script) as srv:
        pool = srv.pool()
        assert await post(pool) == (200, b"all of it")
        assert await post(pool) == (200, b"all of it")
        await pool.close()
    assert srv.connections == 2

    async def reset(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart of")
        await w.drain()
        await asyncio.sleep(0.05)
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()  # with no linger: a reset, not a clean close

    async with Server(reset) as srv:
        pool = srv.pool()
        with pytest.raises(TransportError, match="closed before the answer was whole"):
            await post(pool)  # a reset ends no body: "part of" may be part of it
        await pool.close()

    closing = serve_forever(lambda b: answer(b"bye", extra="Connection: close\r\n"))
    async with Server(closing) as srv:
        pool = srv.pool()
        assert await post(pool) == (200, b"bye")
        assert await post(pool) == (200, b"bye")
        await pool.close()
    assert srv.connections == 2


async def test_a_reused_connection_closed_by_the_server_is_retried_once() -> None:
    seen: list[bytes] = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        _, body = await read_request(r)
        seen.append(body)
        w.write(answer(body))
        await w.drain()
        _, body = await read_request(r)  # the next request on this connection: dropped
        seen.append(b"dropped " + body)

    async with Server(script) as srv:
        pool = srv.pool()
        assert await post(pool, b"1") == (200, b"1")
        assert await post(pool, b"2") == (200, b"2")  # its first connection died silently
        await pool.close()
    assert srv.connections == 2
    assert seen[:3] == [b"1", b"dropped 2", b"2"]


async def test_a_fresh_connection_that_closes_early_fails_without_retry() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)

    async with Server(script) as srv:
        pool = srv.pool()
        with pytest.raises(TransportError):
            await post(pool)
        await pool.close()
    assert srv.connections == 1


async def test_cut_body_stalled_body_and_slow_headers() -> None:
    async def cut(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await w.drain()

    async with Server(cut) as srv:
        pool = srv.pool()
        resp = await pool.post("/c", HEAD, b"{}", first_byte_timeout_s=2)
        with pytest.raises(TransportError):
            await resp.read()
        await pool.close()

    async def stall(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await w.drain()
        await asyncio.sleep(5)

    async with Server(stall) as srv:
        pool = srv.pool(read=0.3)
        resp = await pool.post("/c", HEAD, b"{}", first_byte_timeout_s=2)
        got = []
        with pytest.raises(TimeoutError):
            async for chunk in resp.chunks():
                got.append(chunk)
        assert got == [b"first"]
        await pool.close()

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        await asyncio.sleep(5)

    async with Server(silent) as srv:
        pool = srv.pool()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            await post(pool, timeout=0.3)
        assert loop.time() - t0 < 1.5
        await pool.close()


async def test_connection_refused_is_a_transport_error() -> None:
    async with Server(serve_forever(lambda b: b"")) as srv:
        port = srv.port
    pool = Pool(
        Origin.parse(f"http://127.0.0.1:{port}"), limit=2, connect_timeout_s=1, read_timeout_s=1
    )
    with pytest.raises(TransportError) as e:
        await post(pool)
    assert isinstance(e.value.__cause__, ConnectionRefusedError)
    await pool.close()


async def test_limit_queues_requests_and_every_one_is_answered() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            _, body = await read_request(r)
            await asyncio.sleep(0.01)
            w.write(answer(body))
            await w.drain()

    async with Server(script) as srv:
        pool = srv.pool(limit=2)
        got = await asyncio.gather(*(post(pool, b"%d" % i) for i in range(12)))
        assert got == [(200, b"%d" % i) for i in range(12)]
        await pool.close()
    assert srv.connections == 2


async def test_a_stream_released_early_closes_its_connection() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n")
            await w.drain()
            await asyncio.sleep(0.2)
            w.write(b"0\r\n\r\n")
            await w.drain()

    async with Server(script) as srv:
        pool = srv.pool()
        resp = await pool.post("/c", HEAD, b"{}", first_byte_timeout_s=2)
        chunks = resp.chunks()
        assert await anext(chunks) == b"one"
        resp.release()
        await chunks.aclose()
        resp = await pool.post("/c", HEAD, b"{}", first_byte_timeout_s=2)
        assert [c async for c in resp.chunks()] == [b"one"]
        await pool.close()
    assert srv.connections == 2


async def test_a_slow_reader_pauses_the_connection_and_loses_nothing() -> None:
    piece = b"z" * 65536
    count = 3 * HIGH_WATER // len(piece)

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(piece) * count))
        for _ in range(count):
            w.write(piece)
            await w.drain()

    async with Server(script) as srv:
        pool = srv.pool()
        resp = await pool.post("/c", HEAD, b"{}", first_byte_timeout_s=2)
        total = 0
        biggest = 0
        async for chunk in resp.chunks():
            total += len(chunk)
            biggest = max(biggest, len(chunk))
            await asyncio.sleep(0.02)  # a slow client
        assert total == len(piece) * count
        assert biggest < 2 * HIGH_WATER  # reading stopped instead of buffering it all
        await pool.close()


def test_header_lines_refuse_line_breaks_and_origins_parse() -> None:
    assert header_block({"A": "b"}) == b"A: b\r\n"
    # Framing is the client's own: configured copies are left out, not sent twice.
    assert header_block({"Host": "x", "content-length": "9", "X-A": "1"}) == b"X-A: 1\r\n"
    for bad in ({"A": "b\r\nX-Evil: 1"}, {"A\n": "b"}, {"A:B": "c"}, {"A": "b\0"}, {"": "v"}):
        with pytest.raises(ValueError):
            header_block(bad)
    o = Origin.parse("https://api.example.com/v1/")
    assert (o.scheme, o.host, o.port, o.path, o.host_header) == (
        "https",
        "api.example.com",
        443,
        "/v1",
        "api.example.com",
    )
    assert Origin.parse("http://[::1]:8080").host_header == "[::1]:8080"
    with pytest.raises(ValueError):
        Origin.parse("ftp://x")


class FakeTransport:
    """Stands in for a socket: records writes and whether reading is paused."""

    def __init__(self) -> None:
        self.paused = False
        self.closing = False
        self.written: list[bytes] = []

    def writelines(self, data: tuple[bytes, ...]) -> None:
        self.written.extend(data)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True


def fake_exchange() -> tuple[Pool, _UpstreamConnection, FakeTransport, Response]:
    """A request in flight on a pooled connection over a fake socket: the test feeds the
    answer's bytes itself, so they arrive in exactly one read."""
    loop = asyncio.get_running_loop()
    pool = Pool(Origin.parse("http://h"), limit=2, connect_timeout_s=1, read_timeout_s=1)
    pool._loop = loop
    conn = _UpstreamConnection(pool)
    t = FakeTransport()
    conn.connection_made(t)  # type: ignore[arg-type]
    pool._open += 1
    resp = Response(conn, loop, 5)
    conn.send(resp, b"", b"")
    return pool, conn, t, resp


async def test_a_connection_paused_by_its_last_bytes_goes_back_to_the_pool_reading() -> None:
    pool, conn, t, resp = fake_exchange()
    resp._streaming = True  # a stream whose reader is behind
    body = b"x" * (HIGH_WATER + 10)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert resp._done and pool._idle == [conn]
    assert not t.paused  # else the next answer on it would never be read
    assert b"".join([c async for c in resp.chunks()]) == body


async def test_a_body_that_fails_to_decode_is_an_error_even_when_it_ended() -> None:
    pool, conn, t, resp = fake_exchange()
    junk = b"this is not gzip"
    conn.data_received(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(junk)
        + junk
    )
    with pytest.raises(TransportError, match="undecodable"):
        await resp.read()
    assert t.closing and pool._idle == []


async def test_a_request_that_failed_late_on_a_reused_connection_is_not_sent_again() -> None:
    seen: list[bytes] = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        _, body = await read_request(r)
        seen.append(body)
        w.write(answer(body))
        await w.drain()
        _, body = await read_request(r)
        seen.append(body)
        await asyncio.sleep(0.3)  # working on it... then the connection drops

    async with Server(script) as srv:
        pool = srv.pool()
        assert await post(pool, b"1") == (200, b"1")
        with pytest.raises(TransportError):
            await post(pool, b"2")
        await asyncio.sleep(0.05)
        await pool.close()
    assert seen == [b"1", b"2"]  # the vendor saw (and would bill) it once


async def test_raw_deflate_bodies_decode_like_zlib_wrapped_ones() -> None:
    # RFC 9110 says deflate means zlib-wrapped; some servers send the raw stream.
    payload = b'{"choices": []}' * 300
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_body = raw.compress(payload) + raw.flush()
    bodies = iter(
        [
            ("deflate", raw_body),
            ("deflate", zlib.compress(payload)),
            ("deflate", raw_body[:1]),  # cut to one byte: not a deflate stream at all
            ("gzip", gzip.compress(payload)[:-12]),  # its end cut off
            ("gzip", b""),  # an empty body is no stream to finish
        ]
    )

    def make(_body: bytes) -> bytes:
        enc, body = next(bodies)
        return answer(body, extra=f"Content-Encoding: {enc}\r\n")

    async with Server(serve_forever(make)) as srv:
        pool = srv.pool()
        assert await post(pool) == (200, payload)
        assert await post(pool) == (200, payload)
        for _ in range(2):
            with pytest.raises(TransportError, match="undecodable"):
                await post(pool)
        assert await post(pool) == (200, b"")
        await pool.close()


async def test_a_base_url_query_rides_on_every_request() -> None:
    seen: list[bytes] = []

    async def capture(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(r)
            seen.append(head.split(b"\r\n", 1)[0])
            w.write(answer(b"{}"))
            await w.drain()

    async with Server(capture) as srv:
        origin = Origin.parse(f"http://127.0.0.1:{srv.port}/openai/v1?api-version=2024-10-21")
        pool = Pool(origin, limit=1, connect_timeout_s=2, read_timeout_s=2)
        for path in ("/chat/completions", "/embeddings?x=1"):
            resp = await pool.post(path, HEAD, b"{}", first_byte_timeout_s=2)
            await resp.read()
        await pool.close()
    assert seen == [
        b"POST /openai/v1/chat/completions?api-version=2024-10-21 HTTP/1.1",
        b"POST /openai/v1/embeddings?x=1&api-version=2024-10-21 HTTP/1.1",
    ]


def test_credentials_in_a_base_url_are_refused_not_dropped() -> None:
    for url in ("https://user:secret@api.example.com/v1", "https://token@api.example.com"):
        with pytest.raises(ValueError, match="credentials"):
            Origin.parse(url)
