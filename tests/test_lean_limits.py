"""Hostile clients at the lean server: slow heads and bodies, huge and unauthenticated bodies,
heads that are not HTTP/1.1. Each gets a JSON answer and a close, promptly, without the
server buffering what it has not authenticated.

Raw sockets, so the tests control exactly which bytes arrive and when.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import Gateway, make_config
from tests.servers import ThreadServer
from tests.test_lean_server import CHAT, Client, request, served_lean
from tokenomy.api.lean_site import LeanSite
from tokenomy.app import app_for
from tokenomy.services import build_services

HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 0.8


@pytest.fixture(scope="module")
def strict(sim: ThreadServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own with short header and body timeouts and a small cap on the
    bytes unauthenticated clients may have it hold."""
    tmp: Path = tmp_path_factory.mktemp("strict")
    cfg = make_config(sim.url, tmp)
    server = cfg.server.model_copy(
        update={
            "header_timeout_s": HEADER_TIMEOUT_S,
            "body_timeout_s": BODY_TIMEOUT_S,
            "max_unauthenticated_bytes": 65536,
            "max_body_bytes": 16 * 1024 * 1024,
        }
    )
    svc = build_services(cfg.model_copy(update={"server": server}), dict(os.environ))
    srv = ThreadServer(lambda: app_for(svc)).start()
    secret, rec = svc.keys.create("strict")
    svc.key_cache.put(secret, rec)
    yield Gateway(srv, svc, secret, sim.url)
    srv.stop()


def site_of(gw: Gateway) -> LeanSite:
    runner = gw.server._runner
    assert runner is not None
    (site,) = runner.sites
    assert isinstance(site, LeanSite)
    return site


def closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """Everything the server sends until it closes, and how long that took (or a failure
    if it is still open after ``seconds``)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        pytest.fail(f"still open after {seconds} s; got {got[:200]!r}")
    except ConnectionResetError:
        pass
    return time.monotonic() - started, got


def json_answer(raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"].startswith("application/json"), raw[:300]
    return status, headers, orjson.loads(body[: int(headers["content-length"])])


# ---- slow clients -------------------------------------------------------------------------


def test_a_head_that_stops_halfway_is_answered_408_and_closed_after_the_header_timeout(
    strict: Gateway,
) -> None:
    with socket.create_connection(("127.0.0.1", strict.server.port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Le")
        took, raw = closed_within(s, HEADER_TIMEOUT_S * 6)
    assert took >= HEADER_TIMEOUT_S * 0.9
    status, headers, body = json_answer(raw)
    assert status == 408 and headers["connection"] == "close"
    assert "error" in body


def test_a_head_trickled_a_byte_at_a_time_is_cut_at_the_header_timeout(strict: Gateway) -> None:
    """Progress does not extend the header timeout: the whole head must come in time."""
    with socket.create_connection(("127.0.0.1", strict.server.port)) as s:
        started = time.monotonic()
        closed = False
        for b in b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"a" * 200:
            try:
                s.sendall(bytes([b]))
            except OSError:
                closed = True
                break
            time.sleep(0.02)
            if time.monotonic() - started > HEADER_TIMEOUT_S * 6:
                break
        if not closed:
            closed_within(s, HEADER_TIMEOUT_S * 6)
    assert time.monotonic() - started < HEADER_TIMEOUT_S * 8


def test_a_connection_that_never_sends_is_closed_after_the_header_timeout(
    strict: Gateway,
) -> None:
    with socket.create_connection(("127.0.0.1", strict.server.port)) as s:
        took, _ = closed_within(s, HEADER_TIMEOUT_S * 6)
    assert took >= HEADER_TIMEOUT_S * 0.9


def test_a_body_that_stalls_is_answered_408_in_the_routes_dialect(strict: Gateway) -> None:
    head = request(strict, b"", path="/v1/messages", extra="Content-Length: 1000\r\n")
    with socket.create_connection(("127.0.0.1", strict.server.port)) as s:
        s.sendall(head + b'{"model": ')
        took, raw = closed_within(s, BODY_TIMEOUT_S * 6)
    assert took >= BODY_TIMEOUT_S * 0.9
    status, _, body = json_answer(raw)
    assert status == 408
    assert body["type"] == "error"


def test_an_idle_keep_alive_connection_is_not_cut_by_the_header_timeout(strict: Gateway) -> None:
    c = Client(strict.server.port)
    try:
        c.send(request(strict))
        resp, _, _ = c.answer()
        assert resp.status_code == 200
        time.sleep(HEADER_TIMEOUT_S * 3)  # idle between requests: the keep-alive timeout's
        c.send(request(strict))
        resp, _, _ = c.answer()
        assert resp.status_code == 200
    finally:
        c.close()


# ---- bodies -------------------------------------------------------------------------------

BIG = 8 * 1024 * 1024


def unauthenticated_big_body(port: int, sent_before_answer: list[int], raw: list[bytes]) -> None:
    """Sends an 8 MB body with a wrong key a slice at a time, noting how much of it had
    gone when the answer arrived; then sends the rest, as a client that does not read
    until it has sent would."""
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer tk-wrong\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % BIG
    )
    piece = b" " * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        sent = 0
        s.setblocking(False)
        got = b""
        while sent < BIG:
            with contextlib.suppress(BlockingIOError):
                got += s.recv(65536)
            if got and not sent_before_answer:
                sent_before_answer.append(sent)
            s.settimeout(10)
            s.sendall(piece)
            s.setblocking(False)
            sent += len(piece)
            if not got:
                time.sleep(0.001)
        s.settimeout(10)
        if not sent_before_answer:
            sent_before_answer.append(sent)
        while chunk := s.recv(65536):
            got += chunk
        raw.append(got)


def test_unauthenticated_8mb_bodies_are_refused_before_they_are_read(strict: Gateway) -> None:
    """Twenty at once: each is answered 401 from its head alone, the rest of its body is
    read and dropped (never held), and the client, still sending, gets the answer."""
    site = site_of(strict)
    site.unauthenticated_peak = 0
    results: list[tuple[list[int], list[bytes]]] = [([], []) for _ in range(20)]
    threads = [
        threading.Thread(
            target=unauthenticated_big_body, args=(strict.server.port, sent, raw), daemon=True
        )
        for sent, raw in results
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for sent, raw in results:
        assert raw, "no answer"
        status, headers, body = json_answer(raw[0])
        assert status == 401 and headers["connection"] == "close", body
        assert sent[0] < 2 * 1024 * 1024  # answered long before the body was all sent
    assert site.unauthenticated_peak <= 65536


def test_a_50_mb_body_gets_a_413_in_json_not_a_reset(gateway: Gateway) -> None:
    body = b" " * (50 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", gateway.server.port), timeout=20) as s:
        s.sendall(request(gateway, body))  # the whole body goes, then the answer is read
        _, raw = closed_within(s, 20)
    status, headers, err = json_answer(raw)
    assert status == 413 and headers["connection"] == "close"
    assert "larger than the limit" in str(err["error"])


def test_unauthenticated_bytes_beyond_the_cap_are_refused_503(strict: Gateway) -> None:
    site = site_of(strict)
    socks = []
    try:
        answers = []
        for _ in range(12):  # 12 x 7,000 bytes of unfinished heads: past the 64 KiB cap
            s = socket.create_connection(("127.0.0.1", strict.server.port), timeout=5)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nX-Pad: " + b"a" * 7000)
            socks.append(s)
            time.sleep(0.02)
        assert site.unauthenticated_peak <= 65536 + 8000
        for s in socks:
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                answers.append(s.recv(65536))
        statuses = [json_answer(a)[0] for a in answers if a]
        assert 503 in statuses  # refused at the cap (others may have timed out: 408)
        assert set(statuses) <= {503, 408}
    finally:
        for s in socks:
            s.close()


# ---- malformed heads ----------------------------------------------------------------------

TLS_CLIENT_HELLO = bytes.fromhex(
    "160301010a010001060303" + "ab" * 32 + "20" + "cd" * 32 + "0004130113020100"
)


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v1/chat/completions HTTP/1.1\nHost: gw\nContent-Length: 2\n\n{}",  # bare LF
        b"GET /v1/models HTTP/1.1\nHost: gw\n\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\nX-A: b\r\n\r\n",  # one bare LF
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 with prior knowledge
        b"POST /v1/chat/completions HTTP/2.0\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}",
        b"GET /healthz HTTP/2.0\r\nHost: gw\r\n\r\n",
        TLS_CLIENT_HELLO,
        b"\x00\x01\x02\x03garbage",
    ],
)
def test_malformed_heads_get_a_json_400_and_a_close(gateway: Gateway, raw: bytes) -> None:
    with socket.create_connection(("127.0.0.1", gateway.server.port)) as s:
        s.sendall(raw)
        took, got = closed_within(s, 3)
    assert took < 3
    status, _, body = json_answer(got)
    assert status in (400, 505), got
    assert "error" in body


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"FOO /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n", 405),  # a method no route has
        (b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET /v1/\xff HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
        (b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX Bad: a\r\n\r\n", 400),
    ],
)
def test_http_errors_from_the_fallback_server_are_json(
    gateway: Gateway, raw: bytes, status: int
) -> None:
    with socket.create_connection(("127.0.0.1", gateway.server.port)) as s:
        s.sendall(raw)
        _, got = closed_within(s, 3)
    got_status, _, body = json_answer(got)
    assert got_status in (status, 400), got
    assert set(body["error"]) >= {"message", "type", "code"}  # type: ignore[arg-type]


def test_a_head_aiohttp_cannot_parse_on_a_connection_it_serves_is_json_in_the_dialect(
    gateway: Gateway,
) -> None:
    """Once aiohttp serves a connection, its own parse errors still name no route: the
    dialect comes from the request line's target."""
    with socket.create_connection(("127.0.0.1", gateway.server.port)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")  # handed to aiohttp
        s.settimeout(3)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        s.sendall(b"FOO /v1/messages HTTP/1.1\r\nHost: gw\r\n\r\n")
        _, got = closed_within(s, 3)
    status, _, body = json_answer(got)
    assert status == 400
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_a_late_request_line_after_a_served_request_is_still_timed(strict: Gateway) -> None:
    """A keep-alive connection that starts a second head and stops is cut too."""
    with socket.create_connection(("127.0.0.1", strict.server.port)) as s:
        s.sendall(request(strict, CHAT) + b"POST /v1/chat/comp")
        _, raw = closed_within(s, HEADER_TIMEOUT_S * 8)
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"HTTP/1.1 408" in raw


def test_the_lean_path_still_serves_after_all_this(strict: Gateway) -> None:
    c = Client(strict.server.port)
    try:
        c.send(request(strict))
        resp, headers, _ = c.answer()
        assert resp.status_code == 200 and served_lean(headers)
    finally:
        c.close()


def test_a_slow_head_on_a_connection_aiohttp_serves_is_cut_at_the_header_timeout(
    strict: Gateway,
) -> None:
    """After a request of another route the connection is aiohttp's for good; its next
    head is held to the same timeout."""
    with socket.create_connection(("127.0.0.1", strict.server.port)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        s.settimeout(3)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        took, raw = closed_within(s, HEADER_TIMEOUT_S * 6)
    assert took >= HEADER_TIMEOUT_S * 0.9
    status, headers, _ = json_answer(raw)
    assert status == 408 and headers["connection"] == "close"
