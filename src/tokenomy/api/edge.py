"""What every /v1 route shares: reading bodies, authenticating, running the pipeline."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web

from tokenomy.aio import shield_inline
from tokenomy.errors import GatewayError, InvalidRequest, PayloadTooLarge, Unauthorized
from tokenomy.gateway.call import Call
from tokenomy.gateway.pipeline import MAX_WAIT
from tokenomy.gateway.relay import StreamRelay
from tokenomy.routing.router import DEADLINE
from tokenomy.services import Services
from tokenomy.store.keys import ApiKey
from tokenomy.tracing import SPAN

log = logging.getLogger(__name__)

SERVICES: web.AppKey[Services] = web.AppKey("services", Services)

#: Status recorded for a request whose client went away (nginx's convention).
CLIENT_CLOSED = 499


class EventStream(web.StreamResponse):
    """An SSE response whose headers leave with its first events, not in a write of their
    own: the upstream has answered by the time it starts, and a stream that arrives whole
    goes out as one write (headers, events and the end of the body)."""

    # aiohttp's own switch (web.Response turns it off the same way).
    _send_headers_immediately = False

    def __init__(self, *, headers: dict[str, str]) -> None:
        super().__init__(headers=headers)
        self.ended = False


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or request.headers.get("api-key")


def authenticate(request: web.Request, svc: Services) -> ApiKey:
    secret = presented_key(request)
    if not secret:
        raise Unauthorized(
            "You didn't provide an API key. Provide it as 'Authorization: Bearer <key>' "
            "(or 'x-api-key: <key>')."
        )
    key = svc.key_cache.lookup(secret)
    if key is None:
        raise Unauthorized("Incorrect API key provided, or the key was revoked.")
    return key


async def read_json(request: web.Request, svc: Services) -> dict[str, Any]:
    limit = svc.config.server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"The request body is larger than the limit of {limit} bytes."
        ) from None
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"The request body is not valid JSON: {e}.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _seconds(text: str, header: str, most: float = 3600) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= most:
        raise InvalidRequest(f"{header} must be a number of seconds from 0 to {most:g}.")
    return value


async def serve_call(request: web.Request, svc: Services, call: Call) -> web.StreamResponse:
    """Run a call through the pipeline and answer the client; records it exactly once."""
    pipeline = svc.pipeline
    relay = None
    try:
        wait = request.headers.get("X-Tokenomy-Max-Wait")
        if wait is not None:
            call.extras[MAX_WAIT] = _seconds(wait, "X-Tokenomy-Max-Wait")
        deadline = request.headers.get("X-Tokenomy-Deadline")
        if deadline is not None:
            call.extras[DEADLINE] = _seconds(deadline, "X-Tokenomy-Deadline", 86_400)
        if pipeline.tracer is not None:
            call.extras[SPAN] = pipeline.tracer.start_span(
                "tokenomy.request",
                attributes={
                    "tokenomy.request_id": call.request_id,
                    "tokenomy.endpoint": call.endpoint,
                    "gen_ai.request.model": call.model,
                    "tokenomy.key_id": call.key.id,
                    "tokenomy.stream": call.stream,
                },
            )
        pipeline.route(call)
        outcome = await pipeline.open(call)
        if outcome.relay is None:
            return web.Response(
                body=outcome.body, headers=outcome.headers, content_type="application/json"
            )
        relay = outcome.relay
        resp = EventStream(
            headers={
                **outcome.headers,
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
            }
        )
        await resp.prepare(request)
        chunks = relay.chunks()
        try:
            async for chunk in chunks:
                if resp.ended:
                    continue  # past the end the client was given: drain, keep the connection
                if relay.completed:
                    if not call.finished:
                        # The client must not see the end of a stream that is not recorded:
                        # settle and record (and in synchronous mode commit) first.
                        await _finish(svc, call, relay)
                    # The last events and the end of the body leave in one write.
                    await resp.write_eof(chunk)
                    resp.ended = True
                else:
                    await resp.write(chunk)
            await resp.write_eof()
        except ConnectionResetError:
            # Gone before the end: cancelled, unless everything was already sent.
            if not relay.completed:
                call.status, call.http_status = "cancelled", CLIENT_CLOSED
        finally:
            await chunks.aclose()
        return resp
    except GatewayError as e:
        pipeline.fail(call, e)
        raise
    except asyncio.CancelledError:
        call.status, call.http_status = "cancelled", CLIENT_CLOSED
        raise
    except Exception:
        call.status, call.http_status, call.error_code = "error", 500, "internal_error"
        raise
    finally:
        if relay is not None:
            # A stream whose response never started (the client went away first) would
            # otherwise keep its upstream connection reading into memory.
            relay.upstream.release()
        await _finish(svc, call, relay)


async def _finish(svc: Services, call: Call, relay: StreamRelay | None) -> None:
    """Settle and record the call once; in synchronous mode, commit before returning."""
    if call.finished:
        return
    # Shielded: a client that goes away must not stop its call being settled. Inline:
    # settling in process memory never waits, and a task per request cost more than it.
    await shield_inline(svc.pipeline.finish(call, relay))
    if svc.usage_writer.synchronous:
        await asyncio.shield(svc.usage_writer.flush())
