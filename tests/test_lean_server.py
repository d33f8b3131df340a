"""The lean server: inference routes answered on raw HTTP/1.1, the rest handed to aiohttp.

Raw sockets, so the tests control exactly which bytes arrive and when; the answers are
read with h11, an HTTP parser independent of both servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import h11
import orjson
import pytest
from aiohttp import web
from sqlalchemy import select

from tests.conftest import Gateway, make_config, sim_faults
from tests.servers import ThreadServer
from tokenomy.api.edge import INFERENCE_ROUTES, SERVICES, InferenceRoute
from tokenomy.api.lean_server import MAX_AHEAD, MAX_HEAD, _chunk_parts, _ClientConnection
from tokenomy.api.lean_site import LeanSite
from tokenomy.app import app_for
from tokenomy.config import WriterConfig
from tokenomy.core.errors import RateLimited
from tokenomy.services import build_services
from tokenomy.store.schema import usage_events

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}


class _Keyed(Protocol):
    key: str


def request(
    gateway: _Keyed,
    body: Any = CHAT,
    path: str = "/v1/chat/completions",
    method: str = "POST",
    extra: str = "",
) -> bytes:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {gateway.key}\r\n"
        f"Content-Type: application/json\r\n{extra}"
    )
    if "Transfer-Encoding" not in extra and "Content-Length" not in extra:
        head += f"Content-Length: {len(raw)}\r\n"
    return head.encode() + b"\r\n" + raw


class Client:
    """A raw connection and an h11 reader of the answers that come back on it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h11.Connection(h11.CLIENT)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> tuple[h11.Response, dict[str, str], bytes]:
        """The next whole response: its status line, headers (lower-case) and body."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        if self.conn.our_state is h11.IDLE:
            # h11 tracks both sides; tell it a request went, without sending anything.
            self.conn.send(h11.Request(method="POST", target="/", headers=[("Host", "gw")]))
            self.conn.send(h11.EndOfMessage())
        resp: h11.Response | None = None
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(65536)
                self.conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                resp = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert resp is not None
                headers = {k.decode().lower(): v.decode() for k, v in resp.headers}
                return resp, headers, body
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before a whole answer")

    def closed(self) -> bool:
        """Whether the server has closed the connection (EOF within a second)."""
        self.sock.settimeout(1.0)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client(gateway: Gateway) -> Iterator[Client]:
    c = Client(gateway.server.port)
    yield c
    c.close()


def served_lean(headers: dict[str, str]) -> bool:
    return headers["server"] == "tokenomy"


def test_keep_alive_serves_request_after_request_on_one_connection(
    gateway: Gateway, client: Client
) -> None:
    for _ in range(3):
        client.send(request(gateway))
        resp, headers, body = client.answer()
        assert resp.status_code == 200 and served_lean(headers)
        assert headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(body)
        assert orjson.loads(body)["object"] == "chat.completion"
        assert headers["x-request-id"].startswith("req_")
    assert not client.closed()


def test_pipelined_requests_are_answered_in_order(gateway: Gateway, client: Client) -> None:
    first = {**CHAT, "model": "sim-small"}
    second = {**CHAT, "model": "no-such-model"}
    client.send(request(gateway, first) + request(gateway, second))
    r1, _, b1 = client.answer()
    r2, _, b2 = client.answer()
    assert r1.status_code == 200 and orjson.loads(b1)["model"] == "sim-small"
    assert r2.status_code == 404 and orjson.loads(b2)["error"]["code"] == "model_not_found"


def test_a_request_that_arrives_a_few_bytes_at_a_time_is_served(
    gateway: Gateway, client: Client
) -> None:
    raw = request(gateway)
    for i in range(0, len(raw), 7):
        client.send(raw[i : i + 7])
        time.sleep(0.001)
    resp, headers, body = client.answer()
    assert resp.status_code == 200 and served_lean(headers)
    assert orjson.loads(body)["object"] == "chat.completion"


def test_streams_are_chunked_and_end_cleanly(gateway: Gateway, client: Client) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    client.send(request(gateway, body))
    resp, headers, data = client.answer()
    assert resp.status_code == 200 and served_lean(headers)
    assert headers["content-type"] == "text/event-stream"
    assert headers["transfer-encoding"] == "chunked"
    events = [e for e in data.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    usage = orjson.loads(events[-2].removeprefix("data: "))["usage"]
    assert usage["completion_tokens"] > 0
    client.send(request(gateway))  # the connection is still good after a stream
    assert client.answer()[0].status_code == 200


def test_other_routes_hand_the_connection_to_aiohttp_for_good(
    gateway: Gateway, client: Client
) -> None:
    client.send(request(gateway))
    assert served_lean(client.answer()[1])
    client.send(request(gateway, b"", path="/v1/models", method="GET"))
    resp, headers, body = client.answer()
    assert resp.status_code == 200 and not served_lean(headers)
    assert orjson.loads(body)["object"] == "list"
    client.send(request(gateway))  # aiohttp serves the inference routes as well
    resp, headers, _ = client.answer()
    assert resp.status_code == 200 and not served_lean(headers)
    client.send(request(gateway, {**CHAT, "stream": True}))
    resp, headers, data = client.answer()
    assert resp.status_code == 200 and not served_lean(headers)
    assert headers["content-type"] == "text/event-stream"
    assert data.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(
    "path, extra, raw",
    [
        # a chunked body: aiohttp de-chunks it
        (
            "/v1/chat/completions",
            "Transfer-Encoding: chunked\r\n",
            b"%x\r\n%b\r\n0\r\n\r\n" % (len(orjson.dumps(CHAT)), orjson.dumps(CHAT)),
        ),
        ("/v1/chat/completions?trace=1", "", None),  # a query string
        ("/v1/chat/completions", "Expect: 100-continue\r\n", None),
    ],
)
def test_requests_outside_the_plain_shape_are_served_by_aiohttp(
    gateway: Gateway, client: Client, path: str, extra: str, raw: bytes | None
) -> None:
    client.send(request(gateway, raw if raw is not None else CHAT, path=path, extra=extra))
    resp, headers, body = client.answer()
    assert resp.status_code == 200, body
    assert not served_lean(headers)
    assert orjson.loads(body)["object"] == "chat.completion"


@pytest.mark.parametrize(
    "extra",
    [
        "Content-Length: 5\r\n",  # a second, different Content-Length: smuggling
        "X-Odd : value\r\n",  # a space before the colon
        "X-Folded: a\r\n b\r\n",  # an obsolete line fold
        "X-Nul: a\x00b\r\n",
    ],
)
def test_malformed_heads_get_aiohttps_400_not_a_guess(
    gateway: Gateway, client: Client, extra: str
) -> None:
    raw = orjson.dumps(CHAT)
    client.send(request(gateway, CHAT, extra=f"Content-Length: {len(raw)}\r\n{extra}"))
    resp, headers, _ = client.answer()
    assert resp.status_code == 400
    assert not served_lean(headers)


def test_a_body_over_the_limit_is_refused_before_it_is_read(
    gateway: Gateway, client: Client
) -> None:
    limit = gateway.services.config.server.max_body_bytes
    client.send(request(gateway, b"", extra=f"Content-Length: {limit + 1}\r\n"))
    resp, headers, body = client.answer()
    assert resp.status_code == 413 and served_lean(headers)
    assert headers["connection"] == "close"
    assert "larger than the limit" in orjson.loads(body)["error"]["message"]
    assert client.closed()


def test_a_content_length_of_thousands_of_digits_is_a_413(gateway: Gateway, client: Client) -> None:
    client.send(request(gateway, b"", extra=f"Content-Length: {'9' * 5000}\r\n"))
    resp, headers, body = client.answer()
    assert resp.status_code == 413 and served_lean(headers)
    assert "larger than the limit" in orjson.loads(body)["error"]["message"]


def test_leading_zeros_do_not_make_a_length_long(gateway: Gateway, client: Client) -> None:
    raw = orjson.dumps(CHAT)
    client.send(request(gateway, CHAT, extra=f"Content-Length: {'0' * 30}{len(raw)}\r\n"))
    resp, headers, _ = client.answer()
    assert resp.status_code == 200 and served_lean(headers)


def test_a_head_past_the_limit_is_aiohttps_to_refuse(gateway: Gateway, client: Client) -> None:
    blanks = " " * (MAX_HEAD + 100)
    client.send(request(gateway, extra=f"X-Long: a{blanks}b\r\n"))  # one read, whole
    resp, headers, _ = client.answer()
    assert resp.status_code == 400 and not served_lean(headers)


def test_a_repeated_connection_header_is_aiohttps_to_judge(
    gateway: Gateway, client: Client
) -> None:
    client.send(request(gateway, extra="Connection: keep-alive\r\nConnection: close\r\n"))
    resp, headers, _ = client.answer()
    assert resp.status_code == 200 and not served_lean(headers)
    assert client.closed()


def test_connection_close_is_honoured(gateway: Gateway, client: Client) -> None:
    client.send(request(gateway, extra="Connection: Keep-Alive, Close\r\n"))
    resp, headers, _ = client.answer()
    assert resp.status_code == 200 and headers["connection"] == "close"
    assert client.closed()


def test_errors_come_in_the_routes_dialect(gateway: Gateway, client: Client) -> None:
    client.send(request(gateway, b"{bad", path="/v1/messages"))
    resp, headers, body = client.answer()
    assert resp.status_code == 400 and served_lean(headers)
    err = orjson.loads(body)
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    client.send(request(gateway, b"{bad"))
    resp, _, body = client.answer()
    assert resp.status_code == 400
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"


def test_an_empty_body_is_a_clear_400(gateway: Gateway, client: Client) -> None:
    client.send(request(gateway, b""))
    resp, _, body = client.answer()
    assert resp.status_code == 400
    assert "empty" in orjson.loads(body)["error"]["message"]


def _raising_app(gateway: Gateway, exc: Exception) -> web.Application:
    def build(body: Any, key: Any, svc: Any) -> Any:
        raise exc

    app = web.Application()
    app[SERVICES] = gateway.services
    app[INFERENCE_ROUTES] = (InferenceRoute("/v1/boom", build),)
    return app


def test_an_unexpected_failure_is_a_json_500_and_the_connection_lives_on(
    gateway: Gateway,
) -> None:
    srv = ThreadServer(lambda: _raising_app(gateway, RuntimeError("boom"))).start()
    c = Client(srv.port)
    try:
        for _ in range(2):
            c.send(request(gateway, path="/v1/boom"))
            resp, headers, body = c.answer()
            assert resp.status_code == 500 and served_lean(headers)
            assert "internal error" in orjson.loads(body)["error"]["message"]
    finally:
        c.close()
        srv.stop()


def test_a_gateway_error_keeps_its_status_and_headers(gateway: Gateway) -> None:
    srv = ThreadServer(
        lambda: _raising_app(gateway, RateLimited("slow down", retry_after=3.0))
    ).start()
    c = Client(srv.port)
    try:
        c.send(request(gateway, path="/v1/boom"))
        resp, headers, body = c.answer()
        assert resp.status_code == 429 and headers["retry-after"] == "3"
        assert orjson.loads(body)["error"]["message"] == "slow down"
    finally:
        c.close()
        srv.stop()


class _FakeTransport:
    """What a _ClientConnection writes, whether it reads, and whether it closed; no socket."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.written.append(b"".join(parts))

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class _FakeSite:
    """Requests that are started are kept (not run): the test finishes them."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.connections: set[_ClientConnection] = set()
        self.closing = False
        self.routes = {b"/v1/x": InferenceRoute("/v1/x", lambda *a: None)}  # type: ignore[arg-type, return-value]
        self.services = SimpleNamespace(
            config=SimpleNamespace(server=SimpleNamespace(max_body_bytes=1000))
        )
        self.started: list[Any] = []
        self.unauthenticated = self.unauthenticated_peak = 0
        self.max_unauthenticated = 1 << 30

    def serving(self, coro: Any) -> None:
        coro.close()
        self.started.append(coro)


def _raw(n: int = 0) -> bytes:
    body = b"{}" + b" " * n
    return b"POST /v1/x HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


async def _fake_connection() -> tuple[_ClientConnection, _FakeTransport, _FakeSite]:
    site = _FakeSite()
    conn = _ClientConnection(site)  # type: ignore[arg-type]
    tr = _FakeTransport()
    conn.connection_made(tr)  # type: ignore[arg-type]
    return conn, tr, site


async def test_a_client_that_sends_without_reading_is_stopped_at_max_ahead() -> None:
    conn, tr, site = await _fake_connection()
    conn.data_received(_raw())
    assert len(site.started) == 1 and conn.busy
    conn.data_received(_raw(900) * (2 * MAX_AHEAD // 900))  # pipelined, 2 x MAX_AHEAD
    assert not tr.reading and len(site.started) == 1  # read no further; one at a time
    served = 1
    while not tr.reading:
        conn._finished()  # an answer is out: the next request starts
        served += 1
        assert len(site.started) == served
    assert len(conn.buf) - conn.pos <= MAX_AHEAD  # reading again once caught up


async def test_the_next_request_waits_for_a_slow_reader_to_take_the_answer() -> None:
    conn, _, site = await _fake_connection()
    conn.data_received(_raw() + _raw())
    assert len(site.started) == 1
    conn.pause_writing()  # the first answer has not been read yet
    conn._finished()
    assert len(site.started) == 1
    conn.resume_writing()
    assert len(site.started) == 2


async def test_a_stream_waits_while_the_client_reads_slowly_and_fails_once_it_is_gone() -> None:
    conn = _ClientConnection(_FakeSite())  # type: ignore[arg-type]
    tr = _FakeTransport()
    conn.connection_made(tr)  # type: ignore[arg-type]
    conn.pause_writing()
    send = asyncio.ensure_future(conn.send([b"one"]))
    await asyncio.sleep(0.01)
    assert not send.done() and tr.written == [b"one"]
    conn.resume_writing()
    await asyncio.wait_for(send, 1)
    conn.pause_writing()
    send = asyncio.ensure_future(conn.send([b"two"]))
    await asyncio.sleep(0.01)
    conn.connection_lost(None)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(send, 1)
    with pytest.raises(ConnectionResetError):
        await conn.send([b"three"])


async def test_idle_connections_are_closed_busy_ones_are_not() -> None:
    site = _FakeSite()
    idle, busy = _ClientConnection(site), _ClientConnection(site)  # type: ignore[arg-type]
    t_idle, t_busy = _FakeTransport(), _FakeTransport()
    idle.connection_made(t_idle)  # type: ignore[arg-type]
    busy.connection_made(t_busy)  # type: ignore[arg-type]
    busy.busy = True
    for c in (idle, busy):
        c.close_if_idle(site.loop.time() + 1)
    assert t_idle.closed and not t_busy.closed
    fresh = _ClientConnection(site)  # type: ignore[arg-type]
    t_fresh = _FakeTransport()
    fresh.connection_made(t_fresh)  # type: ignore[arg-type]
    fresh.close_if_idle(site.loop.time() - 1)  # active since: not idle long enough
    assert not t_fresh.closed


SLOW = """  - name: slowpoke
    deployments: [{vendor: sim, model: sim-slow, price: sim/sim-small}]
