"""The bench's C open-loop client against scripted servers: framing, statuses, failures.

Its figures are the bench's latency targets, so a client that miscounts an answer's end
(chunked, close-delimited) or hides a failure would misreport every system it loads.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "bench" / "openloop.c"

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler on this machine (make bench installs gcc)")
    exe = tmp_path_factory.mktemp("openloop") / "openloop"
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-o", str(exe), str(SOURCE), "-lm"], check=True)
    return exe


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    return head + body


class Server:
    """Answers every request on a connection with ``answer`` until it returns False."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                self.requests.append(await read_request(reader))
                if not await self.answer(reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


Serve = Callable[[Answer], Awaitable[tuple["Server", str]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> tuple[Server, str]:
        s = Server(answer)
        srv = await asyncio.start_server(s.handle, "127.0.0.1", 0)
        servers.append(srv)
        port = srv.sockets[0].getsockname()[1]
        return s, f"http://127.0.0.1:{port}/v1/chat/completions"

    yield start
    for srv in servers:
        srv.close()
        await srv.wait_closed()


async def run(
    client: Path, url: str, tmp_path: Path, *extra: str, rate: int = 200, seconds: float = 0.5
) -> dict[str, object]:
    body = tmp_path / "body.json"
    body.write_bytes(b'{"model": "m", "messages": []}')
    proc = await asyncio.create_subprocess_exec(
        str(client),
        "--url",
        url,
        "--body-file",
        str(body),
        "--rate",
        str(rate),
        "--duration",
        str(seconds),
        "--warmup",
        "0",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out)
    return result


def fixed(status: str, body: bytes, extra: str = "", length: int | None = None) -> Answer:
    """The same answer every time (``length``: a Content-Length other than the body's)."""
    n = len(body) if length is None else length

    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(f"HTTP/1.1 {status}\r\nContent-Length: {n}\r\n{extra}\r\n".encode() + body)
        await w.drain()
        return True

    return answer


async def test_content_length_answers_reuse_connections(
    client: Path, serve: Serve, tmp_path: Path
) -> None:
    server, url = await serve(fixed("200 OK", b'{"ok": true}'))
    r = await run(client, url, tmp_path, "--header", "Authorization: Bearer sk-test")
    assert r["sent"] == 100 and r["ok"] == 100 and r["dropped"] == 0
    assert r["statuses"] == {"200": 100} and r["errors"] == {}
    assert r["client"] == "openloop.c"
    lat = r["latency_ms"]
    assert isinstance(lat, dict) and 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    # Sent as a client would: the body whole, the header given, kept-alive connections.
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer sk-test\r\n" in first
    assert b"\r\nContent-Type: application/json\r\n" in first
    assert first.endswith(b'\r\n\r\n{"model": "m", "messages": []}')
    assert server.connections < 100


async def test_chunked_answers_end_at_the_last_chunk(
    client: Path, serve: Serve, tmp_path: Path
) -> None:
    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"data: {}\n\n", b"x" * 70000, b"data: [DONE]\n\n"):
            w.write(b"%x\r\n%s\r\n" % (len(part), part))
            await w.drain()
        w.write(b"0\r\nX-Trailer: 1\r\n\r\n")
        await w.drain()
        return True

    server, url = await serve(answer)
    r = await run(client, url, tmp_path)
    assert r["ok"] == 100 and r["errors"] == {}
    # Each answer ended where its framing said: the connections were reused.
    assert server.connections < 100


async def test_close_delimited_answers_end_at_close(
    client: Path, serve: Serve, tmp_path: Path
) -> None:
    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: {}\n\n")
        await w.drain()
        return False  # closed: the end of this answer

    server, url = await serve(answer)
    r = await run(client, url, tmp_path)
    assert r["ok"] == 100 and r["errors"] == {}
    assert server.connections == 100


async def test_error_statuses_are_counted_not_timed(
    client: Path, serve: Serve, tmp_path: Path
) -> None:
    _, url = await serve(fixed("429 Too Many Requests", b'{"error": {}}', "Retry-After: 1\r\n"))
    r = await run(client, url, tmp_path)
    assert r["statuses"] == {"429": 100}
    assert r["ok"] == 0
    assert r["latency_ms"] == {"p50": None, "p90": None, "p99": None, "p99.9": None, "max": None}


async def test_a_server_that_never_answers_times_out(
    client: Path, serve: Serve, tmp_path: Path
) -> None:
    async def answer(r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> bool:
        await r.read()  # until the client gives up and closes
        return False

    _, url = await serve(answer)
    r = await run(client, url, tmp_path, "--timeout", "0.3", rate=20)
    assert r["ok"] == 0 and r["errors"] == {"Timeout": 10}


async def test_bytes_past_the_answer_are_a_protocol_error(
    client: Path, serve: Serve, tmp_path: Path
) -> None:
    # A Content-Length shorter than the body sent: the client must not count it as ok.
    _, url = await serve(fixed("200 OK", b"too long", length=2))
    r = await run(client, url, tmp_path, rate=20)
    assert r["ok"] == 0 and r["errors"] == {"ProtocolError": 10}


async def test_refused_connections_and_the_in_flight_cap(
    client: Path, serve: Serve, tmp_path: Path
) -> None:
    async def slow(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.4)
        return await fixed("200 OK", b"{}")(_r, w)

    _, url = await serve(slow)
    r = await run(client, url, tmp_path, "--max-inflight", "5", rate=100, seconds=0.2)
    assert r["ok"] == 5 and r["dropped"] == 15 and r["sent"] == 5

    r = await run(client, f"http://127.0.0.1:{socket_port_closed()}/", tmp_path, rate=20)
    assert r["ok"] == 0 and r["errors"] == {"ConnectError": 10}


def socket_port_closed() -> int:
    """A port nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_only_loopback_targets(client: Path, tmp_path: Path) -> None:
    body = tmp_path / "b.json"
    body.write_bytes(b"{}")
    p = subprocess.run(
        [
            str(client),
            "--url",
            "http://10.0.0.1:80/",
            "--body-file",
            str(body),
            "--rate",
            "1",
            "--duration",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "loopback" in p.stderr


async def test_trace_lists_every_counted_answer_in_send_order(
    client: Path, serve: Serve, tmp_path: Path
) -> None:
    answers = iter(["200 OK", "503 Service Unavailable"] * 100)

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        status = next(answers)
        if status == "200 OK":
            await asyncio.sleep(0.05)  # each 200 finishes after the 503 sent after it
        return await fixed(status, b"{}")(r, w)

    _, url = await serve(answer)
    trace = tmp_path / "trace.txt"
    r = await run(client, url, tmp_path, "--trace", str(trace), rate=100, seconds=0.4)
    head, *lines = trace.read_text().splitlines()
    # The origin is on the monotonic clock (the server's logs can be lined up with it).
    label, origin = head.rsplit(" ", 1)
    assert label == "# origin" and 0 < float(origin) <= time.monotonic()
    rows = [line.split() for line in lines]
    assert len(rows) == 40 and r["ok"] == 20  # the 503s are traced, not in the percentiles
    assert sorted(row[2] for row in rows) == ["200"] * 20 + ["503"] * 20
    sends = [float(row[0]) for row in rows]
    assert sends == sorted(sends) and 0 <= sends[0] < sends[-1] < 0.5
    assert all(0 < float(row[1]) < 1 for row in rows)
