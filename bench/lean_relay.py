"""A bare relay on tokenomy's own HTTP stack: its lean server and its vendor client, with
no pipeline (no auth, no metering, no ledger, no record).

Beside bench/bare_relay.py (the same relay on aiohttp), it separates the pipeline's own
cost from the HTTP stack's: tokenomy ÷ this relay is what the pipeline adds, this relay ÷
the aiohttp one is what the HTTP stack saves. Like the aiohttp relay it parses the body
to learn the stream flag and model, forwards the bytes unchanged, and relays the answer
chunk by chunk as it comes.

    PYTHONPATH=src python bench/lean_relay.py --port 9000 --upstream http://127.0.0.1:8081 \
        --stream-upstream http://127.0.0.1:8082 --long-upstream http://127.0.0.1:8083
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from types import SimpleNamespace

import orjson
import uvloop
from aiohttp import web

from tokenomy.api import lean_server, lean_site
from tokenomy.api.edge import INFERENCE_ROUTES, SERVICES, InferenceRoute
from tokenomy.config import ServerConfig
from tokenomy.core.errors import GatewayError, InvalidRequest
from tokenomy.core.origin import Origin
from tokenomy.providers.transport import Pool, header_block

PATH = "/v1/chat/completions"
STREAM_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _pool(base: str) -> Pool:
    return Pool(Origin.parse(base), limit=256, connect_timeout_s=10, read_timeout_s=120)


class RelayConnection(lean_server._ClientConnection):
    """A lean-server connection whose inference route is the bare relay."""

    async def _serve(self, route: InferenceRoute, ex: lean_server._Exchange) -> None:  # type: ignore[override]
        relay: Relay = self.site.relay  # type: ignore[attr-defined]
        try:
            await relay.serve(ex)
        except Exception as e:
            if ex.started:
                self._abort()
            else:
                self._write_error(e if isinstance(e, GatewayError) else GatewayError(str(e)), route)
        else:
            if ex.answer is not None:
                self._write(ex.answer)
        finally:
            self.sent_stream = False
            self._finished()


class Relay:
    def __init__(self, upstream: str, stream: str, long: str) -> None:
        self.pools = {"json": _pool(upstream), "sse": _pool(stream), "long": _pool(long)}
        self.head = header_block({"Content-Type": "application/json"})

    async def serve(self, ex: lean_server._Exchange) -> None:
        body = await ex.body(0)
        try:
            obj = orjson.loads(body)
            stream = bool(obj.get("stream"))
            long = obj.get("model") == "bench-long"
        except (orjson.JSONDecodeError, AttributeError):
            raise InvalidRequest("invalid JSON") from None
        pool = self.pools["long" if long else "sse" if stream else "json"]
        auth = ex.headers.get("authorization")
        head = self.head + (f"Authorization: {auth}\r\n".encode("latin-1") if auth else b"")
        resp = await pool.post(PATH, head, body, first_byte_timeout_s=120)
        if not stream:
            await ex.reply(await resp.read(), {})
            return
        await ex.start_stream(STREAM_HEADERS)
        last = b""
        async for chunk in resp.chunks():
            if last:
                await ex.send(last)
            last = chunk
        await ex.end(last)


class RelaySite(lean_site.LeanSite):
    relay: Relay

    async def start(self) -> None:
        self._runner._reg_site(self)
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: RelayConnection(self), self._host, self._port, backlog=4096
        )
        self._sweeper = self.loop.call_later(self.sweep_s, self._sweep)


async def serve(args: argparse.Namespace) -> None:
    app = web.Application()
    # What the lean server reads of the services: its limits, and for a body still
    # arriving a key lookup and the ledger's refusal from the head (any key passes and
    # none is refused: a bare relay checks none).
    app[SERVICES] = SimpleNamespace(  # type: ignore[misc]
        config=SimpleNamespace(server=ServerConfig()),
        key_cache=SimpleNamespace(lookup=lambda secret: secret),
        ledger_stage=SimpleNamespace(head_refusal=lambda key, body_bytes, wait=True: None),
    )
    app[INFERENCE_ROUTES] = (InferenceRoute(PATH, None),)  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = RelaySite(runner, args.host, args.port)
    site.relay = Relay(args.upstream, args.stream_upstream, args.long_upstream)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="base URL answering JSON")
    p.add_argument("--stream-upstream", required=True, help="base URL answering SSE")
    p.add_argument("--long-upstream", required=True, help="base URL answering a long SSE")
    args = p.parse_args()
    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