"""


class _OwnGateway:
    """A gateway of the test's own (not the shared one), so the test can shut it down."""

    def __init__(
        self, sim: ThreadServer, tmp: Path, shutdown_timeout: float = 10.0, sync: bool = False
    ) -> None:
        cfg = make_config(sim.url, tmp, extra=SLOW)
        if sync:  # every record committed before its answer ends
            cfg = cfg.model_copy(update={"writer": WriterConfig(flush_interval_ms=0)})
        self.svc = build_services(cfg, dict(os.environ))
        self.server = ThreadServer(
            lambda: app_for(self.svc), shutdown_timeout=shutdown_timeout
        ).start()
        self.key, rec = self.svc.keys.create("shutdown test")
        self.svc.key_cache.put(self.key, rec)

    def send(self, body: dict[str, Any]) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
        sock.sendall(request(self, body))
        return sock

    def shut_down(self) -> list[tuple[str, int]]:
        """Clean up as ``tokenomy serve`` does on SIGTERM; the calls recorded."""
        self.server.stop()
        with self.svc.engine.connect() as conn:
            rows = conn.execute(select(usage_events.c.status, usage_events.c.http_status))
            return [(r[0], r[1]) for r in rows]


def test_shutdown_waits_for_the_call_of_a_client_that_has_gone(
    sim: ThreadServer, tmp_path: Path
) -> None:
    gw = _OwnGateway(sim, tmp_path, shutdown_timeout=10.0)
    sock = gw.send({"model": "slowpoke", "max_tokens": 20, "messages": CHAT["messages"]})
    time.sleep(0.3)
    sock.close()  # the client gives up; the call goes on upstream
    time.sleep(0.1)
    assert gw.shut_down() == [("ok", 200)]


