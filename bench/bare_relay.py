"""A bare Python relay: the floor any Python gateway pays before doing real work.

aiohttp + uvloop + orjson, one pooled ClientSession, no auth, no metering. It parses the
body only to learn whether the client asked for a stream (a gateway must parse it too)
and which model (``bench-long`` goes to the long stream's upstream), forwards the bytes
unchanged and relays the answer chunk by chunk as it comes.

    python bench/bare_relay.py --port 9000 --upstream http://127.0.0.1:8081 \
        --stream-upstream http://127.0.0.1:8082 --long-upstream http://127.0.0.1:8083
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import orjson
import uvloop
from aiohttp import web

SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
)


def create_app(upstream: str, stream_upstream: str, long_upstream: str) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    plain_url = upstream.rstrip("/") + "/v1/chat/completions"
    stream_url = stream_upstream.rstrip("/") + "/v1/chat/completions"
    long_url = long_upstream.rstrip("/") + "/v1/chat/completions"

    async def start(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
        app[SESSION] = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        )

    async def stop(app: web.Application) -> None:
        await app[SESSION].close()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            obj = orjson.loads(body)
            stream = bool(obj.get("stream"))
            long = obj.get("model") == "bench-long"
        except (orjson.JSONDecodeError, AttributeError):
            return web.json_response({"error": {"message": "invalid JSON"}}, status=400)
        headers = {"Content-Type": "application/json"}
        auth = request.headers.get("Authorization")
        if auth:
            headers["Authorization"] = auth
        session = request.app[SESSION]
        url = long_url if long else stream_url if stream else plain_url
        async with session.post(url, data=body, headers=headers) as up:
            if not stream:
                data = await up.read()
                return web.Response(body=data, status=up.status, content_type="application/json")
            resp = web.StreamResponse(status=up.status)
            for k, v in up.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    resp.headers[k] = v
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app.router.add_post("/v1/chat/completions", chat)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="base URL answering JSON")
    p.add_argument("--stream-upstream", required=True, help="base URL answering SSE")
    p.add_argument("--long-upstream", required=True, help="base URL answering a long SSE")
    args = p.parse_args()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = create_app(args.upstream, args.stream_upstream, args.long_upstream)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
