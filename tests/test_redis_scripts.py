"""The pipelined script client against a real Redis, and against servers that misbehave."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from redis import exceptions as rx
from redis.asyncio import Redis

from tests.needs import require_redis
from tokenomy.store.redis_scripts import ScriptClient, encode

DB = 12

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
PAIR = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2}"
FAIL = "return redis.error_reply('no such thing')"


@pytest.fixture
async def key() -> object:
    require_redis()
    k = f"tokenomy-test:scripts:{secrets.token_hex(6)}"
    yield k
    r = Redis(db=DB)
    await r.delete(k)
    await r.aclose()


def test_commands_are_encoded_as_resp_arrays() -> None:
    for _ in range(2):  # the second time from the segments of the first
        assert encode("EVALSHA", "ab", 1, "k", b"\x00v", -5) == (
            b"*6\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n$2\r\n\x00v\r\n$2\r\n-5\r\n"
        )
    with pytest.raises(TypeError):
        encode(1.5)
    with pytest.raises(TypeError):
        encode(1.0)  # equal to the int 1 already seen, still not an int
    assert encode(True) == b"*1\r\n$1\r\n1\r\n"  # bools go as ints, not as "True"
    assert encode("é", 10**30) == b"*2\r\n$2\r\n\xc3\xa9\r\n$31\r\n1" + b"0" * 30 + b"\r\n"


def test_the_segment_cache_starts_over_when_full() -> None:
    from tokenomy.store import redis_scripts

    for i in range(redis_scripts._SEGMENTS_MAX + 10):
        assert encode(f"id-{i}") == b"*1\r\n$%d\r\nid-%d\r\n" % (len(f"id-{i}"), i)
    assert len(redis_scripts._SEGMENTS) <= redis_scripts._SEGMENTS_MAX


async def test_scripts_load_once_answer_in_order_and_reach_the_right_db(key: str) -> None:
    c = ScriptClient(db=DB)
    await c.execute("SCRIPT", "FLUSH")  # the first call must fall back to EVAL
    incr = c.register_script(INCR)
    got = await asyncio.gather(*(incr(keys=[key], args=[i]) for i in range(1, 201)))
    # Pipelined on one connection, answered in order: running totals, each seen once.
    assert sorted(got) == [i * (i + 1) // 2 for i in range(1, 201)]
    assert await c.execute("SCRIPT", "EXISTS", incr.sha) == [1]
    pair = c.register_script(PAIR)
    assert await pair(keys=["k"], args=["v", 21]) == [b"k", b"v", 42]
    r = Redis(db=DB)
    assert int(await r.get(key) or 0) == 200 * 201 // 2  # in db 12, not db 0
    await r.aclose()
    with pytest.raises(rx.ResponseError, match="no such thing"):
        await c.register_script(FAIL)()
    assert await incr(keys=[key], args=[1]) == 200 * 201 // 2 + 1  # still usable after it
    await c.aclose()


async def test_submitted_calls_leave_together_and_load_the_script_if_needed(key: str) -> None:
    c = ScriptClient(db=DB)
    incr = c.register_script(INCR)
    first = incr.submit(keys=[key], args=[5])  # not connected yet: connects first
    assert await first == 5
    await c.execute("SCRIPT", "FLUSH")  # the next must fall back to EVAL
    conn = c._conn
    assert conn is not None and conn.transport is not None
    writes: list[bytes] = []
    write = conn.transport.write

    def noted(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    conn.transport.write = noted  # type: ignore[method-assign]
    futs = [incr.submit(keys=[key], args=[i]) for i in (1, 2, 3)]  # queued, no await
    assert await asyncio.gather(*futs) == [6, 8, 11]
    assert writes[0].count(b"EVALSHA") == 3  # the three left in one write
    with pytest.raises(rx.ResponseError, match="no such thing"):
        await c.register_script(FAIL).submit()
    await c.aclose()


async def test_closing_answers_the_calls_already_queued_first(key: str) -> None:
    c = ScriptClient(db=DB)
    incr = c.register_script(INCR)
    assert await incr(keys=[key], args=[1]) == 1  # connected
    queued = [incr.submit(keys=[key], args=[1]) for _ in range(50)]
    await c.aclose()  # before any of them was even written
    assert [f.result() for f in queued] == list(range(2, 52))
    assert c._conn is None
    await c.aclose()  # a second close (the other owner's) is harmless


async def test_closing_a_silent_server_gives_up_after_the_call_timeout() -> None:
    srv, port = await _server(b"+OK\r\n")
    c = ScriptClient("127.0.0.1", port, timeout_s=0.3)
    assert await c.execute("PING") == b"OK"
    queued = c.submit("PING")  # never answered: the server reads once, then sleeps
    t = asyncio.get_running_loop().time()
    await c.aclose()
    assert asyncio.get_running_loop().time() - t < 2
    await asyncio.sleep(0.05)
    assert queued.done() and isinstance(queued.exception(), rx.ConnectionError)
    srv.close()


async def test_a_lost_connection_fails_its_calls_and_the_next_call_reconnects(key: str) -> None:
    c = ScriptClient(db=DB)
    incr = c.register_script(INCR)
    assert await incr(keys=[key], args=[1]) == 1
    r = Redis(db=DB)
    ids = [cl["id"] for cl in await r.client_list() if cl.get("db") == str(DB)]
    for cid in ids:
        await r.client_kill_filter(_id=cid)
    await r.aclose()
    await asyncio.sleep(0.05)
    # The next call finds the connection gone and opens another.
    assert await incr(keys=[key], args=[1]) == 2
    await c.aclose()


async def _server(answer: bytes | None) -> tuple[asyncio.Server, int]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(65536)
        if answer is not None:
            w.write(answer)
            await w.drain()
        await asyncio.sleep(5)
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


async def test_a_silent_server_times_out_and_garbage_fails_the_connection() -> None:
    srv, port = await _server(None)
    c = ScriptClient("127.0.0.1", port, timeout_s=0.3)
    with pytest.raises(rx.TimeoutError):
        await c.execute("PING")
    await c.aclose()
    srv.close()

    srv, port = await _server(b"?what\r\n")
    c = ScriptClient("127.0.0.1", port)
    with pytest.raises(rx.ConnectionError):
        await c.execute("PING")
    await c.aclose()
    srv.close()


async def test_an_unreachable_redis_is_a_connection_error() -> None:
    srv, port = await _server(None)
    srv.close()
    await srv.wait_closed()
    c = ScriptClient("127.0.0.1", port)
    with pytest.raises(rx.ConnectionError):
        await c.execute("PING")
    await c.aclose()


def test_urls() -> None:
    c = ScriptClient.from_url("redis://:pw@10.0.0.1:6380/4")
    assert c._addr == ("10.0.0.1", 6380)
    assert c._hello == [encode("AUTH", "pw"), encode("SELECT", 4)]
    with pytest.raises(ValueError):
        ScriptClient.from_url("unix:///run/redis.sock")
    assert ScriptClient.for_url("unix:///run/redis.sock") is None  # sockets stay with redis-py
    tls = ScriptClient.for_url("rediss://u:pw@h:6380")  # TLS is served here (managed Redis)
    assert tls is not None and tls._ssl is not None
    assert tls._hello == [encode("AUTH", "u", "pw")]


async def test_a_server_that_refuses_at_once_fails_calls_and_never_hangs_them() -> None:
    # Redis at maxclients accepts, answers one error and closes.
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"-ERR max number of clients reached\r\n")
        await w.drain()
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    c = ScriptClient("127.0.0.1", srv.sockets[0].getsockname()[1], timeout_s=30)
    for _ in range(3):
        results = await asyncio.wait_for(
            asyncio.gather(*(c.execute("PING") for _ in range(5)), return_exceptions=True), 2
        )
        assert all(isinstance(r, rx.RedisError) for r in results), results
        await asyncio.sleep(0.01)
    await c.aclose()
    srv.close()


async def test_a_refused_password_closes_its_socket() -> None:
    closed = asyncio.Event()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(65536)
        w.write(b"-WRONGPASS invalid username-password pair\r\n")
        await w.drain()
        await r.read()  # until the client closes
        closed.set()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    c = ScriptClient("127.0.0.1", srv.sockets[0].getsockname()[1], password="nope")
    with pytest.raises(rx.ResponseError, match="WRONGPASS"):
        await c.execute("PING")
    await asyncio.wait_for(closed.wait(), 2)
    await c.aclose()
    srv.close()