def test_a_call_past_the_shutdown_timeout_is_cancelled_and_recorded(
    sim: ThreadServer, tmp_path: Path
) -> None:
    gw = _OwnGateway(sim, tmp_path, shutdown_timeout=0.5)
    body = {"model": "slowpoke", "stream": True, "max_tokens": 500, "messages": CHAT["messages"]}
    sock = gw.send(body)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # streaming, far from done
    assert gw.shut_down() == [("cancelled", 499)]
    sock.settimeout(2)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(65536):
            pass  # the connection is closed, not left open
    sock.close()


def test_refusals_waiting_for_their_turn_are_answered_when_the_server_stops(
    sim: ThreadServer, tmp_path: Path
) -> None:
    # A broke org's large requests wait for their turns unread (ledger.broke_orgs); a
    # shutdown meanwhile answers them their 402 rather than resetting them.
    gw = _OwnGateway(sim, tmp_path)
    org = gw.svc.ledger.create_org("broke", "USD")
    gw.server.call(gw.svc.refresh_accounts())
    secret, rec = gw.svc.keys.create("broke", org_id=org.id)
    gw.svc.key_cache.put(secret, rec)
    content = "lorem ipsum dolor sit amet " * 2_300  # ~62 KB: refused from the head
    raw = orjson.dumps({"model": "sim-small", "max_tokens": 10,
                        "messages": [{"role": "user", "content": content}]})  # fmt: skip
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
    ).encode()
    first = socket.create_connection(("127.0.0.1", gw.server.port), timeout=5)
    first.sendall(head + raw)  # read whole and refused: the org is noted broke
    assert first.recv(65536).startswith(b"HTTP/1.1 402 ")
    first.close()
    waiting = []
    for _ in range(20):  # turns 1/16 s apart: the last ones are over a second away
        sock = socket.create_connection(("127.0.0.1", gw.server.port), timeout=5)
        sock.sendall(head + raw[:2048])
        waiting.append(sock)
    runner = gw.server._runner
    assert runner is not None
    site = next(s for s in runner.sites if isinstance(s, LeanSite))
    deadline = time.monotonic() + 5
    while site.refusals_waiting < len(waiting):  # every head read, each waiting its turn
        assert time.monotonic() < deadline
        time.sleep(0.005)
    gw.shut_down()
    for sock in waiting:
        got = b""
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while b"\r\n\r\n" not in got and (more := sock.recv(65536)):
                got += more
        assert got.startswith(b"HTTP/1.1 402 "), got[:200]
        sock.close()


