"""SSE responses: headers leave with the first events, a whole stream in one write."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from tokenomy.api.edge import EventStream


async def _serve(handler: Any, writes: list[bytes]) -> bytes:
    """Run ``handler`` once, noting in ``writes`` what the server's transport was given
    per write; the body the client read."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        tr: Any = request.transport
        write, writelines = tr.write, tr.writelines

        def noted_write(data: bytes) -> None:
            writes.append(bytes(data))
            write(data)

        def noted_writelines(seq: Any) -> None:
            seq = list(seq)
            writes.append(b"".join(seq))
            writelines(seq)

        tr.write, tr.writelines = noted_write, noted_writelines
        resp: web.StreamResponse = await handler(request)
        return resp

    app = web.Application()
    app.router.add_get("/", wrapped)
    async with (
        TestServer(app) as server,
        aiohttp.ClientSession() as session,
        session.get(server.make_url("/")) as r,
    ):
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        body = await r.read()
    return body


async def test_a_stream_that_arrives_whole_leaves_in_one_write() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = EventStream(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write_eof(b"data: 1\n\ndata: [DONE]\n\n")
        return resp

    writes: list[bytes] = []
    body = await _serve(handler, writes)
    assert body == b"data: 1\n\ndata: [DONE]\n\n"
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200") and writes[0].endswith(b"0\r\n\r\n")


async def test_headers_wait_for_the_first_events_then_each_write_goes_out() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = EventStream(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        assert writes == []  # prepared, but nothing sent yet
        await resp.write(b"data: 1\n\n")
        assert len(writes) == 1 and b"data: 1" in writes[0]
        await resp.write(b"data: 2\n\n")
        await resp.write_eof()
        return resp

    writes: list[bytes] = []
    body = await _serve(handler, writes)
    assert body == b"data: 1\n\ndata: 2\n\n"
    assert writes[0].startswith(b"HTTP/1.1 200") and len(writes) == 3