def test_a_cut_stream_is_committed_before_its_body_ends(sim: ThreadServer, tmp_path: Path) -> None:
    gw = _OwnGateway(sim, tmp_path, sync=True)
    sim_faults(sim.url, "single-a", ["disconnect:3"])
    body = {"model": "single", "stream": True, "max_tokens": 60, "messages": CHAT["messages"]}
    sock = gw.send(body)
    data = b""
    while not data.endswith(b"0\r\n\r\n"):  # the end of the chunked body
        more = sock.recv(65536)
        assert more, data
        data += more
    with gw.svc.engine.connect() as conn:  # at once, no flush: it must be there already
        rows = conn.execute(select(usage_events.c.status)).all()
    assert [r[0] for r in rows] == ["upstream_cut"]
    assert b"ended before it was complete" in data or b"broke off" in data
    sock.close()
    gw.shut_down()


@pytest.mark.parametrize("size", [0, 1, 16 * 1024 - 1, 16 * 1024, 400_000])
@pytest.mark.parametrize("last", [False, True])
def test_a_chunk_is_framed_the_same_whether_copied_or_written_beside_its_framing(
    size: int, last: bool
) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    parts = _chunk_parts(b"HEAD\r\n\r\n", data, last)
    assert len(parts) == (3 if size >= 16 * 1024 else 1)  # long data is not copied
    if size >= 16 * 1024:
        assert parts[1] is data
    framed = (b"%x\r\n%b\r\n" % (size, data)) if size else b""
    assert b"".join(parts) == b"HEAD\r\n\r\n" + framed + (b"0\r\n\r\n" if last else b"")
